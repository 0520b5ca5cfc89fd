"""What every part of the client shares: the transport, the injected clock, and polling under a deadline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kuberay.errors import Invalid
from kuberay.resources import DEFAULT_NAMESPACE, ObjectRef, ray_type
from kuberay.transport import Transport

__all__ = ["Session"]


class Session:
    """A transport plus polling: the base of the cluster-object and job operations."""

    def __init__(
        self,
        transport: Transport,
        *,
        poll_interval_s: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        if poll_interval_s <= 0:
            raise Invalid("poll_interval_s must be positive")
        self._transport = transport
        self._poll = poll_interval_s
        self._clock = clock
        self._sleep = sleep

    def get(self, kind: str, name: str, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
        """The ray.io/v1 object ``kind``/``name`` as the API server holds it."""
        return self._transport.get(ray_type(kind), ObjectRef(kind, name, namespace))

    def _deadline(self, timeout_s: float | None, deadline: float | None = None) -> float:
        """An absolute deadline on this client's clock: ``deadline`` itself, or now + ``timeout_s``."""
        if deadline is not None:
            return deadline
        if timeout_s is None or timeout_s < 0:
            raise Invalid("a wait needs a non-negative timeout_s or a deadline")
        return self._clock() + timeout_s

    def _expired(self, end: float) -> bool:
        return self._clock() >= end

    def _pause(self, end: float) -> None:
        """Sleep one poll interval, never past ``end``."""
        self._sleep(min(self._poll, max(0.0, end - self._clock())))
