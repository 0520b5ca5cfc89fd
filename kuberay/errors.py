"""The client's one exception tree.

Every error names the object it is about (``RayCluster gpu-telemetry-system/gpu-telemetry``) and,
when the API server answered, its HTTP status and message. All of them survive ``pickle``: only the
message travels in ``args``; the other fields are keyword arguments with defaults, restored from
``__dict__``.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "Forbidden",
    "Invalid",
    "KubeRayError",
    "NotFound",
    "RenderError",
    "ServerError",
    "Timeout",
]


class KubeRayError(Exception):
    """Root of every error raised by :mod:`kuberay`."""

    def __init__(
        self,
        message: str,
        *,
        kind: str = "",
        name: str = "",
        namespace: str = "",
        status: int | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.name = name
        self.namespace = namespace
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return self.message


class NotFound(KubeRayError):
    """The object (or its kind: CRDs not installed) does not exist: HTTP 404."""


class Conflict(KubeRayError):
    """The object already exists, or changed under us, or a field has another manager: HTTP 409."""


class Invalid(KubeRayError):
    """The request was refused as invalid (HTTP 400/422), or failed a check before being sent."""


class Forbidden(KubeRayError):
    """Authentication or authorisation failed: HTTP 401/403."""


class ServerError(KubeRayError):
    """The API server failed (HTTP 5xx or an unexpected status) or could not be reached."""


class Timeout(KubeRayError):
    """A wait passed its deadline; the message says what was last observed."""


class RenderError(KubeRayError):
    """``kubectl kustomize`` is missing or failed to render an overlay."""
