"""One request path to the Kubernetes API server, and the typed errors its refusals become.

Every object, whether core (``/api/v1``), namespaced or cluster-scoped under a group, is addressed
by :meth:`~kuberay.resources.ResourceType.path`, so get, create, patch and delete each build one
path and go through :meth:`Transport.request`. The injected :class:`kubernetes.client.ApiClient`
supplies the host, TLS and bearer token (kubeconfig, service account, or a test's loopback server).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from kuberay.errors import Conflict, Forbidden, Invalid, KubeRayError, NotFound, ServerError
from kuberay.resources import ObjectRef, ResourceType

__all__ = ["APPLY_PATCH", "FIELD_MANAGER", "JSON_PATCH", "Transport", "error_from_api"]

log = logging.getLogger(__name__)

APPLY_PATCH = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"
FIELD_MANAGER = "gpu-telemetry-kuberay"
PROPAGATION_POLICIES = ("Foreground", "Background", "Orphan")


def error_from_api(exc: ApiException, action: str, ref: ObjectRef) -> KubeRayError:
    """The typed error for an API server's refusal of ``action`` on ``ref``."""
    status = int(exc.status or 0)
    detail, reason = _status_details(exc)
    message = f"{action} {ref} failed: HTTP {status}" + (f" {reason}" if reason else "") + f": {detail}"
    cls: type[KubeRayError]
    if status == 404:
        cls = NotFound
    elif status == 409:
        cls = Conflict
    elif status in (400, 422):
        cls = Invalid
    elif status in (401, 403):
        cls = Forbidden
    else:
        cls = ServerError
    return cls(message, kind=ref.kind, name=ref.name, namespace=ref.namespace, status=status, reason=reason)


def _status_details(exc: ApiException) -> tuple[str, str]:
    """The message and reason of the ``Status`` object in an error response, if there is one."""
    body = exc.body if isinstance(exc.body, str) else ""
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("kind") == "Status":
        return str(parsed.get("message") or exc.reason or ""), str(parsed.get("reason") or "")
    return (body.strip()[:300] or str(exc.reason or "no response body")), ""


class Transport:
    """REST verbs on objects of any known kind, raising :mod:`kuberay.errors` types naming the object."""

    def __init__(self, api_client: ApiClient, *, field_manager: str, request_timeout_s: float) -> None:
        self._api = api_client
        self._field_manager = field_manager
        self._timeout = request_timeout_s

    @property
    def field_manager(self) -> str:
        """The server-side apply field manager (and creator) of every write."""
        return self._field_manager

    def close(self) -> None:
        """Release the connection pool."""
        self._api.close()  # type: ignore[no-untyped-call]

    def get(self, rtype: ResourceType, ref: ObjectRef) -> dict[str, Any]:
        """The object as the server holds it; :class:`NotFound` if absent."""
        return self.request("get", ref, "GET", rtype.path(ref.name, ref.namespace))

    def create(self, rtype: ResourceType, ref: ObjectRef, body: Any) -> dict[str, Any]:
        """POST a new object into its collection; :class:`Conflict` if the name is taken."""
        query = [("fieldManager", self._field_manager)]
        path = rtype.path(None, ref.namespace)
        return self.request("create", ref, "POST", path, query=query, body=body, content_type="application/json")

    def patch(
        self,
        rtype: ResourceType,
        ref: ObjectRef,
        body: Any,
        content_type: str,
        action: str,
        *,
        apply: bool = False,
        force: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """PATCH with ``content_type``; ``apply`` adds the field manager (and ``force``) of server-side apply."""
        query: list[tuple[str, str]] = []
        if apply:
            query.append(("fieldManager", self._field_manager))
            if force:
                query.append(("force", "true"))
        if dry_run:
            query.append(("dryRun", "All"))
        path = rtype.path(ref.name, ref.namespace)
        return self.request(action, ref, "PATCH", path, query=query, body=body, content_type=content_type)

    def delete(self, rtype: ResourceType, ref: ObjectRef, propagation: str) -> None:
        """DELETE with a propagation policy (``Foreground`` waits for dependents to go first)."""
        if propagation not in PROPAGATION_POLICIES:
            raise Invalid(
                f"delete {ref}: propagation must be one of {', '.join(PROPAGATION_POLICIES)}, got {propagation!r}",
                kind=ref.kind,
                name=ref.name,
                namespace=ref.namespace,
            )
        path = rtype.path(ref.name, ref.namespace)
        self.request("delete", ref, "DELETE", path, query=[("propagationPolicy", propagation)])

    def request(
        self,
        action: str,
        ref: ObjectRef,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        """The one request path: send, map a refusal or an unreachable server to a typed error, decode."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        log.debug("%s %s%s", method, path, f"?{query}" if query else "")
        try:
            request = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(*request, _request_timeout=self._timeout)
            data = response.read()  # type: ignore[no-untyped-call]
            if not 200 <= response.status <= 299:
                ApiException.from_response(http_resp=response, body=data.decode("utf-8", "replace"), data=None)
        except ApiException as exc:
            raise error_from_api(exc, action, ref) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ServerError(
                f"{action} {ref} failed: API server unreachable: {exc}",
                kind=ref.kind,
                name=ref.name,
                namespace=ref.namespace,
            ) from exc
        return _decode(data if isinstance(data, bytes) else b"", action, ref)


def _decode(data: bytes, action: str, ref: ObjectRef) -> dict[str, Any]:
    if not data:
        return {}
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise ServerError(
            f"{action} {ref}: response is not JSON: {data[:200]!r}",
            kind=ref.kind,
            name=ref.name,
            namespace=ref.namespace,
        ) from exc
    if not isinstance(parsed, dict):
        raise ServerError(
            f"{action} {ref}: response is not an object: {data[:200]!r}",
            kind=ref.kind,
            name=ref.name,
            namespace=ref.namespace,
        )
    return parsed
