"""HTTP details the routes need not know: ``HEAD`` answered as ``GET`` without a body, bounded requests.

``HeadAsGet`` runs a ``HEAD`` request as its ``GET`` and sends the headers only; a streamed body
(an export) is stopped after its first chunk instead of being read to the end for nobody.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HeadAsGet"]


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
