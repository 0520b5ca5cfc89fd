"""The one place that names the pipeline's Ray objects: namespace, actor names, options, producer ids.

Every actor of one pipeline lives in ``settings.ray.namespace`` (never a constant elsewhere), so
``status``, ``scale``, the gateway's lag metric and a restarted supervisor find exactly the actors
that ``run``/``deploy`` created. Broker discovery, actor options and the producer-id format are
defined here once and used by every other module of ``pipeline.runtime``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import ray
from ray.actor import ActorHandle as _RayHandle

__all__ = [
    "COLLECTOR_MEMORY",
    "CONTROLLER_NAME",
    "STREAMER_MEMORY",
    "ActorHandle",
    "ProducerId",
    "actor_options",
    "broker_name",
    "call_once",
    "collector_name",
    "find",
    "find_brokers",
    "find_role",
    "role_resources",
    "spawn",
    "streamer_name",
]

# A handle to one of the pipeline's actors (Ray's handle type is generic in the actor class).
ActorHandle: TypeAlias = "_RayHandle[Any]"

CONTROLLER_NAME = "controller"
# Ray's logical memory requests: on KubeRay they make the autoscaler add pods that fit the actors.
STREAMER_MEMORY = 512 << 20
COLLECTOR_MEMORY = 768 << 20
ROLES = ("broker", "streamer", "collector")


def broker_name(i: int) -> str:
    """Named-actor name of broker ``i``."""
    return f"broker-{i}"


def streamer_name(i: int) -> str:
    """Named-actor name of streamer ``i``."""
    return f"streamer-{i}"


def collector_name(i: int) -> str:
    """Named-actor name of collector ``i``."""
    return f"collector-{i}"


_NAMERS = {"broker": broker_name, "streamer": streamer_name, "collector": collector_name}


@dataclass(frozen=True, slots=True)
class ProducerId:
    """The id a broker deduplicates a streamer's flushes on.

    ``epoch`` names the shard layout: a re-split gets new ids (so it never reuses an earlier
    layout's sequence numbers) while a restarted actor of the same layout keeps its own.
    """

    index: int
    count: int
    epoch: int | None = None

    def __str__(self) -> str:
        base = streamer_name(self.index) if self.epoch is None else f"{streamer_name(self.index)}@{self.epoch}"
        return f"{base}/shard-{self.index}-of-{self.count}"


def actor_options(
    name: str,
    namespace: str,
    num_cpus: float,
    memory_bytes: int | None = None,
    restarts: int = -1,
    **extra: Any,
) -> dict[str, Any]:
    """Options every pipeline actor shares: a name in the pipeline's namespace, resources, restarts.

    Every actor is detached (no driver owns it: the end of ``deploy``'s process or a RayJob's driver
    never stops the pipeline) and created with ``get_if_exists`` (starting an actor that already
    runs returns the running one: a restarted supervisor adopts its fleet instead of doubling it).
    """
    opts: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "num_cpus": num_cpus,
        "max_restarts": restarts,
        "lifetime": "detached",
        "get_if_exists": True,
    }
    if memory_bytes:
        opts["memory"] = memory_bytes
    opts.update(extra)
    return opts


def role_resources(role: str, index: int, placement: bool) -> dict[str, Any]:
    """Custom resources an actor requests when placement on KubeRay worker groups is on."""
    if not placement:
        return {}
    if role == "broker":
        return {"resources": {"broker": 1, f"broker_{index}": 1}}
    return {"resources": {role: 1}}


def spawn(cls: type, options: dict[str, Any], *args: Any, **kwargs: Any) -> ActorHandle:
    """Start ``cls`` as a Ray actor with ``options`` (the one call that turns a plain class into an actor)."""
    return cast("ActorHandle", ray.remote(**options)(cls).remote(*args, **kwargs))


def call_once(handle: ActorHandle, method: str, *args: Any) -> Any:
    """Call ``method`` on an actor without Ray's retries (a call parked on a restart must not stall failover)."""
    return getattr(handle, method).options(max_task_retries=0).remote(*args)


def find(name: str, namespace: str) -> ActorHandle | None:
    """The named actor, or None when no such actor is alive in ``namespace``."""
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def _indexed(role: str, namespace: str, tolerate_gaps: int) -> Iterator[ActorHandle]:
    i = misses = 0
    while misses <= tolerate_gaps:
        handle = find(_NAMERS[role](i), namespace)
        if handle is None:
            misses += 1
        else:
            misses = 0
            yield handle
        i += 1


def find_role(role: str, namespace: str, tolerate_gaps: int = 2) -> list[ActorHandle]:
    """Every live actor of ``role`` (broker, streamer, collector) in ``namespace``, by index.

    Scaled-down roles can leave gaps in the indices: up to ``tolerate_gaps`` missing indices in a
    row are skipped before the search ends.
    """
    if role not in _NAMERS:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return list(_indexed(role, namespace, tolerate_gaps))


def find_brokers(namespace: str, count: int | None = None) -> list[ActorHandle]:
    """The brokers of the pipeline in ``namespace``: exactly ``count`` of them when given (in order)."""
    if count is None:
        return find_role("broker", namespace, tolerate_gaps=0)
    found = [find(broker_name(i), namespace) for i in range(count)]
    return [h for h in found if h is not None]
