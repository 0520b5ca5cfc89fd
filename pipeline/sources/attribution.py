"""Who holds a GPU and what it is, read from dcgm-exporter's columns and labels, whole columns at once.

dcgm-exporter names the Kubernetes workload in one of two spellings: ``pod``/``namespace``/``container``
(the default) or ``pod_name``/``pod_namespace``/``container_name`` (``--use-old-namespace``); the CSV
export also has ``pod``/``namespace``/``container`` columns, which win when filled. An HPC job is its
``hpc_job`` label. Static facts go to the GPU's row: ``DCGM_FI_DRIVER_VERSION``, ``instance`` and, for
a MIG device, ``GPU_I_ID``/``GPU_I_PROFILE``. A MIG device is a GPU of its own, identified as
``<parent UUID>/mig-<GPU_I_ID>``, with its parent's UUID kept.

Everything is Arrow compute over the batch (no per-row Python): the canonical strings of
``pipeline.records`` come out, null where nothing is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.records import FIELD_SEP

__all__ = ["MIG_SEPARATOR", "POD_LABELS", "gpu_identity", "workload_column"]

MIG_SEPARATOR: Final = "/mig-"
# (new spelling, old spelling) of each Kubernetes field, in WORKLOAD_FIELDS order (job aside).
POD_LABELS: Final = (("namespace", "pod_namespace"), ("pod", "pod_name"), ("container", "container_name"))
HPC_JOB_LABEL: Final = "hpc_job"


def _blank_to_null(arr: pa.Array) -> pa.Array:
    arr = pc.cast(arr, pa.string())
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


def _label(labels: pa.Array, *keys: str) -> pa.Array:
    """The first non-empty value of ``keys`` in each row's label map (null where none)."""
    out: pa.Array | None = None
    for key in keys:
        value = _blank_to_null(pc.map_lookup(labels, key, "last"))
        out = value if out is None else pc.coalesce(out, value)
    assert out is not None
    return out


def _join(fields: Sequence[pa.Array], count: int) -> pa.Array:
    """Fields joined by FIELD_SEP (the separator removed from values); null where every field is."""
    if count == 0:
        return pa.array([], pa.string())
    clean = [pc.replace_substring(f, FIELD_SEP, " ") for f in fields]
    joined = pc.binary_join_element_wise(*clean, FIELD_SEP, null_handling="replace", null_replacement="")
    present = np.zeros(count, dtype=bool)
    for f in clean:
        present |= np.asarray(f.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    return pc.if_else(pa.array(present), joined, pa.scalar(None, pa.string()))


def workload_column(labels: pa.Array, columns: dict[str, pa.Array] | None = None) -> pa.Array:
    """The ``workload`` column: namespace, pod, container (CSV columns, else either label spelling), hpc_job."""
    fields = []
    for new, old in POD_LABELS:
        value = _label(labels, new, old)
        given = (columns or {}).get(new)
        if given is not None:
            value = pc.coalesce(_blank_to_null(given), value)
        fields.append(value)
    fields.append(_label(labels, HPC_JOB_LABEL))
    return _join(fields, len(labels))


def gpu_identity(uuid: pa.Array, labels: pa.Array) -> tuple[pa.Array, pa.Array]:
    """The GPU's identity (a MIG device: ``<parent>/mig-<GPU_I_ID>``) and its ``gpu_info`` column."""
    instance_id = _label(labels, "GPU_I_ID")
    uuid = pc.cast(uuid, pa.string())
    is_mig = np.asarray(instance_id.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    parent = pa.nulls(len(uuid), pa.string())
    if is_mig.any():
        # A source that already named the device (the scrape of an older version) keeps its name.
        named = np.asarray(pc.match_substring(uuid, MIG_SEPARATOR).to_numpy(zero_copy_only=False), dtype=bool)
        base = pc.if_else(pa.array(named), pc.list_element(pc.split_pattern(uuid, MIG_SEPARATOR), 0), uuid)
        device = pc.binary_join_element_wise(base, pc.fill_null(instance_id, ""), MIG_SEPARATOR)
        uuid = pc.if_else(pa.array(is_mig), device, uuid)
        parent = pc.if_else(pa.array(is_mig), base, parent)
    info = _join(
        [
            _label(labels, "DCGM_FI_DRIVER_VERSION"),
            _label(labels, "instance"),
            parent,
            instance_id,
            _label(labels, "GPU_I_PROFILE"),
        ],
        len(uuid),
    )
    return uuid, info
