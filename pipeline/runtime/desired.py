"""A pipeline's desired state as stored for its supervisor: which settings, what may change live.

``spec_of`` keeps the sections that define a running pipeline (never the database URL or other
secrets: the database is where the spec is stored); ``apply_spec`` lays a stored spec over the
settings a supervisor was started with; ``changes`` says what a new deploy changes, and refuses
what cannot change while the pipeline runs (the queue's shape, the source) with a clear message.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Settings
from pipeline.errors import ConfigError

__all__ = ["LIVE", "apply_spec", "changes", "spec_of"]

SECTIONS = ("streamer", "collector", "queue", "scaling", "storage")
# What a deploy may change on a running pipeline (everything else needs stop + deploy).
LIVE = ("scaling.", "collector.count", "streamer.count")


def spec_of(settings: Settings) -> dict[str, Any]:
    """The stored form of ``settings``: the defining sections as JSON, plus the Ray placement."""
    spec: dict[str, Any] = {s: getattr(settings, s).model_dump(mode="json") for s in SECTIONS}
    spec["ray"] = {"placement": settings.ray.placement}
    return spec


def apply_spec(settings: Settings, spec: dict[str, Any]) -> Settings:
    """``settings`` with the stored sections put back (the database and Ray address stay as given)."""
    update: dict[str, Any] = {}
    for section in SECTIONS:
        if section in spec:
            model = type(getattr(settings, section))
            update[section] = model.model_validate(spec[section])
    if "ray" in spec:
        update["ray"] = settings.ray.model_copy(update=spec["ray"])
    return settings.model_copy(update=update)


def _flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changes(running: dict[str, Any], wanted: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Settings that differ (``key -> (running, wanted)``); ``ConfigError`` if one cannot change live."""
    before, after = _flatten(running), _flatten(wanted)
    diff = {
        k: (before.get(k), after.get(k)) for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)
    }
    frozen = [k for k in diff if not k.startswith(LIVE)]
    if frozen:
        shown = ", ".join(f"{k} ({diff[k][0]!r} -> {diff[k][1]!r})" for k in frozen[:5])
        raise ConfigError(
            f"cannot change {shown} on a running pipeline: `python -m pipeline stop`, then deploy again",
            setting=frozen[0],
        )
    return diff
