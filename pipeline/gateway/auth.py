"""API authentication: bearer tokens with two scopes, ``read`` (the API and its docs) and ``metrics``.

Tokens come from ``gateway.api_tokens`` (``PIPELINE_GATEWAY__API_TOKENS``: comma-separated
``<scope>:<token>`` pairs; on Kubernetes from a Secret). ``/health`` and ``/ready`` stay open for
probes; ``/metrics`` needs a ``metrics`` token; every other path a ``read`` token. A token is compared
with every configured token of its scope in constant time (``hmac.compare_digest``). A missing or
unknown token is a 401 with ``WWW-Authenticate: Bearer``; a valid token of the wrong scope a 403;
both are problem+json.

Pages (``pipeline.gateway.pages``) also take the token from a cookie: the token prompt sends it once
in an ``Authorization`` header to ``POST /login``, which stores it in an HttpOnly, SameSite=Strict
cookie (``COOKIE``); the cookie counts on page paths only (``PageAccess.is_page``), never on
``/api/v1`` or ``/metrics``. A page request without a valid token gets the prompt (``PageAccess.prompt``)
instead of a problem, and a cookie that no longer matches a token is cleared.

``gateway.auth: off`` turns authentication off explicitly. On a cluster, a gateway with authentication
on and no tokens refuses to start (``require_tokens``); on a laptop ``local_token`` makes one.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.config import GatewaySettings, Settings
from pipeline.errors import ConfigError

__all__ = [
    "COOKIE",
    "OPEN_PATHS",
    "SCOPES",
    "BearerAuth",
    "LocalToken",
    "PageAccess",
    "cookie_value",
    "local_token",
    "require_tokens",
]

log = logging.getLogger(__name__)

ScopeName = Literal["read", "metrics"]
SCOPES: tuple[ScopeName, ...] = ("read", "metrics")
OPEN_PATHS = frozenset({"/health", "/ready"})
_PROBLEM = b"application/problem+json"
COOKIE = "gpu_telemetry_token"


def enabled(settings: GatewaySettings) -> bool:
    """Whether requests must carry a token: authentication on and tokens configured."""
    return settings.auth == "on" and settings.api_tokens is not None


def require_tokens(settings: Settings, where: str) -> None:
    """Refuse to start a cluster gateway that would serve an open API without saying so (``gateway.auth: off``)."""
    if settings.gateway.auth == "on" and settings.gateway.api_tokens is None:
        raise ConfigError(
            f"the gateway {where} has no API tokens: set PIPELINE_GATEWAY__API_TOKENS (e.g. from a Secret) to "
            "`read:<token>,metrics:<token>`, or turn authentication off explicitly with "
            "PIPELINE_GATEWAY__AUTH=off",
            setting="gateway.api_tokens",
        )


class LocalToken:
    """A token made for a local run, and the settings that accept it."""

    def __init__(self, settings: Settings, token: str) -> None:
        self.settings = settings
        self.token = token

    def hint(self) -> str:
        """How to call the API with the token (for the CLI to print)."""
        g = self.settings.gateway
        return (
            f"api token (this run only): {self.token}\n"
            f'  curl -H "Authorization: Bearer {self.token}" http://{g.host}:{g.port}/api/v1/gpus'
        )


def local_token(settings: Settings) -> LocalToken | None:
    """For ``python -m pipeline run`` on a laptop: a fresh token for both scopes when none is configured.

    None when tokens are configured or authentication is off (nothing to make).
    """
    if settings.gateway.auth != "on" or settings.gateway.api_tokens is not None:
        return None
    token = secrets.token_urlsafe(24)
    gateway = settings.gateway.model_copy(update={"api_tokens": SecretStr(f"read:{token},metrics:{token}")})
    return LocalToken(settings.model_copy(update={"gateway": gateway}), token)


@dataclass(frozen=True, slots=True)
class PageAccess:
    """Where the token cookie counts, and the ASGI app that answers a page request without a valid token.

    ``prompt`` is called with ``scope["state"]["auth"]`` set to ``"missing"`` or ``"invalid"``.
    """

    is_page: Callable[[str], bool]
    prompt: ASGIApp


def cookie_value(token: str) -> str:
    """The cookie's value for ``token`` (base64url: a token may hold characters a cookie cannot)."""
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


class BearerAuth:
    """ASGI middleware: the token a path needs (see the module docstring), or a 401/403 problem."""

    def __init__(self, app: ASGIApp, tokens: dict[str, tuple[bytes, ...]], pages: PageAccess | None = None) -> None:
        self._app = app
        self._tokens = tokens
        self._pages = pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self._app(scope, receive, send)
            return
        needed: ScopeName = "metrics" if scope["path"] == "/metrics" else "read"
        page = self._pages is not None and self._pages.is_page(scope["path"])
        given = _bearer(scope)
        if given is None and page:
            given = _cookie(scope)
        if given is None:
            if page and self._pages is not None:
                await self._prompt(scope, receive, send, "missing")
                return
            await _deny(send, 401, "Unauthorized", f"this path needs a `{needed}` bearer token", "")
            return
        if self._matches(given, needed):
            await self._app(scope, receive, send)
            return
        if page and self._pages is not None:
            await self._prompt(scope, receive, send, "invalid")
            return
        if any(self._matches(given, other) for other in SCOPES if other != needed):
            await _deny(send, 403, "Forbidden", f"the token does not grant the `{needed}` scope", "insufficient_scope")
            return
        await _deny(send, 401, "Unauthorized", "the bearer token is not valid", "invalid_token")

    def _matches(self, given: bytes, scope: ScopeName) -> bool:
        # Compare with every token of the scope: the time taken does not say which (or whether one) matched.
        found = False
        for token in self._tokens.get(scope, ()):
            found |= hmac.compare_digest(given, token)
        return found

    async def _prompt(self, scope: Scope, receive: Receive, send: Send, why: str) -> None:
        assert self._pages is not None
        state = dict(scope.get("state") or {})
        state["auth"] = why
        await self._pages.prompt({**scope, "state": state}, receive, send)


def _cookie(scope: Scope) -> bytes | None:
    """The token in the pages' cookie, or None (absent, or not base64url)."""
    for name, value in scope["headers"]:
        if name != b"cookie":
            continue
        for part in bytes(value).split(b";"):
            key, _, raw = part.strip().partition(b"=")
            if key == COOKIE.encode() and raw:
                try:
                    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
                except (binascii.Error, ValueError):
                    return None
    return None


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            kind, _, token = bytes(value).partition(b" ")
            token = token.strip()
            return token if kind.lower() == b"bearer" and token else None
    return None


async def _deny(send: Send, status: int, title: str, detail: str, error: str) -> None:
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    challenge = b'Bearer realm="gpu-telemetry"' + (f', error="{error}"'.encode() if error else b"")
    headers = [(b"content-type", _PROBLEM), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", challenge))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
