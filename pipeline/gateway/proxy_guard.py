"""A read deadline for Serve's HTTP proxy: a request must arrive whole within ``keep_alive_timeout_s``.

Ray Serve 2.60's proxy runs uvicorn's httptools protocol, which times out only idle keep-alive
connections: a client that opens a socket and sends nothing, or half a request line, or headers that
never end, holds the connection (and a file descriptor) for as long as it likes. ``TimedHttpProtocol``
arms a timer when a connection opens and when each request begins, and disarms it once the request
has been read; when it fires, the client gets a 408 and the connection is closed. The bound is the
Serve config's own ``http_options.keep_alive_timeout_s`` (5 s in ``serve_config.yaml``).

Serve calls ``install`` in each proxy process when ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names
it (``PROXY_CALLBACK``): it points uvicorn's ``auto`` protocol at ``TimedHttpProtocol`` before the
proxy builds its server. The Ray pods set that variable (kuberay/); a local ``run`` sets it before it
starts Ray.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn import config as uvicorn_config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["PROXY_CALLBACK", "TimedHttpProtocol", "install"]

log = logging.getLogger(__name__)

PROXY_CALLBACK = "pipeline.gateway.proxy_guard:install"
_SELF = "pipeline.gateway.proxy_guard:TimedHttpProtocol"
_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
_TIMEOUT_END = b"connection: close\r\n\r\n"


class TimedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on reading each request (headers and body)."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.timeout_keep_alive, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle  # the last request whose headers arrived: a 408 must not cut into its response
        if cycle is None or cycle.response_complete or not cycle.response_started:
            detail = f"the request did not arrive within {self.timeout_keep_alive} s".encode()
            self.transport.write(_TIMEOUT % len(detail) + _TIMEOUT_END + detail)
        self.transport.close()


def install() -> list[Any]:
    """Serve's proxy callback: read deadlines on, no extra middleware."""
    uvicorn_config.HTTP_PROTOCOLS["auto"] = _SELF
    log.info("Serve proxy: requests must arrive whole within keep_alive_timeout_s")
    return []
