"""The platform's route table as the hardening tests see it: every operation of every service.

Operations come from each service's live OpenAPI document; whether a request goes
through the gateway comes from the gateway's own route table (`services.gateway.routes`),
so a route added to either is picked up by every test generated from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from services.gateway.routes import match
from services.runtime.settings import SERVICES
from tests.support.platform import RunningPlatform

METHODS = ("get", "put", "post", "patch", "delete")


@dataclass(frozen=True)
class Operation:
    """One documented operation of one service."""

    service: str
    method: str
    path: str
    path_params: tuple[str, ...]
    query_params: tuple[str, ...]
    body_fields: tuple[str, ...]
    lists_items: bool

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def proxied(self) -> bool:
        """Whether partners and ops reach it through the gateway at this very path."""
        return proxied(self.service, self.method, self.path)


def proxied(service: str, method: str, path: str) -> bool:
    """True when the gateway serves `method path` of `service` at the same path (itself or by proxy)."""
    route = match(method.upper(), path)
    if service == "gateway":
        return route is None
    return route is not None and route.upstream == service and route.path is None


def base_url(platform: RunningPlatform, service: str, method: str, path: str) -> str:
    """The gateway where it serves the route (the real path), else the service itself."""
    return platform.gateway if proxied(service, method, path) else platform.url(service)


async def openapi_documents(platform: RunningPlatform) -> dict[str, dict[str, Any]]:
    """Each service's OpenAPI document, read from the running service."""
    docs: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(timeout=10.0) as http:
        for service in SERVICES:
            response = await http.get(platform.url(service) + "/openapi.json")
            response.raise_for_status()
            docs[service] = response.json()
    return docs


def operations(docs: dict[str, dict[str, Any]]) -> list[Operation]:
    """Every operation of every document."""
    found: list[Operation] = []
    for service, doc in docs.items():
        for path, item in doc.get("paths", {}).items():
            for method, op in item.items():
                if method not in METHODS:
                    continue
                params = op.get("parameters", [])
                found.append(
                    Operation(
                        service=service,
                        method=method.upper(),
                        path=path,
                        path_params=tuple(p["name"] for p in params if p.get("in") == "path"),
                        query_params=tuple(p["name"] for p in params if p.get("in") == "query"),
                        body_fields=_body_fields(doc, op),
                        lists_items=_lists_items(doc, op),
                    )
                )
    return found


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            resolved = _resolve(doc, option)
            if resolved.get("properties"):
                return resolved
    return schema


def _body_fields(doc: dict[str, Any], op: dict[str, Any]) -> tuple[str, ...]:
    content = op.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    if schema is None:
        return ()
    return tuple(_resolve(doc, schema).get("properties", {}))


def _lists_items(doc: dict[str, Any], op: dict[str, Any]) -> bool:
    ok = op.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {})
    schema = ok.get("schema")
    return schema is not None and "items" in _resolve(doc, schema).get("properties", {})
