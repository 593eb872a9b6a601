import asyncio, sys, tempfile, time, resource
from pathlib import Path
sys.argv=["x"]
import bench.bench_webhooks as b
from services.lifecycle.webhooks import repository
from services.lifecycle.webhooks.outcomes import Outcome
from services.lifecycle.webhooks.domain import AttemptResult, AfterAttempt
from events.catalog import WebhookMessageDelivered
def cpu():
    u=resource.getrusage(resource.RUSAGE_SELF); return u.ru_utime+u.ru_stime
async def main():
    r = b.ReceiverProcess(); await r.start()
    try:
      with tempfile.TemporaryDirectory() as tmp:
        async with b.lifecycle(Path(tmp)) as (runtime, webhooks):
            paths=[f"/t{i}" for i in range(10)]
            await b.endpoints(webhooks, r, paths)
            await b.queue(runtime, webhooks, [p.strip("/") for p in paths], 150)
            eps = await b._endpoint_rows(runtime)
            now = runtime.clock.now()
            c=cpu(); t=time.perf_counter()
            msgs=[]
            for ep in eps:
                msgs += await repository.due_messages(runtime.engine, ep.id, now=now, limit=150)
            print("claim reads", len(msgs), "cpu ms/msg", (cpu()-c)*1000/len(msgs))
            c=cpu()
            w = webhooks.workers.outcomes
            res = AttemptResult(204, 1.0)
            dec = AfterAttempt("delivered", None, None)
            async def one(m):
                o = Outcome(m, res, dec, now, now, now)
                o.events.append(WebhookMessageDelivered(partner_id=m.partner_id, endpoint_id=m.endpoint_id, message_id=m.id, event_type=m.event_type, attempts=1, latency_ms=1.0))
                await w.record(o)
            for i in range(0, len(msgs), 40):
                await asyncio.gather(*(one(m) for m in msgs[i:i+40]))
            print("outcomes cpu ms/msg", (cpu()-c)*1000/len(msgs), "wall", time.perf_counter()-t)
    finally:
        await r.stop()
b._use_uvloop()
asyncio.run(main())
