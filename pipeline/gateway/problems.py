"""RFC 9457 problem details: one exception handler turns every error into ``application/problem+json``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.errors import DatabaseUnavailable, InvalidParameter, PipelineError, ResourceNotFound, StorageError

__all__ = ["PROBLEM_RESPONSES", "Problem", "install", "responses"]

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


class Problem(JSONResponse):
    """A problem+json response."""

    media_type = MEDIA_TYPE

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
        super().__init__(body, status_code=status)


def _problem_schema(status: int, title: str, example_detail: str, **extra: str) -> dict[str, Any]:
    example = {"type": "about:blank", "title": title, "status": status, "detail": example_detail, **extra}
    return {
        "description": f"{title} (application/problem+json)",
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}, "example": example}},
    }


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _problem_schema(
        400,
        "Bad Request",
        "start_time 2025-07-18T21:00:00+00:00 is after end_time 2025-07-18T20:00:00+00:00",
        param="start_time",
    ),
    401: _problem_schema(401, "Unauthorized", "this path needs a `read` bearer token"),
    403: _problem_schema(403, "Forbidden", "the token does not grant the `metrics` scope"),
    404: _problem_schema(404, "Not Found", "GPU GPU-00000000-0000-0000-0000-000000000000 not found"),
    406: _problem_schema(
        406, "Not Acceptable", "Accept offers none of application/json, text/csv, application/vnd.apache.arrow.stream"
    ),
    422: _problem_schema(
        422, "Unprocessable Content", "start_time: Input should be a valid datetime (got 'yesterday')"
    ),
    503: _problem_schema(503, "Service Unavailable", "database unreachable"),
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of the problems ``codes``."""
    return {c: PROBLEM_RESPONSES[c] for c in codes}


def install(app: FastAPI) -> None:
    """Register the handlers that map exceptions to problems."""

    @app.exception_handler(PipelineError)
    async def pipeline_error(_: Request, exc: PipelineError) -> Problem:
        if isinstance(exc, ResourceNotFound):
            return Problem(404, "Not Found", str(exc))
        if isinstance(exc, InvalidParameter):
            return Problem(400, "Bad Request", str(exc), param=exc.param)
        if isinstance(exc, DatabaseUnavailable):
            return Problem(503, "Service Unavailable", str(exc))
        if isinstance(exc, StorageError):
            log.error("storage error: %s", exc)
            return Problem(503, "Service Unavailable", str(exc))
        log.error("unhandled pipeline error: %s", exc)
        return Problem(500, "Internal Server Error", "the gateway failed to answer this request")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Problem:
        # A bug, not bad input: the client learns nothing of it but that it happened; the log has it all.
        log.error("unhandled error", exc_info=exc)
        return Problem(500, "Internal Server Error", "the gateway failed to answer this request")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> Problem:
        parts = []
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "header", "body")]
            name = ".".join(loc) or "request"
            given = err.get("input")
            shown = f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""
            parts.append(f"{name}: {err.get('msg', 'invalid')}{shown}")
        return Problem(422, "Unprocessable Content", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Problem:
        titles = {404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable", 503: "Service Unavailable"}
        problem = Problem(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail))
        headers = dict(exc.headers or {})
        allow = headers.get("Allow")
        if allow is not None and "GET" in allow and "HEAD" not in allow:
            headers["Allow"] = f"{allow}, HEAD"  # every GET route answers HEAD (pipeline.gateway.http)
        problem.headers.update(headers)
        return problem
