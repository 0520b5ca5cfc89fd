"""The NVML source: mapping raw readings to samples and rejects, and a real read where a GPU exists."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.errors import SourceError
from pipeline.records import DCGM_FIELDS, SAMPLE_SCHEMA
from pipeline.sources import Shard, Source
from pipeline.sources.nvml import FIELD_READINGS, GpuReading, NvmlSource, rows_from_readings

READ_AT = 1_750_000_000.5


def _nvml_works() -> bool:
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


NVML = _nvml_works()


def reading(index: int = 0, uuid: str = "GPU-1111", **changes: object) -> GpuReading:
    values: dict[str, object] = {
        "model": "NVIDIA H100 80GB HBM3",
        "minor": index + 2,
        "pci_bus_id": "00000000:18:00.0",
        "gpu_util": 87,
        "mem_util": 35,
        "enc_util": 0,
        "dec_util": 4,
        "temperature_c": 64,
        "power_mw": 512_345,
        "fb_used_bytes": 40_000 * (1 << 20) + 12_345,
        "fb_free_bytes": 41_559 * (1 << 20),
        "sm_clock_mhz": 1980,
        "mem_clock_mhz": 2619,
    }
    values.update(changes)
    return GpuReading(index, uuid, **values)  # type: ignore[arg-type]


def test_readings_become_the_ten_dcgm_fields_in_dcgm_units() -> None:
    result = rows_from_readings([reading(), reading(1, "GPU-2222")], "gpu-node-3", READ_AT, "nvml:gpu-node-3")
    assert result.rejects is None
    assert result.samples.schema == SAMPLE_SCHEMA and result.samples.num_rows == 20
    rows = {(r["uuid"], r["metric"]): r for r in result.samples.to_pylist()}
    assert {m for _, m in rows} == set(DCGM_FIELDS)
    got = {m: rows[("GPU-1111", m)]["value"] for m in DCGM_FIELDS}
    assert got == {
        "DCGM_FI_DEV_GPU_UTIL": 87.0,
        "DCGM_FI_DEV_MEM_COPY_UTIL": 35.0,
        "DCGM_FI_DEV_ENC_UTIL": 0.0,
        "DCGM_FI_DEV_DEC_UTIL": 4.0,
        "DCGM_FI_DEV_GPU_TEMP": 64.0,
        "DCGM_FI_DEV_POWER_USAGE": 512.345,  # mW -> W
        "DCGM_FI_DEV_FB_USED": 40_000.0,  # bytes -> MiB
        "DCGM_FI_DEV_FB_FREE": 41_559.0,
        "DCGM_FI_DEV_SM_CLOCK": 1980.0,
        "DCGM_FI_DEV_MEM_CLOCK": 2619.0,
    }
    one = rows[("GPU-2222", "DCGM_FI_DEV_GPU_TEMP")]
    assert (one["hostname"], one["gpu_index"], one["device"], one["model"]) == (
        "gpu-node-3",
        1,
        "nvidia3",
        "NVIDIA H100 80GB HBM3",
    )
    assert one["source_ts"].timestamp() == READ_AT
    assert dict(one["labels"])["pci_bus_id"] == "00000000:18:00.0"


def test_a_field_nvml_refuses_is_a_reject_with_a_reason_and_the_rest_is_kept() -> None:
    refused = reading(
        enc_util=None,
        dec_util=None,
        errors={
            "enc_util": "NVMLError_NotSupported: Not Supported",
            "dec_util": "NVMLError_NotSupported: Not Supported",
        },
    )
    result = rows_from_readings([refused], "gpu-node-3", READ_AT, "nvml:gpu-node-3")
    assert result.samples.num_rows == 8
    assert "DCGM_FI_DEV_ENC_UTIL" not in result.samples.column("metric").to_pylist()
    assert result.rejects is not None
    rejects = result.rejects.to_pylist()
    assert [r["reason"] for r in rejects] == [
        "DCGM_FI_DEV_ENC_UTIL of GPU GPU-1111 (index 0) cannot be read through NVML: "
        "NVMLError_NotSupported: Not Supported",
        "DCGM_FI_DEV_DEC_UTIL of GPU GPU-1111 (index 0) cannot be read through NVML: "
        "NVMLError_NotSupported: Not Supported",
    ]
    assert {r["source"] for r in rejects} == {"nvml:gpu-node-3"}
    assert rejects[0]["raw"] == "nvml:gpu-node-3:gpu0:DCGM_FI_DEV_ENC_UTIL"


def test_every_dcgm_field_has_a_reading() -> None:
    assert list(FIELD_READINGS) == list(DCGM_FIELDS)
    fields = set(GpuReading.__dataclass_fields__)
    assert set(FIELD_READINGS.values()) <= fields


@pytest.mark.skipif(NVML, reason="NVML works here; the no-driver message cannot be seen")
def test_without_a_driver_open_is_one_clear_error() -> None:
    source = NvmlSource(hostname="cpu-node-1")
    assert isinstance(source, Source)
    with pytest.raises(SourceError, match=r"NVML cannot start on cpu-node-1: .*no NVIDIA driver or GPU"):
        source.open()


@pytest.mark.skipif(not NVML, reason="no NVIDIA GPU/driver here (pynvml.nvmlInit() fails)")
def test_a_real_read_of_the_local_gpus() -> None:
    source = NvmlSource()
    source.open()
    try:
        batches = [list(source.read_pass(Shard())) for _ in range(2)]
        gpus = source.gpus
    finally:
        source.close()
    assert gpus and all(g.uuid.startswith(("GPU-", "MIG-")) for g in gpus)
    for passes in batches:
        samples = pa.Table.from_batches([b.samples for b in passes], schema=SAMPLE_SCHEMA)
        rejected = sum(0 if b.rejects is None else b.rejects.num_rows for b in passes)
        assert samples.num_rows + rejected == 10 * len(gpus)  # every field read or rejected with a reason
        assert set(samples.column("uuid").to_pylist()) == {g.uuid for g in gpus}
        temps = [r["value"] for r in samples.to_pylist() if r["metric"] == "DCGM_FI_DEV_GPU_TEMP"]
        assert temps and all(0 < t < 120 for t in temps)
        fb = {r["metric"]: r["value"] for r in samples.to_pylist() if r["uuid"] == gpus[0].uuid}
        assert fb["DCGM_FI_DEV_FB_USED"] + fb["DCGM_FI_DEV_FB_FREE"] > 1000  # MiB, not bytes
