"""RayJobs: submit, follow, stop.

Stopping deletes the RayJob with ``Foreground`` propagation and waits until it is gone: the API
server keeps the RayJob until its dependents (the submitter Job and its pod) are deleted, so once
:meth:`RayJobs.stop_job` returns, a RayJob created again under the same name cannot find, and
reuse, the old submitter Job (KubeRay looks that Job up by the RayJob's name).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from kuberay.errors import Invalid, NotFound, Timeout
from kuberay.resources import DEFAULT_NAMESPACE, ObjectRef, ray_type, ref_of
from kuberay.session import Session
from kuberay.status import JobStatus

__all__ = ["MAX_NAME_LENGTH", "RayJobs"]

log = logging.getLogger(__name__)

# KubeRay's own limits on names (they become label values and Service names).
MAX_NAME_LENGTH = {"RayCluster": 53, "RayService": 47, "RayJob": 47}
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SERVER_FIELDS = (
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
)


class RayJobs(Session):
    """Create RayJobs from manifests, follow their status, and stop them."""

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
        meta["namespace"] = ref.namespace or DEFAULT_NAMESPACE
        ref = ObjectRef(ref.kind, ref.name, meta["namespace"])
        _check_name(ref)
        log.info("submitting %s", ref)
        created = self._transport.create(ray_type("RayJob"), ref, body)
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
        end = self._deadline(timeout_s)
        seen: JobStatus | None = None
        while True:
            status = self.job_status(name, namespace)
            if status != seen:
                seen = status
                if on_change is not None:
                    on_change(status)
            if status.finished or (not until_finished and status.running):
                return status
            if self._expired(end):
                goal = "finish" if until_finished else "start running"
                raise Timeout(
                    f"RayJob {namespace}/{name} did not {goal} in time: last seen "
                    f"{status.job_status}/{status.deployment_status}",
                    kind="RayJob",
                    name=name,
                    namespace=namespace,
                )
            self._pause(end)

    def delete_job(self, name: str, namespace: str = DEFAULT_NAMESPACE, *, propagation: str = "Foreground") -> None:
        """Delete a RayJob; KubeRay's finalizer stops the Ray job first if it is still running.

        ``Foreground`` (the default) keeps the RayJob until its submitter Job is gone too.
        """
        self._transport.delete(ray_type("RayJob"), ObjectRef("RayJob", name, namespace), propagation)

    def stop_job(
        self, name: str, *, namespace: str = DEFAULT_NAMESPACE, timeout_s: float, propagation: str = "Foreground"
    ) -> None:
        """Stop a RayJob and wait until it, and with ``Foreground`` its submitter Job, is gone.

        KubeRay refuses ``suspend`` for clusterSelector jobs; deleting the RayJob is how a job on a
        long-lived cluster is stopped (the operator's finalizer calls the Jobs API's stop).
        """
        end = self._deadline(timeout_s)
        self.delete_job(name, namespace, propagation=propagation)
        while True:
            try:
                status = self.job_status(name, namespace)
            except NotFound:
                return
            if self._expired(end):
                raise Timeout(
                    f"RayJob {namespace}/{name} still present after delete: "
                    f"{status.job_status}/{status.deployment_status}",
                    kind="RayJob",
                    name=name,
                    namespace=namespace,
                )
            self._pause(end)


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
