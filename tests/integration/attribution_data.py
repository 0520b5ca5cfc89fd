"""Hand-made attribution scenarios as sample batches, with the answers computed by hand.

``scenario()`` is one GPU X at 1 Hz for 150 s from T0: pod A (namespace ml, util 80 %, 300 W, 40 GiB of
framebuffer) for 30 s, then pod B (namespace research, util 0 %, 100 W, 20 GiB held: idle but holding
memory) for 90 s, then nobody (util 0 %, 50 W, 500 MiB) for 30 s; and a GPU Y held by HPC job J (util
50 %, 200 W) throughout. The expected usage follows from the rule in docs/storage.md: each sample holds
until the next, so X: A 30 s active, B 90 s idle with memory held, nobody 29 s (the last sample's hold
is not known yet); Y: J 149 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from pipeline.records import FIELD_SEP, SAMPLE_SCHEMA, Envelope

# On the hour grid, and recent: the rollups' retention (7 days for minutes) must not take the data away.
T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
SECONDS = 150
UTIL, POWER, FB, XID = (
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_XID_ERRORS",
)
POD_A = FIELD_SEP.join(["ml", "train-a", "main", ""])
POD_B = FIELD_SEP.join(["research", "notebook-b", "main", ""])
JOB_J = FIELD_SEP.join(["", "", "", "slurm-7"])
INFO_X = FIELD_SEP.join(["535.129.03", "node-1:9400", "", "", ""])
INFO_Y = FIELD_SEP.join(["535.129.03", "node-1:9400", "GPU-parent", "2", "3g.40gb"])
GPU_X, GPU_Y = "GPU-x", "GPU-parent/mig-2"


def at(second: float) -> datetime:
    return T0 + timedelta(seconds=second)


def x_state(s: int) -> tuple[str | None, float, float, float]:
    """GPU X at second ``s``: (workload, util, power, fb)."""
    if s < 30:
        return POD_A, 80.0, 300.0, 40960.0
    if s < 120:
        return POD_B, 0.0, 100.0, 20480.0
    return None, 0.0, 50.0, 500.0


def rows_at(s: int, xid: float | None = None) -> list[dict[str, object]]:
    """Every sample of second ``s``: util, power and fb of X and Y (and X's XID value, if given)."""
    ts = int(at(s).timestamp() * 1_000_000)
    out: list[dict[str, object]] = []
    workload, util, power, fb = x_state(s)
    for metric, value in ((UTIL, util), (POWER, power), (FB, fb)) + (((XID, xid),) if xid is not None else ()):
        out.append(_row(ts, GPU_X, metric, value, workload, INFO_X, 0))
    for metric, value in ((UTIL, 50.0), (POWER, 200.0), (FB, 8192.0)):
        out.append(_row(ts, GPU_Y, metric, value, JOB_J, INFO_Y, 1))
    return out


def _row(
    ts: int, uuid: str, metric: str, value: float, workload: str | None, info: str, index: int
) -> dict[str, object]:
    return {
        "ts": ts,
        "uuid": uuid,
        "hostname": "node-1",
        "gpu_index": index,
        "device": f"nvidia{index}",
        "model": "H100",
        "metric": metric,
        "value": value,
        "workload": workload,
        "gpu_info": info,
    }


def batch(rows: list[dict[str, object]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=SAMPLE_SCHEMA)


def scenario(step: int = 7, xids: dict[int, float] | None = None) -> Iterator[Envelope]:
    """The scenario's seconds in envelopes of ``step`` seconds each (cut across minute boundaries)."""
    for start in range(0, SECONDS, step):
        seconds = range(start, min(SECONDS, start + step))
        rows = [r for s in seconds for r in rows_at(s, None if xids is None else xids.get(s, 0.0))]
        yield Envelope(batch(rows))


# The answers, by hand: (workload, seconds, active s, memory-held-idle s, util x s, joules) per GPU.
EXPECTED_X = {
    POD_A: (30.0, 30.0, 0.0, 30 * 80.0, 30 * 300.0),
    POD_B: (90.0, 0.0, 90.0, 0.0, 90 * 100.0),
    None: (29.0, 0.0, 0.0, 0.0, 29 * 50.0),
}
EXPECTED_Y = {JOB_J: (149.0, 149.0, 0.0, 149 * 50.0, 149 * 200.0)}
