"""Tier 2: the SSRF guard on the delivery path (real sockets, a resolver injected for names)."""

from __future__ import annotations

import pytest

from services.lifecycle.webhooks.sender import Sender
from services.lifecycle.webhooks.ssrf import SsrfGuard
from tests.webhooks.conftest import LOOPBACK, HarnessFactory, attempt_event, eventually
from tests.webhooks.receiver import Receiver, status


class Names:
    """A resolver whose answers a test can change (DNS rebinding)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        try:
            return self.answers[host]
        except KeyError:
            raise OSError(f"{host} does not resolve") from None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{port}/x",
        "http://internal.partner.test:{port}/x",
        "http://localhost:{port}/x",
    ],
    ids=["ipv4-loopback", "metadata", "ipv6-loopback", "name-resolving-to-10.x", "localhost"],
)
async def test_the_sender_refuses_without_connecting(url: str, receiver: Receiver) -> None:
    names = Names({"internal.partner.test": ["10.0.0.5"], "localhost": ["127.0.0.1"]})
    sender = Sender(SsrfGuard([], resolve=names), timeout=2.0)
    try:
        result = await sender.send(url.format(port=receiver.port), headers={}, body=b"{}")
    finally:
        await sender.close()
    assert result.status_code is None
    assert result.error is not None and result.error.startswith("refused")
    assert receiver.deliveries == [], "no request reached the (loopback) receiver"


async def test_a_name_is_pinned_to_the_checked_address_with_its_host_header(
    harness_factory: HarnessFactory, receiver: Receiver
) -> None:
    names = Names({"hooks.partner.test": ["127.0.0.1"]})
    harness = await harness_factory(guard=SsrfGuard(LOOPBACK, resolve=names))
    url = f"http://hooks.partner.test:{receiver.port}/pinned"
    endpoint = await harness.create_endpoint("p-1", url)
    receiver.expect("/pinned", [endpoint["secret"]])
    await harness.emit(attempt_event("p-1"))
    [delivery] = await eventually(lambda: receiver.at("/pinned"))
    assert delivery.headers["host"] == f"hooks.partner.test:{receiver.port}"
    assert delivery.verified_with == [0]


async def test_dns_rebinding_after_creation_is_refused_at_delivery(harness_factory: HarnessFactory) -> None:
    names = Names({"rebind.partner.test": ["93.184.216.34"]})
    harness = await harness_factory(allow_nets=[], guard=SsrfGuard([], resolve=names, cache_ttl=0))
    endpoint = await harness.create_endpoint("p-1", "https://rebind.partner.test/hook")
    names.answers["rebind.partner.test"] = ["10.0.0.5"]  # the name now points inside
    await harness.emit(attempt_event("p-1"))
    [message] = await eventually(lambda: _attempted(harness, endpoint["id"]))
    [attempt] = message["attempts"]
    assert attempt["status_code"] is None
    assert "refused" in attempt["error"] and "10.0.0.5" in attempt["error"]


async def test_a_redirect_to_a_private_address_is_not_followed(harness_factory: HarnessFactory, receiver: Receiver) -> None:
    names = Names({"internal.partner.test": ["10.0.0.5"]})
    harness = await harness_factory(guard=SsrfGuard(LOOPBACK, resolve=names))
    endpoint = await harness.create_endpoint("p-1", receiver.url("/bounce"))
    receiver.expect("/bounce", [endpoint["secret"]], status(307, {"Location": "http://10.0.0.5/admin"}))
    await harness.emit(attempt_event("p-1"))
    [message] = await eventually(lambda: _attempted(harness, endpoint["id"]))
    assert message["status"] == "pending"
    assert message["attempts"][0]["status_code"] == 307
    assert message["attempts"][0]["outcome"] == "failed"
    assert len(receiver.at("/bounce")) == 1
    assert names.asked == [], "the redirect target was never even resolved"


async def test_a_name_resolving_to_10x_is_refused_at_creation(harness_factory: HarnessFactory) -> None:
    names = Names({"internal.partner.test": ["10.0.0.5"]})
    harness = await harness_factory(allow_nets=[], guard=SsrfGuard([], resolve=names))
    response = await harness.client.post(
        "/v1/webhooks/endpoints",
        json={"url": "https://internal.partner.test/hook", "event_types": ["*"]},
        headers=harness.partner("p-1"),
    )
    assert response.status_code == 422
    assert "10.0.0.5 is a private address" in response.json()["detail"]


async def _attempted(harness, endpoint_id: str) -> list[dict] | None:  # type: ignore[no-untyped-def]
    items = await harness.messages(endpoint_id)
    return items if items and all(m["attempts"] for m in items) else None
