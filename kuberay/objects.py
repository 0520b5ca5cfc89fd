"""Cluster and service objects: server-side apply, readiness waits, status, worker-group scaling.

* :meth:`ClusterObjects.apply` is server-side apply (``application/apply-patch+yaml``, one field
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
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kuberay.errors import Invalid, NotFound, Timeout
from kuberay.resources import DEFAULT_NAMESPACE, ObjectRef, ResourceType, apply_order, ray_type, ref_of, resource_type
from kuberay.session import Session
from kuberay.status import ClusterStatus, ServiceStatus, conditions_of
from kuberay.transport import APPLY_PATCH, JSON_PATCH

__all__ = ["READY_CONDITIONS", "ClusterObjects"]

log = logging.getLogger(__name__)

# Conditions that mean "up" for each kind (KubeRay >= 1.2 writes them).
READY_CONDITIONS: dict[str, dict[str, str]] = {
    "RayCluster": {"HeadPodReady": "True", "RayClusterProvisioned": "True"},
    "RayService": {"Ready": "True"},
}
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class ClusterObjects(Session):
    """Apply and delete manifests, wait for RayClusters and RayServices, scale worker groups."""

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
        return self._transport.patch(rtype, ref, body, APPLY_PATCH, "apply", apply=True, force=force, dry_run=dry_run)

    def _keep_autoscaler_fields(self, rtype: ResourceType, ref: ObjectRef, body: dict[str, Any]) -> None:
        try:
            live = self._transport.get(rtype, ref)
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
        self._transport.delete(rtype, ref_of(obj), propagation)

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
        end = self._deadline(timeout_s, deadline)
        ref = ObjectRef(kind, name, namespace)
        while True:
            obj = self.get(kind, name, namespace)
            if _conditions_met(obj, want):
                return obj
            if self._expired(end):
                have = ", ".join(map(str, conditions_of(obj))) or "no conditions"
                wanted = ", ".join(f"{k}={v}" for k, v in want.items())
                raise Timeout(
                    f"{ref} did not reach {wanted} in time: last seen {have}{_generation_note(obj)}",
                    kind=kind,
                    name=name,
                    namespace=namespace,
                )
            self._pause(end)

    def wait_ready(self, objects: Iterable[Mapping[str, Any]], *, timeout_s: float) -> None:
        """Wait, under one deadline, until every RayCluster and RayService in ``objects`` is ready."""
        end = self._deadline(timeout_s)
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
        return self._transport.patch(ray_type("RayCluster"), ref, ops, JSON_PATCH, f"scale group {group} of")

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
        _check_pod_names(ref, pods)
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
        action = f"delete workers of group {group} of"
        return self._transport.patch(ray_type("RayCluster"), ref, ops, JSON_PATCH, action)

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


def _check_pod_names(ref: ObjectRef, pods: Sequence[str]) -> None:
    if not pods:
        raise Invalid(f"delete workers of {ref}: no pod named", kind=ref.kind, name=ref.name, namespace=ref.namespace)
    bad = [p for p in pods if not _DNS1123.match(p)]
    if bad:
        raise Invalid(
            f"delete workers of {ref}: not pod names: {', '.join(bad)}",
            kind=ref.kind,
            name=ref.name,
            namespace=ref.namespace,
        )


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
