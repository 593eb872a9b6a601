"""httpx clients for service-to-service calls, sharing one TLS context per process.

Every `httpx.AsyncClient` builds its own `ssl.SSLContext` and loads a CA bundle into it:
measured here, 58 ms of CPU per client, against 1.5 ms with a shared context. The
revocation poll (every 2 s in every service), log-API catch-ups and JWKS fetches each
open a short-lived client, so that alone cost an idle service ~3-5 % of a core.

The shared context trusts the system's CA store (where operators install an internal
CA), not certifi's bundle, which httpx would use by default.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's TLS client context: system trust store, hostname checks on."""
    return ssl.create_default_context()


def async_client(**options: Any) -> httpx.AsyncClient:
    """`httpx.AsyncClient(**options)` verifying TLS with the shared context."""
    options.setdefault("verify", tls_context())
    return httpx.AsyncClient(**options)
