"""What the pages call the DCGM fields, in which order they show them, and the windows a page offers.

A field the catalogue does not know still shows, under its DCGM name, after the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from pipeline.errors import InvalidParameter

__all__ = ["FLEET_METRICS", "WINDOWS", "Shown", "bucket_for", "parse_window", "shown", "workload_name"]


@dataclass(frozen=True, slots=True)
class Shown:
    """How a page names a metric, and its fixed colour/axis range (None: the data's own)."""

    label: str
    fixed: tuple[float, float] | None = None
    order: int = 99


_KNOWN: dict[str, Shown] = {
    "DCGM_FI_DEV_GPU_UTIL": Shown("GPU utilisation", (0.0, 100.0), 0),
    "DCGM_FI_DEV_GPU_TEMP": Shown("Temperature", None, 1),
    "DCGM_FI_DEV_POWER_USAGE": Shown("Power", None, 2),
    "DCGM_FI_DEV_FB_USED": Shown("Memory used", None, 3),
    "DCGM_FI_DEV_FB_FREE": Shown("Memory free", None, 4),
    "DCGM_FI_DEV_MEM_COPY_UTIL": Shown("Memory copy utilisation", (0.0, 100.0), 5),
    "DCGM_FI_DEV_SM_CLOCK": Shown("SM clock", None, 6),
    "DCGM_FI_DEV_MEM_CLOCK": Shown("Memory clock", None, 7),
    "DCGM_FI_DEV_ENC_UTIL": Shown("Encoder utilisation", (0.0, 100.0), 8),
    "DCGM_FI_DEV_DEC_UTIL": Shown("Decoder utilisation", (0.0, 100.0), 9),
    "DCGM_FI_DEV_XID_ERRORS": Shown("Last XID error code", None, 10),
}
# The metrics the fleet heatmap offers to colour by, in the order of its menu.
FLEET_METRICS = ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_FB_USED")

WINDOWS: dict[str, timedelta] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
_BUCKETS = tuple(timedelta(seconds=s) for s in (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600))
MAX_POINTS = 300


def shown(metric: str) -> Shown:
    """The page name and range of ``metric`` (its DCGM name when the catalogue does not know it)."""
    return _KNOWN.get(metric) or Shown(metric)


def parse_window(text: str | None, default: str = "1h") -> tuple[str, timedelta]:
    """A window a page offers (15m, 1h, 6h, 24h, 7d); 400 naming the choices for any other."""
    name = text or default
    if name not in WINDOWS:
        raise InvalidParameter(f"window `{name[:16]}` is not one of {', '.join(WINDOWS)}", param="window")
    return name, WINDOWS[name]


def bucket_for(span: timedelta) -> timedelta:
    """The narrowest bucket that draws ``span`` in at most ``MAX_POINTS`` points."""
    return next((b for b in _BUCKETS if span / b <= MAX_POINTS), _BUCKETS[-1])


def workload_name(namespace: str | None, pod: str | None, container: str | None, job: str | None) -> str:
    """How the pages name a workload: ``namespace/pod/container``, and its HPC job in brackets."""
    text = "/".join(p for p in (namespace, pod, container) if p)
    if job:
        return f"{text} (job {job})" if text else f"job {job}"
    return text or "(unnamed workload)"
