"""A small KubeRay client on the ``kubernetes`` package (``ray.io/v1``).

The client takes an injected :class:`kubernetes.client.ApiClient`, so tests point it at a loopback
server and production at a kubeconfig or the in-cluster service account. Every failure is raised
as a :mod:`kuberay.errors` type naming the object; nothing is swallowed.

It is put together from one part per concern: :mod:`kuberay.transport` (the one request path and
its error mapping), :mod:`kuberay.objects` (apply, waits, status, scaling of clusters and
services) and :mod:`kuberay.jobs` (RayJobs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from kubernetes.client import ApiClient

from kuberay.errors import Forbidden, Invalid
from kuberay.jobs import RayJobs
from kuberay.objects import ClusterObjects
from kuberay.resources import DEFAULT_NAMESPACE
from kuberay.transport import APPLY_PATCH, FIELD_MANAGER, JSON_PATCH, Transport, error_from_api

__all__ = [
    "APPLY_PATCH",
    "DEFAULT_NAMESPACE",
    "FIELD_MANAGER",
    "JSON_PATCH",
    "KubeRayClient",
    "error_from_api",
]


class KubeRayClient(ClusterObjects, RayJobs):
    """Apply overlays, scale worker groups, and run RayJobs against one Kubernetes API server."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        field_manager: str = FIELD_MANAGER,
        poll_interval_s: float = 2.0,
        request_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if poll_interval_s <= 0 or request_timeout_s <= 0:
            raise Invalid("poll_interval_s and request_timeout_s must be positive")
        transport = Transport(api_client, field_manager=field_manager, request_timeout_s=request_timeout_s)
        super().__init__(transport, poll_interval_s=poll_interval_s, clock=clock, sleep=sleep)

    @classmethod
    def from_kubeconfig(
        cls, *, context: str | None = None, config_file: str | None = None, **options: Any
    ) -> KubeRayClient:
        """A client for the kubeconfig's (current or named) context."""
        from kubernetes import config

        try:
            api = config.new_client_from_config(config_file=config_file, context=context)  # type: ignore[no-untyped-call]
        except config.ConfigException as exc:
            raise Forbidden(f"cannot load kubeconfig (context {context or 'current'}): {exc}") from exc
        return cls(api, **options)

    @classmethod
    def in_cluster(cls, **options: Any) -> KubeRayClient:
        """A client using the pod's service account (e.g. a CI job running in the cluster)."""
        from kubernetes import client, config

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException as exc:
            raise Forbidden(f"not running in a cluster with a service account: {exc}") from exc
        return cls(ApiClient(configuration), **options)

    def close(self) -> None:
        """Release the connection pool."""
        self._transport.close()

    def __enter__(self) -> KubeRayClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
