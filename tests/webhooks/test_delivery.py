"""Tier 2: deliveries to a real receiver that verifies every request with `standardwebhooks`."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from events.catalog import (
    AllianceStarted,
    PartnerActivated,
    SlaBreached,
    WebhookMessageDelivered,
)
from services.lifecycle.webhooks.domain import DISABLE_AFTER, RESPONSE_READ_CAP, RETRY_SCHEDULE
from services.runtime.clock import SystemClock
from tests.webhooks.conftest import Harness, HarnessFactory, attempt_event, eventually
from tests.webhooks.receiver import Receiver, fail_then_ok, hang, ok, status


async def test_every_delivery_verifies_and_carries_the_event(harness: Harness, receiver: Receiver) -> None:
    endpoint = await harness.create_endpoint("p-1", receiver.url("/in"))
    receiver.expect("/in", [endpoint["secret"]])
    recorded = await harness.emit(PartnerActivated(partner_id="p-1", tier="strategic"))

    [delivery] = await eventually(lambda: receiver.at("/in"))
    assert delivery.verified_with == [0]
    assert delivery.webhook_id == recorded.event_id
    assert delivery.headers["content-type"] == "application/json"
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 5
    payload = delivery.payload
    assert payload["type"] == "partner.activated"
    assert payload["data"] == recorded.data
    assert datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00")) == recorded.occurred_at

    [message] = await eventually(lambda: _delivered(harness, endpoint["id"]))
    assert message["event_id"] == recorded.event_id
    assert message["attempt_count"] == 1
    [attempt] = message["attempts"]
    assert attempt["status_code"] == 204 and attempt["outcome"] == "succeeded" and attempt["duration_ms"] > 0
    [outcome] = await eventually(lambda: harness.stored_events("webhook.message_delivered"))
    assert outcome["message_id"] == message["id"] and outcome["attempts"] == 1
    assert outcome["partner_id"] == "p-1" and outcome["event_type"] == "partner.activated"


async def test_rotation_signs_with_both_secrets_for_24_hours(harness: Harness, receiver: Receiver) -> None:
    endpoint = await harness.create_endpoint("p-1", receiver.url("/rot"))
    old = endpoint["secret"]
    new = (
        await harness.client.post(f"/v1/webhooks/endpoints/{endpoint['id']}/rotate-secret", headers=harness.partner("p-1"))
    ).json()["secret"]
    receiver.expect("/rot", [old, new])

    await harness.emit(attempt_event("p-1", 1))
    [during] = await eventually(lambda: receiver.at("/rot"))
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert during.verified_with == [0, 1], "either secret alone verifies during the overlap"

    await harness.advance(timedelta(hours=24, seconds=1).total_seconds())
    harness.webhooks.workers.endpoint_changed(endpoint["id"])
    await harness.emit(attempt_event("p-1", 2))
    deliveries = await eventually(lambda: receiver.at("/rot")[1:])
    assert deliveries[0].verified_with == [1], "after 24 h only the new secret signs"
    assert len(deliveries[0].headers["webhook-signature"].split(" ")) == 1
    assert not receiver.unverified


async def test_failures_are_retried_on_the_schedule_until_success(harness: Harness, receiver: Receiver) -> None:
    endpoint = await harness.create_endpoint("p-1", receiver.url("/flaky"))
    receiver.expect("/flaky", [endpoint["secret"]], fail_then_ok(2, code=500))
    recorded = await harness.emit(attempt_event("p-1"))

    await eventually(lambda: len(receiver.at("/flaky")) == 1)
    [message] = await eventually(lambda: _with_attempts(harness, endpoint["id"], 1))
    assert message["status"] == "pending"
    due = _ts(message["next_attempt_at"]) - harness.clock.now()
    assert timedelta(seconds=4) <= due <= timedelta(seconds=6), "second attempt 5 s ± 20 % later"

    await harness.advance(3.5)  # not yet due
    await harness.quiet()
    assert len(receiver.at("/flaky")) == 1

    await harness.advance(3.0)  # 6.5 s: the second attempt is due
    await eventually(lambda: len(receiver.at("/flaky")) == 2)
    [message] = await eventually(lambda: _with_attempts(harness, endpoint["id"], 2))
    due = _ts(message["next_attempt_at"]) - harness.clock.now()
    assert timedelta(minutes=4) <= due <= timedelta(minutes=6), "third attempt 5 min ± 20 % later"

    await harness.advance(6 * 60)
    [message] = await eventually(lambda: _delivered(harness, endpoint["id"]))
    deliveries = receiver.at("/flaky")
    assert len(deliveries) == 3
    assert {d.webhook_id for d in deliveries} == {recorded.event_id}, "webhook-id is stable across retries"
    assert all(d.verified_with == [0] for d in deliveries)
    assert [a["status_code"] for a in message["attempts"]] == [500, 500, 200]
    [outcome] = await eventually(lambda: harness.stored_events("webhook.message_delivered"))
    assert outcome["attempts"] == 3
    assert outcome["latency_ms"] >= (6.5 + 6 * 60) * 1000, "latency runs from the first attempt"


async def test_retry_after_is_honoured(harness: Harness, receiver: Receiver) -> None:
    endpoint = await harness.create_endpoint("p-1", receiver.url("/busy"))
    receiver.expect("/busy", [endpoint["secret"]], fail_then_ok(1, code=503, headers={"Retry-After": "120"}))
    await harness.emit(attempt_event("p-1"))
    [message] = await eventually(lambda: _with_attempts(harness, endpoint["id"], 1))
    assert _ts(message["next_attempt_at"]) - harness.clock.now() == timedelta(seconds=120)

    await harness.advance(60)  # the schedule alone would have retried by now
    await harness.quiet()
    assert len(receiver.at("/busy")) == 1
    await harness.advance(61)
    await eventually(lambda: _delivered(harness, endpoint["id"]))
    assert len(receiver.at("/busy")) == 2


async def test_410_disables_the_endpoint(harness: Harness, receiver: Receiver) -> None:
    endpoint = await harness.create_endpoint("p-1", receiver.url("/gone"))
    receiver.expect("/gone", [endpoint["secret"]], status(410))
    await harness.emit(attempt_event("p-1", 1))

    shown = await eventually(lambda: _endpoint_if(harness, endpoint["id"], disabled=True))
    assert "410" in shown["disabled_reason"]
    types = [e["type"] for e in await eventually(lambda: harness.stored_events())]
    assert types == ["webhook.message_failed", "webhook.endpoint_disabled"]
    [message] = await harness.messages(endpoint["id"])
    assert message["status"] == "failed"

    await harness.emit(attempt_event("p-1", 2))
    assert len(await harness.messages(endpoint["id"])) == 1, "a disabled endpoint gets no new messages"
    await harness.advance(3600)
    await harness.quiet()
    assert len(receiver.at("/gone")) == 1


async def test_redirects_are_failures_and_not_followed(harness: Harness, receiver: Receiver) -> None:
    endpoint = await harness.create_endpoint("p-1", receiver.url("/moved"))
    receiver.expect("/moved", [endpoint["secret"]], status(302, {"Location": receiver.url("/target")}))
    receiver.expect("/target", [endpoint["secret"]])
    await harness.emit(attempt_event("p-1"))
    [message] = await eventually(lambda: _with_attempts(harness, endpoint["id"], 1))
    assert message["status"] == "pending"
    assert message["attempts"][0]["status_code"] == 302
    assert message["attempts"][0]["outcome"] == "failed"
    await harness.quiet()
    assert receiver.at("/target") == []


async def test_a_message_fails_finally_after_eight_attempts(harness: Harness, receiver: Receiver) -> None:
    endpoint = await harness.create_endpoint("p-1", receiver.url("/down"))
    receiver.expect("/down", [endpoint["secret"]], status(500))
    await harness.emit(attempt_event("p-1"))
    for n in range(1, len(RETRY_SCHEDULE)):
        await eventually(lambda n=n: len(receiver.at("/down")) == n)  # type: ignore[misc]
        await eventually(lambda n=n: _with_attempts(harness, endpoint["id"], n))  # type: ignore[misc]
        await harness.advance(RETRY_SCHEDULE[n] * 1.25)
    [message] = await eventually(lambda: _with_status(harness, endpoint["id"], "failed"))
    assert message["attempt_count"] == len(RETRY_SCHEDULE) == len(receiver.at("/down"))
    [failed] = await harness.stored_events("webhook.message_failed")
    assert failed["attempts"] == 8 and failed["last_error"] == "HTTP 500"


async def test_an_endpoint_failing_for_five_days_is_disabled(harness: Harness, receiver: Receiver) -> None:
    endpoint = await harness.create_endpoint("p-1", receiver.url("/dead"))
    receiver.expect("/dead", [endpoint["secret"]], status(503))
    await harness.emit(attempt_event("p-1", 0))
    await eventually(lambda: _endpoint_if(harness, endpoint["id"], failing=True))
    # New events keep arriving and failing for five days.
    for day in range(1, 6):
        await harness.advance(DISABLE_AFTER.total_seconds() / 5)
        await harness.emit(attempt_event("p-1", day))
        await eventually(lambda day=day: len(receiver.at("/dead")) >= day + 1)  # type: ignore[misc]
    shown = await eventually(lambda: _endpoint_if(harness, endpoint["id"], disabled=True))
    assert "5 days" in shown["disabled_reason"]
    assert "webhook.endpoint_disabled" in [e["type"] for e in await harness.stored_events()]


async def test_a_success_resets_the_failure_clock(harness: Harness, receiver: Receiver) -> None:
    endpoint = await harness.create_endpoint("p-1", receiver.url("/bumpy"))
    receiver.expect("/bumpy", [endpoint["secret"]], fail_then_ok(1))
    await harness.emit(attempt_event("p-1"))
    await eventually(lambda: _endpoint_if(harness, endpoint["id"], failing=True))
    await harness.advance(10)
    await eventually(lambda: _delivered(harness, endpoint["id"]))
    shown = (await harness.client.get(f"/v1/webhooks/endpoints/{endpoint['id']}", headers=harness.ops)).json()
    assert shown["failing_since"] is None


async def test_response_bodies_are_read_only_up_to_64_kib(harness: Harness, receiver: Receiver) -> None:
    endpoint = await harness.create_endpoint("p-1", receiver.url("/chatty"))
    receiver.expect("/chatty", [endpoint["secret"]], status(200, body=b"x" * (RESPONSE_READ_CAP * 16)))
    await harness.emit(attempt_event("p-1"))
    [message] = await eventually(lambda: _delivered(harness, endpoint["id"]))
    excerpt = message["attempts"][0]["response_excerpt"]
    assert 0 < len(excerpt) <= 1024


async def test_an_attempt_has_an_overall_deadline(harness_factory: HarnessFactory, receiver: Receiver) -> None:
    harness = await harness_factory(attempt_timeout=0.5)
    endpoint = await harness.create_endpoint("p-1", receiver.url("/slow"))
    receiver.expect("/slow", [endpoint["secret"]], hang)
    started = time.monotonic()
    await harness.emit(attempt_event("p-1"))
    [message] = await eventually(lambda: _with_attempts(harness, endpoint["id"], 1))
    assert time.monotonic() - started < 3
    assert "0.5 s" in message["attempts"][0]["error"]


async def test_a_hanging_endpoint_does_not_delay_a_healthy_one(
    harness_factory: HarnessFactory, receiver: Receiver
) -> None:
    # Wall clock, and attempts that would only give up after 30 s: every healthy delivery
    # must arrive while the stuck endpoint's attempts are all still hanging.
    harness = await harness_factory(clock=SystemClock(), attempt_timeout=30.0)
    stuck = await harness.create_endpoint("p-1", receiver.url("/stuck"))
    healthy = await harness.create_endpoint("p-2", receiver.url("/healthy"))
    receiver.expect("/stuck", [stuck["secret"]], hang)
    receiver.expect("/healthy", [healthy["secret"]], ok)

    for n in range(20):
        await harness.emit(attempt_event("p-1", n))
    per_endpoint = harness.webhooks.workers.per_endpoint
    await eventually(lambda: len(receiver.at("/stuck")) == per_endpoint)
    sent: dict[str, float] = {}
    for n in range(50):
        recorded = await harness.emit(attempt_event("p-2", n))
        sent[recorded.event_id] = time.monotonic()
    await eventually(lambda: len(receiver.at("/healthy")) == 50, timeout=15)

    latencies = sorted((d.received_at - sent[d.webhook_id]) * 1000 for d in receiver.at("/healthy"))
    print(f"healthy endpoint beside a hanging one: p50 {latencies[25]:.1f} ms, max {latencies[-1]:.1f} ms")
    assert all(d.verified_with == [0] for d in receiver.at("/healthy"))
    # Nothing of the stuck endpoint has finished: the healthy one never waited for it.
    [stuck_messages] = [await harness.messages(stuck["id"])]
    assert all(m["attempt_count"] == 0 for m in stuck_messages)
    assert len(receiver.at("/stuck")) == per_endpoint, "the stuck endpoint holds only its own slots"
    shown = (await harness.client.get(f"/v1/webhooks/endpoints/{stuck['id']}", headers=harness.ops)).json()
    assert shown["pending_messages"] == 20, "queue depth of the stuck endpoint"


async def test_resend_sends_the_same_webhook_again(harness: Harness, receiver: Receiver) -> None:
    endpoint = await harness.create_endpoint("p-1", receiver.url("/again"))
    receiver.expect("/again", [endpoint["secret"]])
    recorded = await harness.emit(attempt_event("p-1"))
    [message] = await eventually(lambda: _delivered(harness, endpoint["id"]))

    resent = await harness.client.post(f"/v1/webhooks/messages/{message['id']}/resend", headers=harness.partner("p-1"))
    assert resent.status_code == 202, resent.text
    assert resent.json()["status"] == "pending"
    await eventually(lambda: len(receiver.at("/again")) == 2)
    assert {d.webhook_id for d in receiver.at("/again")} == {recorded.event_id}
    [message] = await eventually(lambda: _with_attempts(harness, endpoint["id"], 1, status="delivered", total=2))
    assert [a["trigger"] for a in message["attempts"]] == ["event", "resend"]
    other = await harness.client.post(f"/v1/webhooks/messages/{message['id']}/resend", headers=harness.partner("p-2"))
    assert other.status_code == 404


async def test_recover_resends_failed_messages_since_a_time(harness: Harness, receiver: Receiver) -> None:
    endpoint = await harness.create_endpoint("p-1", receiver.url("/recover"))
    receiver.expect("/recover", [endpoint["secret"]], status(500))
    for n in range(3):
        await harness.emit(attempt_event("p-1", n))
    for n in range(1, len(RETRY_SCHEDULE)):
        await eventually(lambda n=n: len(receiver.at("/recover")) == 3 * n)  # type: ignore[misc]
        await eventually(lambda n=n: _all_attempted(harness, endpoint["id"], n))  # type: ignore[misc]
        await harness.advance(RETRY_SCHEDULE[n] * 1.25)
    await eventually(lambda: _count_status(harness, endpoint["id"], "failed", 3))

    receiver.expect("/recover", [endpoint["secret"]], ok)
    since = (harness.clock.now() - timedelta(days=30)).isoformat()
    answer = await harness.client.post(
        f"/v1/webhooks/endpoints/{endpoint['id']}/recover", json={"since": since}, headers=harness.partner("p-1")
    )
    assert answer.status_code == 202 and answer.json()["recovered"] == 3
    await eventually(lambda: _count_status(harness, endpoint["id"], "delivered", 3))
    delivered = receiver.at("/recover")[-3:]
    assert all(d.verified_with == [0] for d in delivered)


async def test_resend_and_recover_refuse_a_disabled_endpoint(harness: Harness, receiver: Receiver) -> None:
    endpoint = await harness.create_endpoint("p-1", receiver.url("/off"))
    receiver.expect("/off", [endpoint["secret"]])
    await harness.emit(attempt_event("p-1"))
    [message] = await eventually(lambda: _delivered(harness, endpoint["id"]))
    url = f"/v1/webhooks/endpoints/{endpoint['id']}"
    await harness.client.patch(url, json={"disabled": True}, headers=harness.partner("p-1"))
    conflict = await harness.client.post(f"/v1/webhooks/messages/{message['id']}/resend", headers=harness.partner("p-1"))
    assert conflict.status_code == 409 and "disabled" in conflict.json()["detail"]


async def test_partners_only_receive_their_own_events(harness: Harness, receiver: Receiver) -> None:
    a = await harness.create_endpoint("p-a", receiver.url("/a"))
    b = await harness.create_endpoint("p-b", receiver.url("/b"))
    receiver.expect("/a", [a["secret"]])
    receiver.expect("/b", [b["secret"]])
    for n in range(5):
        await harness.emit(attempt_event("p-a", n))
        await harness.emit(attempt_event("p-b", n))
        await harness.emit(attempt_event("p-c", n))
    await eventually(lambda: len(receiver.at("/a")) == 5 and len(receiver.at("/b")) == 5)
    assert {d.payload["data"]["partner_id"] for d in receiver.at("/a")} == {"p-a"}
    assert {d.payload["data"]["partner_id"] for d in receiver.at("/b")} == {"p-b"}
    assert all(d.verified_with == [0] for d in receiver.deliveries)
    messages_a = await harness.messages(a["id"], headers=harness.partner("p-a"))
    assert len(messages_a) == 5
    assert (await harness.client.get(f"/v1/webhooks/endpoints/{a['id']}/messages", headers=harness.partner("p-b"))).status_code == 404


async def test_event_type_filters_select_what_is_sent(harness: Harness, receiver: Receiver) -> None:
    integrations = await harness.create_endpoint("p-1", receiver.url("/int"), ["integration.*"])
    breaches = await harness.create_endpoint("p-1", receiver.url("/sla"), ["sla.breached", "alliance.started"])
    receiver.expect("/int", [integrations["secret"]])
    receiver.expect("/sla", [breaches["secret"]])
    await harness.emit(attempt_event("p-1"))
    await harness.emit(SlaBreached(partner_id="p-1", integration_id="i", uptime_pct=90.0, target_pct=99.9))
    await harness.emit(AllianceStarted(partner_id="p-1"))
    await harness.emit(PartnerActivated(partner_id="p-1", tier="innovation"))
    # Outcome events are never delivered, whatever the filter.
    await harness.emit(
        WebhookMessageDelivered(
            partner_id="p-1", endpoint_id="ep_x", message_id="msg_x", event_type="x", attempts=1, latency_ms=1.0
        )
    )
    await eventually(lambda: len(receiver.at("/int")) == 1 and len(receiver.at("/sla")) == 2)
    assert [d.payload["type"] for d in receiver.at("/int")] == ["integration.attempt_recorded"]
    assert sorted(d.payload["type"] for d in receiver.at("/sla")) == ["alliance.started", "sla.breached"]
    # Messages are stored by the dispatcher itself: nothing else is queued for either endpoint.
    assert len(await harness.messages(integrations["id"])) == 1
    assert len(await harness.messages(breaches["id"])) == 2


async def test_a_redispatched_event_is_stored_once(harness: Harness, receiver: Receiver) -> None:
    endpoint = await harness.create_endpoint("p-1", receiver.url("/once"))
    receiver.expect("/once", [endpoint["secret"]])
    recorded = await harness.emit(attempt_event("p-1"))
    await harness.dispatch(recorded)
    await eventually(lambda: _delivered(harness, endpoint["id"]))
    assert len(await harness.messages(endpoint["id"])) == 1


async def test_queue_depth_is_exposed(harness: Harness, receiver: Receiver) -> None:
    from services.lifecycle.webhooks.metrics import prometheus_lines, queue_depths
    from services.lifecycle.webhooks.repository import pending_depths

    endpoint = await harness.create_endpoint("p-1", receiver.url("/depth"))
    receiver.expect("/depth", [endpoint["secret"]], status(500))
    for n in range(4):
        await harness.emit(attempt_event("p-1", n))
    await eventually(lambda: len(receiver.at("/depth")) == 4)
    assert await pending_depths(harness.runtime.engine) == {endpoint["id"]: 4}
    shown = (await harness.client.get(f"/v1/webhooks/endpoints/{endpoint['id']}", headers=harness.ops)).json()
    assert shown["pending_messages"] == 4
    quiet = await harness.create_endpoint("p-2", receiver.url("/quiet"))
    depths = {d.endpoint_id: d.pending for d in await queue_depths(harness.runtime.engine)}
    assert depths == {endpoint["id"]: 4, quiet["id"]: 0}
    text = "\n".join(prometheus_lines(await queue_depths(harness.runtime.engine)))
    assert f'partnerhub_webhook_pending_messages{{endpoint_id="{endpoint["id"]}",partner_id="p-1",disabled="false"}} 4' in text
    served = await harness.client.get("/metrics")
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/plain")
    assert f'partnerhub_webhook_pending_messages{{endpoint_id="{quiet["id"]}",partner_id="p-2",disabled="false"}} 0' in served.text
    ages = {
        line.split("{")[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in served.text.splitlines()
        if line.startswith("partnerhub_webhook_oldest_pending_seconds{")
    }
    assert ages[quiet["id"]] == 0.0 and ages[endpoint["id"]] >= 0.0


# --- helpers ----------------------------------------------------------------------------------


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def _with_status(harness: Harness, endpoint_id: str, status: str) -> list[dict] | None:
    items = await harness.messages(endpoint_id)
    return items if items and all(m["status"] == status for m in items) else None


async def _delivered(harness: Harness, endpoint_id: str) -> list[dict] | None:
    return await _with_status(harness, endpoint_id, "delivered")


async def _with_attempts(
    harness: Harness, endpoint_id: str, n: int, *, status: str | None = None, total: int | None = None
) -> list[dict] | None:
    items = await harness.messages(endpoint_id)
    if not items or any(m["attempt_count"] != n for m in items):
        return None
    if status is not None and any(m["status"] != status for m in items):
        return None
    if total is not None and any(len(m["attempts"]) != total for m in items):
        return None
    return items


async def _all_attempted(harness: Harness, endpoint_id: str, n: int) -> bool:
    return bool(await _with_attempts(harness, endpoint_id, n))


async def _count_status(harness: Harness, endpoint_id: str, status: str, n: int) -> bool:
    return sum(1 for m in await harness.messages(endpoint_id) if m["status"] == status) == n


async def _endpoint_if(harness: Harness, endpoint_id: str, *, disabled: bool = False, failing: bool = False) -> dict | None:
    shown = (await harness.client.get(f"/v1/webhooks/endpoints/{endpoint_id}", headers=harness.ops)).json()
    if disabled and not shown["disabled"]:
        return None
    if failing and shown["failing_since"] is None:
        return None
    return dict(shown)


async def test_a_resend_during_an_attempt_wins_over_its_late_outcome(
    harness_factory: HarnessFactory, receiver: Receiver
) -> None:
    harness = await harness_factory(attempt_timeout=1.0)
    endpoint = await harness.create_endpoint("p-1", receiver.url("/late"))
    receiver.expect("/late", [endpoint["secret"]], lambda n: None if n == 0 else (200, {}, b"ok"))
    await harness.emit(attempt_event("p-1"))
    await eventually(lambda: len(receiver.at("/late")) == 1)  # the first attempt hangs
    [message] = await harness.messages(endpoint["id"])
    resent = await harness.client.post(f"/v1/webhooks/messages/{message['id']}/resend", headers=harness.ops)
    assert resent.status_code == 202

    [message] = await eventually(lambda: _with_attempts(harness, endpoint["id"], 1, status="delivered", total=2))
    assert [(a["trigger"], a["outcome"]) for a in message["attempts"]] == [("event", "failed"), ("resend", "succeeded")]
    types = [e["type"] for e in await harness.stored_events()]
    assert types == ["webhook.message_delivered"], "the late timeout of the first run changed nothing"
