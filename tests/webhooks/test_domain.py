"""Tier 1: webhook rules without I/O (filters, URLs, the retry schedule, outcomes, secrets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from services.lifecycle.webhooks.domain import (
    DISABLE_AFTER,
    MAX_RETRY_AFTER,
    RETRY_SCHEDULE,
    AttemptResult,
    InvalidEndpoint,
    after_attempt,
    matches,
    normalise_event_types,
    parse_destination,
    parse_retry_after,
    retry_delay,
)
from services.lifecycle.webhooks.secrets import SecretBox, Signer, generate_secret

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def failed(code: int | None = 500, retry_after: float | None = None) -> AttemptResult:
    return AttemptResult(status_code=code, duration_ms=3.0, error="boom", retry_after=retry_after)


# --- filters ------------------------------------------------------------------------------


def test_filters_match_exact_names_prefixes_and_star() -> None:
    assert matches(["integration.*"], "integration.went_live")
    assert not matches(["integration.*"], "alliance.started")
    assert matches(["sla.breached"], "sla.breached")
    assert not matches(["sla.breached"], "sla.restored")
    assert matches(["*"], "partner.activated")


@pytest.mark.parametrize("event_type", ["webhook.message_delivered", "gateway.traffic_window_closed", "client.created"])
def test_non_domain_events_never_match_even_a_star(event_type: str) -> None:
    assert not matches(["*"], event_type)


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        ([], "at least one"),
        (["nope.happened"], "not an event type"),
        (["webhook.message_failed"], "not delivered as a webhook"),
        (["client.*"], "matches no deliverable"),
        (["gateway.*"], "matches no deliverable"),
        (["webhook.*"], "matches no deliverable"),
        (["*"] * 51, "at most"),
    ],
    ids=["empty", "unknown-type", "webhook-type", "client-prefix", "gateway-prefix", "webhook-prefix", "too-many"],
)
def test_bad_filters_are_refused(patterns: list[str], message: str) -> None:
    with pytest.raises(InvalidEndpoint, match=message):
        normalise_event_types(patterns)


def test_filters_are_deduplicated_in_order() -> None:
    assert normalise_event_types(["sla.*", "partner.activated", "sla.*"]) == ["sla.*", "partner.activated"]


# --- URLs ---------------------------------------------------------------------------------


def test_destination_keeps_host_port_and_target() -> None:
    dest = parse_destination("https://Hooks.Example.com:8443/in?x=1")
    assert (dest.scheme, dest.host, dest.port, dest.target) == ("https", "hooks.example.com", 8443, "/in?x=1")
    assert dest.host_header == "hooks.example.com:8443"
    assert parse_destination("http://[::1]/").host_header == "[::1]"
    assert parse_destination("https://a.example").target == "/"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "example.com/hooks",
        "https://user:pw@example.com/",
        "https://example.com/#frag",
        "https://exa mple.com/",
        "https://example.com:99999/",
        "https://",
        "https://example.com/" + "a" * 2100,
    ],
    ids=["ftp", "no-scheme", "credentials", "fragment", "space", "bad-port", "no-host", "too-long"],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidEndpoint):
        parse_destination(url)


# --- schedule -------------------------------------------------------------------------------


def test_schedule_is_the_standard_one() -> None:
    assert RETRY_SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


@pytest.mark.parametrize("attempts_made", range(1, len(RETRY_SCHEDULE)))
def test_delay_is_within_twenty_percent(attempts_made: int) -> None:
    base = RETRY_SCHEDULE[attempts_made]
    low = retry_delay(attempts_made, rand=0.0)
    high = retry_delay(attempts_made, rand=0.999999)
    assert low == pytest.approx(base * 0.8)
    assert high == pytest.approx(base * 1.2, rel=1e-5)


def test_no_attempt_after_the_eighth() -> None:
    assert retry_delay(len(RETRY_SCHEDULE), rand=0.5) is None


def test_retry_after_postpones_but_never_hastens_and_is_clamped() -> None:
    assert retry_delay(1, rand=0.5, retry_after=120) == 120
    assert retry_delay(2, rand=0.5, retry_after=1) == pytest.approx(300)
    assert retry_delay(1, rand=0.5, retry_after=10 * 86400) == MAX_RETRY_AFTER


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("30", NOW) == 30
    assert parse_retry_after("Sun, 01 Mar 2026 12:01:00 GMT", NOW) == 60
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


# --- outcomes -------------------------------------------------------------------------------


def test_2xx_delivers_and_clears_the_failure_record() -> None:
    done = after_attempt(
        attempts_made=3, result=AttemptResult(200, 1.0), now=NOW, failing_since=NOW - timedelta(hours=1), rand=0.5
    )
    assert (done.status, done.next_attempt_at, done.failing_since) == ("delivered", None, None)


@pytest.mark.parametrize("code", [301, 302, 307, 400, 500, 503, None], ids=str)
def test_anything_but_2xx_is_retried(code: int | None) -> None:
    next_state = after_attempt(attempts_made=1, result=failed(code), now=NOW, failing_since=None, rand=0.5)
    assert next_state.status == "pending"
    assert next_state.next_attempt_at == NOW + timedelta(seconds=5)
    assert next_state.failing_since == NOW


def test_the_eighth_failure_is_final() -> None:
    final = after_attempt(attempts_made=8, result=failed(), now=NOW, failing_since=NOW, rand=0.5)
    assert (final.status, final.next_attempt_at) == ("failed", None)


def test_410_fails_the_message_and_disables_the_endpoint() -> None:
    gone = after_attempt(attempts_made=1, result=failed(410), now=NOW, failing_since=None, rand=0.5)
    assert gone.status == "failed"
    assert gone.disable_reason is not None and "410" in gone.disable_reason


def test_five_days_of_failures_disable_the_endpoint() -> None:
    almost = after_attempt(
        attempts_made=2, result=failed(), now=NOW, failing_since=NOW - DISABLE_AFTER + timedelta(seconds=1), rand=0.5
    )
    assert almost.disable_reason is None
    over = after_attempt(attempts_made=2, result=failed(), now=NOW, failing_since=NOW - DISABLE_AFTER, rand=0.5)
    assert over.disable_reason is not None and "5 days" in over.disable_reason


# --- secrets --------------------------------------------------------------------------------


def test_secrets_have_the_whsec_format_and_sign_verifiably() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 44
    assert secret != generate_secret()
    timestamp = int(datetime.now(UTC).timestamp())
    body = '{"type":"partner.activated"}'
    signature = Signer([secret]).signature(msg_id="abc", timestamp=timestamp, body=body)
    headers = {"webhook-id": "abc", "webhook-timestamp": str(timestamp), "webhook-signature": signature}
    assert Webhook(secret).verify(body, headers) == {"type": "partner.activated"}


def test_two_secrets_give_two_signatures_each_verifiable_alone() -> None:
    old, new = generate_secret(), generate_secret()
    timestamp = int(datetime.now(UTC).timestamp())
    signature = Signer([new, old]).signature(msg_id="m", timestamp=timestamp, body="{}")
    assert len(signature.split(" ")) == 2
    headers = {"webhook-id": "m", "webhook-timestamp": str(timestamp), "webhook-signature": signature}
    Webhook(old).verify("{}", headers)
    Webhook(new).verify("{}", headers)


def test_sealed_secrets_round_trip_and_are_not_stored_in_clear() -> None:
    secret = generate_secret()
    box = SecretBox("pepper-for-tests")
    sealed = box.seal(secret)
    assert secret not in sealed and sealed.startswith("v1:")
    assert box.open(sealed) == secret
    assert SecretBox(None).open(SecretBox(None).seal(secret)) == secret
    with pytest.raises(ValueError, match="PEPPER"):
        SecretBox(None).open(sealed)
