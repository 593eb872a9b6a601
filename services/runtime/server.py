"""How `partnerhub serve` runs a service: uvicorn, with the heap settled once the service is up.

CPython's cyclic garbage collector walks every container object of the oldest
generation on each full collection. A started service holds ~165,000 of them that live
as long as the process (FastAPI's routes and models, SQLAlchemy's compiled statements,
pydantic's validators, the OpenTelemetry SDK): under load, each full collection took
~80 ms of the onboarding service's CPU, and the young-generation collections that
run every 700 net allocations another ~0.2 ms per journey. Measured in-process on
onboarding (uvicorn, 400 journeys): 5.1 ms of CPU per journey before, 3.6-3.8 after.

So once startup is over (lifespan done, sockets bound), the service collects what
startup left behind, freezes the survivors into the permanent generation that
collections skip (`gc.freeze()`, made for long-lived servers), and lets the young
generation grow to `GC_GEN0_THRESHOLD` objects before a collection. Most objects are
freed by reference counting long before: in that run, one young collection ran where
455 did. Cycles are still collected, only later; a frozen object that becomes garbage
is freed by reference counting as before, and is leaked only if it is part of a cycle.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import sys

import uvicorn

STARTUP_FAILURE = 3
"""Exit status when the app does not start (uvicorn's own)."""

GC_GEN0_THRESHOLD = 10_000
"""Net container allocations between young-generation collections (CPython's default: 700)."""


def settle_heap() -> None:
    """Collect, freeze the survivors out of future collections, and collect the young less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, older, oldest)


class Server(uvicorn.Server):
    """uvicorn's server, settling the heap once the app has started and the sockets listen."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            settle_heap()


def serve(factory: str, *, host: str, port: int) -> None:
    """Run the app `factory` ("module:function") until a signal stops it, as `uvicorn.run` would."""
    config = uvicorn.Config(
        factory, factory=True, host=host, port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
