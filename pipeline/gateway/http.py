"""HTTP details the routes need not know: ``HEAD`` answered as ``GET`` without a body, bounded requests.

``BoundedRequests`` refuses, before any route runs, a URL longer than ``max_url_bytes`` (414) and any
request body (413: every route is a ``GET``), so a client cannot make a replica read megabytes it will
never use. Slow or half-sent request heads never reach the app: the Serve config's
``request_timeout_s`` and ``keep_alive_timeout_s`` and the ingress in front bound those.

``HeadAsGet`` runs a ``HEAD`` request as its ``GET`` and sends the headers only; a streamed body
(an export) is stopped after its first chunk instead of being read to the end for nobody.

``GzipLarge`` sends a JSON, HTML, CSV or plain-text body of at least ``min_bytes`` gzip-compressed
(level 1) to a client whose ``Accept-Encoding`` takes gzip. Pages are repetitive: 1,000 GPUs' JSON,
671 kB, became 15 kB in 1.4 ms here, and the body then crosses Serve's proxy (HTTP in, a Ray call,
HTTP out) 45 times smaller. Only a body the app sends whole is compressed; a streamed export goes out
as it is, chunk by chunk.
"""

from __future__ import annotations

import json
import zlib

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BoundedRequests", "GzipLarge", "HeadAsGet", "accepts_gzip", "weighted"]

_PROBLEM = "application/problem+json"


class _HeadDone(Exception):
    """Raised into a streaming app once a HEAD response's headers are out."""


class HeadAsGet:
    """ASGI middleware: ``HEAD`` is ``GET`` with the body dropped (headers, Content-Length included, kept)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self._app(scope, receive, send)
            return
        done = False

        async def headers_only(message: Message) -> None:
            nonlocal done
            if message["type"] != "http.response.body":
                await send(message)
                return
            if not done:
                done = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            if message.get("more_body", False):
                raise _HeadDone

        try:
            await self._app({**scope, "method": "GET"}, receive, headers_only)
        except _HeadDone:
            return
        except BaseExceptionGroup as group:  # a streaming response's task group wraps it
            _, rest = group.split(_HeadDone)
            if rest is not None:
                raise rest from None


_COMPRESSIBLE = ("application/json", "application/problem+json", "text/html", "text/plain", "text/csv")


def weighted(item: str) -> tuple[str, float]:
    """One element of an ``Accept``-style list: its value (lower case) and q-value (1 unless given; not a number: 0)."""
    value, *params = (part.strip() for part in item.split(";"))
    q = 1.0
    for param in params:
        key, _, number = param.partition("=")
        if key.strip().lower() == "q":
            try:
                q = float(number.strip())
            except ValueError:
                q = 0.0
    return value.lower(), q


def accepts_gzip(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the ``Accept-Encoding`` headers take gzip (RFC 9110, 12.5.3).

    ``gzip`` (or ``x-gzip``) named with a q-value above 0 takes it, named with q=0 refuses it whatever
    else is listed; not named, ``*`` decides. A q-value that is not a number counts as 0.
    """
    named: float | None = None
    wildcard: float | None = None
    for name, value in headers:
        if name != b"accept-encoding":
            continue
        for item in value.decode("latin-1").split(","):
            coding, q = weighted(item)
            if coding in ("gzip", "x-gzip"):
                named = q if named is None else max(named, q)
            elif coding == "*":
                wildcard = q if wildcard is None else max(wildcard, q)
    chosen = named if named is not None else wildcard
    return chosen is not None and chosen > 0


class GzipLarge:
    """ASGI middleware: a whole JSON/HTML/CSV/text body of ``min_bytes`` or more, gzipped for clients taking it."""

    def __init__(self, app: ASGIApp, min_bytes: int) -> None:
        self._app = app
        self._min = min_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._min <= 0 or not accepts_gzip(scope["headers"]):
            await self._app(scope, receive, send)
            return
        held: Message | None = None

        async def compressing(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                held = message  # sent with the first body message, once it is known whether to compress
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            start, held = held, None
            headers = MutableHeaders(raw=list(start.get("headers", [])))
            body = message.get("body", b"")
            kind = headers.get("content-type", "").partition(";")[0].strip().lower()
            if kind in _COMPRESSIBLE and "content-encoding" not in headers:
                headers.add_vary_header("Accept-Encoding")
                if not message.get("more_body", False) and len(body) >= self._min:
                    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: the gzip container
                    body = packer.compress(body) + packer.flush()
                    headers["content-encoding"] = "gzip"
                    headers["content-length"] = str(len(body))
                    message = {**message, "body": body}
            await send({**start, "headers": headers.raw})
            await send(message)

        await self._app(scope, receive, compressing)


class BoundedRequests:
    """ASGI middleware: 414 for a URL over ``max_url_bytes``, 413 for a request that carries a body."""

    def __init__(self, app: ASGIApp, max_url_bytes: int) -> None:
        self._app = app
        self._max_url = max_url_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        url = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
        if url > self._max_url:
            await _refuse(send, 414, "URI Too Long", f"the URL holds {url} bytes; at most {self._max_url}")
            return
        for name, value in scope["headers"]:
            if (name == b"content-length" and value.strip() not in (b"", b"0")) or name == b"transfer-encoding":
                await _refuse(send, 413, "Content Too Large", "the API takes no request body")
                return
        await self._app(scope, receive, send)


async def _refuse(send: Send, status: int, title: str, detail: str) -> None:
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    headers = [
        (b"content-type", _PROBLEM.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the unread body must not be taken for the next request
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
