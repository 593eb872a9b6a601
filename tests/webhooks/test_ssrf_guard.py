"""Tier 1: the SSRF guard's decisions, with an injected resolver (no real DNS)."""

from __future__ import annotations

import pytest

from services.lifecycle.webhooks.domain import parse_destination
from services.lifecycle.webhooks.ssrf import Refused, SsrfGuard

NAMES = {
    "internal.partner.test": ["10.0.0.5"],
    "localhost": ["127.0.0.1", "::1"],
        "mixed.partner.test": ["198.51.100.7", "192.168.1.9"],
    "hooks.partner.example": ["93.184.216.34"],
}


async def fake_resolve(host: str, port: int) -> list[str]:
    try:
        return NAMES[host]
    except KeyError:
        raise OSError(f"{host} does not resolve") from None


def guard(*allow: str) -> SsrfGuard:
    return SsrfGuard(allow, resolve=fake_resolve)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("https://127.0.0.1/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("https://169.254.10.1/", "link-local"),
        ("http://[::1]/hook", "loopback"),
        ("https://internal.partner.test/hook", "private"),
        ("https://localhost/hook", "loopback"),
        ("https://mixed.partner.test/", "private"),
        ("https://[::ffff:127.0.0.1]/", "loopback"),
        ("https://[64:ff9b::a00:5]/", "private"),
        ("https://0.0.0.0/", "unspecified"),
        ("https://224.0.0.1/", "multicast"),
        ("https://100.64.0.1/", "reserved"),
        ("https://[fd00:ec2::254]/", "cloud metadata"),
        ("https://[fe80::1]/", "link-local"),
    ],
    ids=[
        "ipv4-loopback-http",
        "ipv4-loopback-https",
        "metadata",
        "link-local",
        "ipv6-loopback",
        "name-resolving-to-10.x",
        "localhost",
        "one-private-answer-of-two",
        "ipv4-mapped-ipv6",
        "nat64-embedded-private",
        "unspecified",
        "multicast",
        "shared-address-space",
        "aws-ipv6-metadata",
        "ipv6-link-local",
    ],
)
async def test_non_public_destinations_are_refused(url: str, kind: str) -> None:
    with pytest.raises(Refused, match=kind):
        await guard().check(parse_destination(url))


async def test_public_https_is_accepted_with_the_checked_address() -> None:
    assert await guard().check(parse_destination("https://hooks.partner.example/in")) == ["93.184.216.34"]


async def test_plain_http_to_a_public_address_is_refused() -> None:
    with pytest.raises(Refused, match="https is required"):
        await guard().check(parse_destination("http://hooks.partner.example/in"))


async def test_allow_listed_networks_are_accepted_even_over_http() -> None:
    allowed = guard("127.0.0.0/8", "::1/128", "10.0.0.0/8")
    assert await allowed.check(parse_destination("http://127.0.0.1:9/x")) == ["127.0.0.1"]
    assert await allowed.check(parse_destination("http://[::1]:9/x")) == ["::1"]
    assert await allowed.check(parse_destination("http://internal.partner.test/x")) == ["10.0.0.5"]
    assert await allowed.check(parse_destination("https://localhost/x")) == ["127.0.0.1", "::1"]
    with pytest.raises(Refused, match="cloud metadata"):
        await allowed.check(parse_destination("http://169.254.169.254/"))


async def test_unresolvable_names_raise_oserror() -> None:
    with pytest.raises(OSError):
        await guard().check(parse_destination("https://nowhere.partner.test/"))
