"""API authentication: bearer tokens with two scopes, ``read`` (the API and its docs) and ``metrics``.

Tokens come from ``gateway.api_tokens`` (``PIPELINE_GATEWAY__API_TOKENS``: comma-separated
``<scope>:<token>`` pairs; on Kubernetes from a Secret). ``/health`` and ``/ready`` stay open for
probes; ``/metrics`` needs a ``metrics`` token; every other path a ``read`` token. A token is compared
with every configured token of its scope in constant time (``hmac.compare_digest``). A missing or
unknown token is a 401 with ``WWW-Authenticate: Bearer``; a valid token of the wrong scope a 403;
both are problem+json.

``gateway.auth: off`` turns authentication off explicitly. On a cluster, a gateway with authentication
on and no tokens refuses to start (``require_tokens``); on a laptop ``local_token`` makes one.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from typing import Literal

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline.config import GatewaySettings, Settings
from pipeline.errors import ConfigError

__all__ = ["OPEN_PATHS", "SCOPES", "BearerAuth", "LocalToken", "local_token", "require_tokens"]

log = logging.getLogger(__name__)

ScopeName = Literal["read", "metrics"]
SCOPES: tuple[ScopeName, ...] = ("read", "metrics")
OPEN_PATHS = frozenset({"/health", "/ready"})
_PROBLEM = b"application/problem+json"


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


class BearerAuth:
    """ASGI middleware: the token a path needs (see the module docstring), or a 401/403 problem."""

    def __init__(self, app: ASGIApp, tokens: dict[str, tuple[bytes, ...]]) -> None:
        self._app = app
        self._tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self._app(scope, receive, send)
            return
        needed: ScopeName = "metrics" if scope["path"] == "/metrics" else "read"
        given = _bearer(scope)
        if given is None:
            await _deny(send, 401, "Unauthorized", f"this path needs a `{needed}` bearer token", "")
            return
        if self._matches(given, needed):
            await self._app(scope, receive, send)
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
