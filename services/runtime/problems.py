"""RFC 9457 problem details: the one shape of every error answer."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import compile_path

from events.store import ConcurrencyError, InvalidEvent

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://partnerhub.dev/problems/"
# The RFC 9110 name where Python 3.11's HTTPStatus still has the RFC 7231 phrase.
_PHRASES = {413: "Content Too Large"}
# What FastAPI answers (400) for a body it cannot decode at all: invalid UTF-8, nesting
# deeper than the parser's recursion limit, integers longer than 4300 digits.
_UNPARSEABLE_BODY = "There was an error parsing the body"
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "options", "head", "trace"})

PROBLEM_SCHEMA: dict[str, Any] = {
    "content": {
        PROBLEM_JSON: {
            "schema": {
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "instance": {"type": "string"},
                },
                "required": ["type", "title", "status"],
            }
        }
    }
}


class Problem(Exception):
    """An error answer; raise it anywhere in a request and it becomes problem+json."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or _PHRASES.get(status) or HTTPStatus(status).phrase
        self.type = type or _slug(self.title)
        self.headers = headers or {}
        self.extensions = extensions

    def body(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 document."""
        doc: dict[str, Any] = {
            "type": self.type if self.type.startswith(("http", "about:")) else PROBLEM_BASE + self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        doc.update(self.extensions)
        return doc


def problem_response(problem: Problem, instance: str | None = None) -> Response:
    """The HTTP response of `problem`."""
    return Response(
        orjson.dumps(problem.body(instance)),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


def not_found(what: str, ident: str) -> Problem:
    """The 404 of an unknown (or another partner's) resource."""
    return Problem(404, f"{what} {ident!r} does not exist", title="Not Found", type="not-found")


def _allowed_methods(request: Request) -> str:
    """Every documented method of the requested path (from the OpenAPI document: included
    routers are not flat in `app.routes`)."""
    methods: set[str] = set()
    for template, item in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(request.url.path):
            methods |= {method.upper() for method in item if method in _HTTP_METHODS}
    return ", ".join(sorted(methods))


def _slug(title: str) -> str:
    return title.lower().replace(" ", "-").replace("'", "")


def install_problem_handlers(app: FastAPI) -> None:
    """Turn every error path of `app` into problem+json (never an HTML or bare 500)."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {
                "loc": [str(part) for part in err.get("loc", ())],
                "msg": str(err.get("msg", "")),
                "type": str(err.get("type", "")),
            }
            for err in exc.errors()
        ]
        malformed = any(e["type"] == "json_invalid" for e in errors)
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:10])
        problem = Problem(
            422,
            "the request body is not valid JSON" if malformed else detail,
            title="Malformed JSON" if malformed else "Validation Failed",
            type="malformed-json" if malformed else "validation-failed",
            errors=errors,
        )
        return problem_response(problem, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == _UNPARSEABLE_BODY:
            # Same answer as any other body that is not JSON (tests/hardening/test_limits.py).
            malformed = Problem(422, "the request body is not valid JSON", title="Malformed JSON", type="malformed-json")
            return problem_response(malformed, request.url.path)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route matching the path; RFC 9110 wants them all.
            headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
        problem = Problem(exc.status_code, str(exc.detail), headers=headers)
        return problem_response(problem, request.url.path)

    @app.exception_handler(ConcurrencyError)
    async def _conflict(request: Request, exc: ConcurrencyError) -> Response:
        problem = Problem(
            409,
            f"{exc.stream_id} changed while this request ran; read it again and retry",
            title="Concurrent Modification",
            type="concurrent-modification",
        )
        return problem_response(problem, request.url.path)

    @app.exception_handler(InvalidEvent)
    async def _invalid_event(request: Request, exc: InvalidEvent) -> Response:
        return problem_response(Problem(422, str(exc), title="Invalid Event"), request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        problem = Problem(500, "an unexpected error occurred; it has been logged", title="Internal Server Error")
        return problem_response(problem, request.url.path)
