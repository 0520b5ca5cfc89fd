"""A small KubeRay client on the ``kubernetes`` package (``CustomObjectsApi``, ``ray.io/v1``).

The client takes an injected :class:`kubernetes.client.ApiClient`, so tests point it at a loopback
server and production at a kubeconfig or the in-cluster service account. Every failure is raised
as a :mod:`kuberay.errors` type naming the object; nothing is swallowed.

Contracts worth knowing:

* :meth:`KubeRayClient.apply` is server-side apply (``application/apply-patch+yaml``, one field
  manager, ``force``). A RayCluster keeps the ``replicas`` (and pending ``workersToDelete``) the
  autoscaler chose: the worker-group list is atomic for server-side apply, so applying it without
  them would reset every group to its minimum.
* Scaling changes only ``minReplicas``/``maxReplicas`` by JSON patch, guarded by a ``test`` of the
  group's name at that index; the autoscaler owns ``replicas``. Pods go only through
  ``scaleStrategy.workersToDelete``.
* Waits poll ``status.conditions`` (after the operator has observed the current generation) under
  one overall deadline, and raise :class:`~kuberay.errors.Timeout` with what was last seen.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import urllib3
from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from kuberay.errors import (
    Conflict,
    Forbidden,
    Invalid,
    KubeRayError,
    NotFound,
    ServerError,
    Timeout,
)
from kuberay.resources import ObjectRef, ResourceType, apply_order, ray_type, ref_of, resource_type
from kuberay.status import ClusterStatus, JobStatus, ServiceStatus, conditions_of

__all__ = [
    "APPLY_PATCH",
    "DEFAULT_NAMESPACE",
    "FIELD_MANAGER",
    "JSON_PATCH",
    "KubeRayClient",
    "error_from_api",
]

log = logging.getLogger(__name__)

APPLY_PATCH = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"
DEFAULT_NAMESPACE = "gpu-telemetry-system"
FIELD_MANAGER = "gpu-telemetry-kuberay"

# Conditions that mean "up" for each kind (KubeRay >= 1.2 writes them).
READY_CONDITIONS: dict[str, dict[str, str]] = {
    "RayCluster": {"HeadPodReady": "True", "RayClusterProvisioned": "True"},
    "RayService": {"Ready": "True"},
}
# KubeRay's own limits on names (they become label values and Service names).
MAX_NAME_LENGTH = {"RayCluster": 53, "RayService": 47, "RayJob": 47}
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SERVER_FIELDS = (
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
)


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


class KubeRayClient:
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
        self._api = api_client
        self._custom = CustomObjectsApi(api_client)
        self._field_manager = field_manager
        self._poll = poll_interval_s
        self._request_timeout = request_timeout_s
        self._clock = clock
        self._sleep = sleep

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
        self._api.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> KubeRayClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------------

    def _custom_call(self, action: str, ref: ObjectRef, fn: Callable[..., object], **kwargs: Any) -> dict[str, Any]:
        try:
            response = fn(**kwargs, _preload_content=False, _request_timeout=self._request_timeout)
        except ApiException as exc:
            raise error_from_api(exc, action, ref) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ServerError(
                f"{action} {ref} failed: API server unreachable: {exc}",
                kind=ref.kind,
                name=ref.name,
                namespace=ref.namespace,
            ) from exc
        data = getattr(response, "data", b"")
        return _decode(data if isinstance(data, bytes) else b"", action, ref)

    def _core_call(
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
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            request = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(*request, _request_timeout=self._request_timeout)
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

    def _get(self, rtype: ResourceType, ref: ObjectRef) -> dict[str, Any]:
        if not rtype.group:
            return self._core_call("get", ref, "GET", rtype.path(ref.name, ref.namespace))
        if rtype.namespaced:
            return self._custom_call(
                "get",
                ref,
                self._custom.get_namespaced_custom_object,
                group=rtype.group,
                version=rtype.version,
                namespace=ref.namespace,
                plural=rtype.plural,
                name=ref.name,
            )
        return self._custom_call(
            "get",
            ref,
            self._custom.get_cluster_custom_object,
            group=rtype.group,
            version=rtype.version,
            plural=rtype.plural,
            name=ref.name,
        )

    def _patch(
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
        options: dict[str, Any] = {}
        if apply:
            options["field_manager"] = self._field_manager
            options["force"] = force
        if dry_run:
            options["dry_run"] = "All"
        if not rtype.group:
            query = [("fieldManager", self._field_manager)] if apply else []
            query += [("force", "true")] if apply and force else []
            query += [("dryRun", "All")] if dry_run else []
            return self._core_call(
                action,
                ref,
                "PATCH",
                rtype.path(ref.name, ref.namespace),
                query=query,
                body=body,
                content_type=content_type,
            )
        if rtype.namespaced:
            return self._custom_call(
                action,
                ref,
                self._custom.patch_namespaced_custom_object,
                group=rtype.group,
                version=rtype.version,
                namespace=ref.namespace,
                plural=rtype.plural,
                name=ref.name,
                body=body,
                _content_type=content_type,
                **options,
            )
        return self._custom_call(
            action,
            ref,
            self._custom.patch_cluster_custom_object,
            group=rtype.group,
            version=rtype.version,
            plural=rtype.plural,
            name=ref.name,
            body=body,
            _content_type=content_type,
            **options,
        )

    def _delete(self, rtype: ResourceType, ref: ObjectRef, propagation: str) -> None:
        if not rtype.group:
            self._core_call(
                "delete",
                ref,
                "DELETE",
                rtype.path(ref.name, ref.namespace),
                query=[("propagationPolicy", propagation)],
            )
        elif rtype.namespaced:
            self._custom_call(
                "delete",
                ref,
                self._custom.delete_namespaced_custom_object,
                group=rtype.group,
                version=rtype.version,
                namespace=ref.namespace,
                plural=rtype.plural,
                name=ref.name,
                propagation_policy=propagation,
            )
        else:
            self._custom_call(
                "delete",
                ref,
                self._custom.delete_cluster_custom_object,
                group=rtype.group,
                version=rtype.version,
                plural=rtype.plural,
                name=ref.name,
                propagation_policy=propagation,
            )

    # --- generic objects ---------------------------------------------------------------------

    def get(self, kind: str, name: str, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
        """The ray.io/v1 object ``kind``/``name`` as the API server holds it."""
        return self._get(ray_type(kind), ObjectRef(kind, name, namespace))

    def apply(
        self, objects: Iterable[Mapping[str, Any]], *, dry_run: bool = False, force: bool = True
    ) -> list[dict[str, Any]]:
        """Server-side apply ``objects`` in dependency order; returns what the server stored.

        Every object's kind is checked before the first request, so an unknown kind applies nothing.
        """
        ordered = apply_order([dict(o) for o in objects])
        return [self.apply_object(obj, dry_run=dry_run, force=force) for obj in ordered]

    def apply_object(self, obj: Mapping[str, Any], *, dry_run: bool = False, force: bool = True) -> dict[str, Any]:
        """Server-side apply one manifest (the field manager owns exactly the fields it sets)."""
        rtype = resource_type(str(obj.get("apiVersion")), str(obj.get("kind")))
        ref = ref_of(obj)
        if rtype.namespaced and not ref.namespace:
            raise Invalid(f"{ref} has no metadata.namespace", kind=ref.kind, name=ref.name)
        body = copy.deepcopy(dict(obj))
        if rtype.kind == "RayCluster":
            self._keep_autoscaler_fields(rtype, ref, body)
        log.info("applying %s", ref)
        return self._patch(rtype, ref, body, APPLY_PATCH, "apply", apply=True, force=force, dry_run=dry_run)

    def _keep_autoscaler_fields(self, rtype: ResourceType, ref: ObjectRef, body: dict[str, Any]) -> None:
        try:
            live = self._get(rtype, ref)
        except NotFound:
            return
        live_groups = {g.get("groupName"): g for g in (live.get("spec") or {}).get("workerGroupSpecs") or ()}
        for group in (body.get("spec") or {}).get("workerGroupSpecs") or ():
            current = live_groups.get(group.get("groupName"))
            if current is None:
                continue
            for field in ("replicas", "scaleStrategy"):
                if field not in group and current.get(field) is not None:
                    group[field] = copy.deepcopy(current[field])

    def delete_object(self, obj: Mapping[str, Any], *, propagation: str = "Background") -> None:
        """Delete the object a manifest names; :class:`NotFound` if it is not there."""
        rtype = resource_type(str(obj.get("apiVersion")), str(obj.get("kind")))
        self._delete(rtype, ref_of(obj), propagation)

    # --- conditions and status -----------------------------------------------------------------

    def wait_for_conditions(
        self,
        kind: str,
        name: str,
        want: Mapping[str, str],
        *,
        namespace: str = DEFAULT_NAMESPACE,
        timeout_s: float | None = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Poll until every condition type in ``want`` has the wanted status; return the object.

        The conditions count only once the operator has observed the object's current generation.
        Give ``timeout_s`` or an absolute ``deadline`` (on this client's clock) shared by several waits.
        """
        end = _deadline(self._clock, timeout_s, deadline)
        ref = ObjectRef(kind, name, namespace)
        while True:
            obj = self.get(kind, name, namespace)
            if _conditions_met(obj, want):
                return obj
            if self._clock() >= end:
                have = ", ".join(map(str, conditions_of(obj))) or "no conditions"
                wanted = ", ".join(f"{k}={v}" for k, v in want.items())
                raise Timeout(
                    f"{ref} did not reach {wanted} in time: last seen {have}{_generation_note(obj)}",
                    kind=kind,
                    name=name,
                    namespace=namespace,
                )
            self._sleep(min(self._poll, max(0.0, end - self._clock())))

    def wait_ready(self, objects: Iterable[Mapping[str, Any]], *, timeout_s: float) -> None:
        """Wait, under one deadline, until every RayCluster and RayService in ``objects`` is ready."""
        end = _deadline(self._clock, timeout_s, None)
        for obj in objects:
            want = READY_CONDITIONS.get(str(obj.get("kind")))
            if want is None or obj.get("apiVersion") != "ray.io/v1":
                continue
            ref = ref_of(obj)
            self.wait_for_conditions(ref.kind, ref.name, want, namespace=ref.namespace, deadline=end)

    def cluster_status(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> ClusterStatus:
        """A RayCluster's state, workers, conditions and worker groups."""
        return ClusterStatus.from_object(self.get("RayCluster", name, namespace))

    def service_status(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> ServiceStatus:
        """A RayService's status, serve endpoints and conditions."""
        return ServiceStatus.from_object(self.get("RayService", name, namespace))

    # --- scaling -------------------------------------------------------------------------------

    def scale_worker_group(
        self,
        cluster: str,
        group: str,
        *,
        min_replicas: int,
        max_replicas: int,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> dict[str, Any]:
        """Set a worker group's autoscaling bounds (JSON patch; ``replicas`` stays the autoscaler's)."""
        ref = ObjectRef("RayCluster", cluster, namespace)
        if min_replicas < 0 or max_replicas < min_replicas:
            raise Invalid(
                f"scale group {group} of {ref}: need 0 <= minReplicas <= maxReplicas, "
                f"got {min_replicas}..{max_replicas}",
                kind=ref.kind,
                name=cluster,
                namespace=namespace,
            )
        index, _ = self._group(ref, group)
        base = f"/spec/workerGroupSpecs/{index}"
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": f"{base}/groupName", "value": group},
            {"op": "add", "path": f"{base}/minReplicas", "value": min_replicas},
            {"op": "add", "path": f"{base}/maxReplicas", "value": max_replicas},
        ]
        log.info("scaling %s group %s to %d..%d", ref, group, min_replicas, max_replicas)
        return self._patch(ray_type("RayCluster"), ref, ops, JSON_PATCH, f"scale group {group} of")

    def delete_workers(
        self,
        cluster: str,
        group: str,
        pods: Sequence[str],
        *,
        decrement_replicas: bool = False,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> dict[str, Any]:
        """Remove the named worker pods through ``scaleStrategy.workersToDelete``.

        With ``decrement_replicas`` the group also shrinks by that many pods (never below its
        minimum), as the autoscaler does; without it KubeRay replaces them (e.g. a bad node).
        """
        ref = ObjectRef("RayCluster", cluster, namespace)
        if not pods:
            raise Invalid(f"delete workers of {ref}: no pod named", kind=ref.kind, name=cluster, namespace=namespace)
        bad = [p for p in pods if not _DNS1123.match(p)]
        if bad:
            raise Invalid(
                f"delete workers of {ref}: not pod names: {', '.join(bad)}",
                kind=ref.kind,
                name=cluster,
                namespace=namespace,
            )
        index, spec = self._group(ref, group)
        base = f"/spec/workerGroupSpecs/{index}"
        pending = list((spec.get("scaleStrategy") or {}).get("workersToDelete") or [])
        new = [p for p in dict.fromkeys(pods) if p not in pending]
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": f"{base}/groupName", "value": group},
            {"op": "add", "path": f"{base}/scaleStrategy", "value": {"workersToDelete": pending + new}},
        ]
        if decrement_replicas:
            replicas = spec.get("replicas")
            if not isinstance(replicas, int):
                raise Invalid(
                    f"delete workers of {ref}: group {group} has no replicas yet",
                    kind=ref.kind,
                    name=cluster,
                    namespace=namespace,
                )
            target = max(int(spec.get("minReplicas", 0)), replicas - len(new))
            ops += [
                {"op": "test", "path": f"{base}/replicas", "value": replicas},
                {"op": "replace", "path": f"{base}/replicas", "value": target},
            ]
        log.info("asking KubeRay to delete %s from %s group %s", ", ".join(new) or "nothing new", ref, group)
        return self._patch(ray_type("RayCluster"), ref, ops, JSON_PATCH, f"delete workers of group {group} of")

    def _group(self, ref: ObjectRef, group: str) -> tuple[int, dict[str, Any]]:
        obj = self.get(ref.kind, ref.name, ref.namespace)
        groups = (obj.get("spec") or {}).get("workerGroupSpecs") or []
        for index, spec in enumerate(groups):
            if spec.get("groupName") == group:
                return index, spec
        names = ", ".join(str(g.get("groupName")) for g in groups) or "none"
        raise NotFound(
            f"{ref} has no worker group {group!r} (groups: {names})",
            kind=ref.kind,
            name=ref.name,
            namespace=ref.namespace,
        )

    # --- RayJobs -------------------------------------------------------------------------------

    def submit_job(self, job: Mapping[str, Any], *, name: str | None = None) -> JobStatus:
        """Create a RayJob from a manifest (optionally renamed); :class:`Conflict` if it exists."""
        body = copy.deepcopy(dict(job))
        body.pop("status", None)
        meta = body.setdefault("metadata", {})
        for field in _SERVER_FIELDS:
            meta.pop(field, None)
        if name is not None:
            meta["name"] = name
        if body.get("apiVersion") != "ray.io/v1" or body.get("kind") != "RayJob":
            raise Invalid(f"submit: expected a ray.io/v1 RayJob, got {body.get('kind')} ({body.get('apiVersion')})")
        ref = ref_of(body)
        namespace = ref.namespace or DEFAULT_NAMESPACE
        meta["namespace"] = namespace
        ref = ObjectRef(ref.kind, ref.name, namespace)
        _check_name(ref)
        rtype = ray_type("RayJob")
        log.info("submitting %s", ref)
        created = self._custom_call(
            "create",
            ref,
            self._custom.create_namespaced_custom_object,
            group=rtype.group,
            version=rtype.version,
            namespace=namespace,
            plural=rtype.plural,
            body=body,
            field_manager=self._field_manager,
        )
        return JobStatus.from_object(created or body)

    def job_status(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> JobStatus:
        """A RayJob's Ray job status and deployment status."""
        return JobStatus.from_object(self.get("RayJob", name, namespace))

    def follow_job(
        self,
        name: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        timeout_s: float,
        until_finished: bool = True,
        on_change: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Poll a RayJob until it finishes (or, with ``until_finished=False``, runs).

        ``on_change`` sees every distinct status on the way. The final status is returned whether
        the job succeeded or failed; :class:`Timeout` if the deadline passes first.
        """
        end = _deadline(self._clock, timeout_s, None)
        seen: JobStatus | None = None
        while True:
            status = self.job_status(name, namespace)
            if status != seen:
                seen = status
                if on_change is not None:
                    on_change(status)
            if status.finished or (not until_finished and status.running):
                return status
            if self._clock() >= end:
                goal = "finish" if until_finished else "start running"
                raise Timeout(
                    f"RayJob {namespace}/{name} did not {goal} in time: last seen "
                    f"{status.job_status}/{status.deployment_status}",
                    kind="RayJob",
                    name=name,
                    namespace=namespace,
                )
            self._sleep(min(self._poll, max(0.0, end - self._clock())))

    def delete_job(self, name: str, namespace: str = DEFAULT_NAMESPACE) -> None:
        """Delete a RayJob; KubeRay's finalizer stops the Ray job first if it is still running."""
        self._delete(ray_type("RayJob"), ObjectRef("RayJob", name, namespace), "Background")

    def stop_job(self, name: str, *, namespace: str = DEFAULT_NAMESPACE, timeout_s: float) -> None:
        """Stop a RayJob and wait until it is gone.

        KubeRay refuses ``suspend`` for clusterSelector jobs; deleting the RayJob is how a job on a
        long-lived cluster is stopped (the operator's finalizer calls the Jobs API's stop).
        """
        end = _deadline(self._clock, timeout_s, None)
        self.delete_job(name, namespace)
        while True:
            try:
                status = self.job_status(name, namespace)
            except NotFound:
                return
            if self._clock() >= end:
                raise Timeout(
                    f"RayJob {namespace}/{name} still present after delete: "
                    f"{status.job_status}/{status.deployment_status}",
                    kind="RayJob",
                    name=name,
                    namespace=namespace,
                )
            self._sleep(min(self._poll, max(0.0, end - self._clock())))


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


def _deadline(clock: Callable[[], float], timeout_s: float | None, deadline: float | None) -> float:
    if deadline is not None:
        return deadline
    if timeout_s is None or timeout_s < 0:
        raise Invalid("a wait needs a non-negative timeout_s or a deadline")
    return clock() + timeout_s


def _conditions_met(obj: Mapping[str, Any], want: Mapping[str, str]) -> bool:
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if isinstance(generation, int) and isinstance(observed, int) and observed < generation:
        return False
    have = {c.type: c.status for c in conditions_of(obj)}
    return all(have.get(kind) == value for kind, value in want.items())


def _generation_note(obj: Mapping[str, Any]) -> str:
    generation = (obj.get("metadata") or {}).get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    if isinstance(generation, int) and isinstance(observed, int) and observed < generation:
        return f" (operator has observed generation {observed} of {generation})"
    return ""


def _check_name(ref: ObjectRef) -> None:
    limit = MAX_NAME_LENGTH.get(ref.kind)
    if limit is not None and len(ref.name) > limit:
        raise Invalid(
            f"{ref}: KubeRay allows at most {limit} characters in a {ref.kind} name, got {len(ref.name)}",
            kind=ref.kind,
            name=ref.name,
            namespace=ref.namespace,
        )
    if not _DNS1035.match(ref.name):
        raise Invalid(
            f"{ref}: name must be a DNS-1035 label (lower case, starts with a letter)",
            kind=ref.kind,
            name=ref.name,
            namespace=ref.namespace,
        )
