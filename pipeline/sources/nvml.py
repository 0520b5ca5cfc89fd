"""Live source: reads this node's GPUs through NVML (nvidia-ml-py) for the ten DCGM fields.

For GPU nodes without dcgm-exporter. One pass reads every local GPU once (the streamer's
``interval_s`` paces the passes); ``source_ts`` is the read time. Reading is split in two: ``read_gpu``
calls NVML and keeps raw readings (NVML units, a field that NVML refuses kept as its error), and
``rows_from_readings`` turns readings into samples and rejects without touching NVML. Physical GPUs
only: a GPU in MIG mode reports its whole-GPU fields, and NVML refuses some of them (rejects).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import pyarrow as pa

from pipeline.errors import SourceError
from pipeline.queue.keys import KeyHasher
from pipeline.records import make_rejects
from pipeline.sources.base import Shard, SourceBatch
from pipeline.sources.validate import RAW_COLUMNS, ValidatedBatch, validate

__all__ = ["FIELD_READINGS", "GpuReading", "NvmlSource", "read_gpu", "rows_from_readings"]

log = logging.getLogger(__name__)

_MIB: Final = 1 << 20

# DCGM field -> the GpuReading attribute it comes from.
FIELD_READINGS: Final[dict[str, str]] = {
    "DCGM_FI_DEV_GPU_UTIL": "gpu_util",
    "DCGM_FI_DEV_MEM_COPY_UTIL": "mem_util",
    "DCGM_FI_DEV_ENC_UTIL": "enc_util",
    "DCGM_FI_DEV_DEC_UTIL": "dec_util",
    "DCGM_FI_DEV_GPU_TEMP": "temperature_c",
    "DCGM_FI_DEV_POWER_USAGE": "power_mw",
    "DCGM_FI_DEV_FB_USED": "fb_used_bytes",
    "DCGM_FI_DEV_FB_FREE": "fb_free_bytes",
    "DCGM_FI_DEV_SM_CLOCK": "sm_clock_mhz",
    "DCGM_FI_DEV_MEM_CLOCK": "mem_clock_mhz",
}

# NVML units -> DCGM units (dcgm-exporter reports power in W and framebuffer in MiB).
_CONVERT: Final[dict[str, Callable[[int], float]]] = {
    "power_mw": lambda mw: mw / 1000.0,
    "fb_used_bytes": lambda b: float(b // _MIB),
    "fb_free_bytes": lambda b: float(b // _MIB),
}


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU's identity and raw NVML readings; a field NVML refused is None, its error in ``errors``."""

    index: int
    uuid: str
    model: str = ""
    minor: int | None = None
    pci_bus_id: str = ""
    gpu_util: int | None = None  # %
    mem_util: int | None = None  # %
    enc_util: int | None = None  # %
    dec_util: int | None = None  # %
    temperature_c: int | None = None
    power_mw: int | None = None
    fb_used_bytes: int | None = None
    fb_free_bytes: int | None = None
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    errors: Mapping[str, str] = field(default_factory=dict)  # GpuReading attribute -> NVML error text


def _value_text(attribute: str, raw: int) -> str:
    convert = _CONVERT.get(attribute)
    return repr(convert(raw)) if convert is not None else str(int(raw))


def rows_from_readings(
    readings: Sequence[GpuReading], hostname: str, read_at: float, source: str, now_us: int | None = None
) -> ValidatedBatch:
    """Samples (one per GPU x field read) and rejects (one per field NVML refused), as DCGM reports them."""
    stamp = datetime.fromtimestamp(read_at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    columns: dict[str, list[str]] = {name: [] for name in RAW_COLUMNS}
    refused: list[tuple[str, str]] = []
    for r in readings:
        device = f"nvidia{r.minor}" if r.minor is not None else ""
        labels = f'gpu="{r.index}",UUID="{r.uuid}",device="{device}",modelName="{r.model}",Hostname="{hostname}"'
        if r.pci_bus_id:
            labels += f',pci_bus_id="{r.pci_bus_id}"'
        for metric, attribute in FIELD_READINGS.items():
            raw = getattr(r, attribute)
            if raw is None:
                error = r.errors.get(attribute, "no reading")
                refused.append(
                    (
                        f"nvml:{hostname}:gpu{r.index}:{metric}",
                        f"{metric} of GPU {r.uuid} (index {r.index}) cannot be read through NVML: {error}",
                    )
                )
                continue
            columns["timestamp"].append(stamp)
            columns["metric"].append(metric)
            columns["gpu_index"].append(str(r.index))
            columns["device"].append(device)
            columns["uuid"].append(r.uuid)
            columns["model"].append(r.model)
            columns["hostname"].append(hostname)
            columns["value"].append(_value_text(attribute, raw))
            columns["labels_raw"].append(labels)
    now = time.time_ns() // 1000 if now_us is None else now_us
    raw_rows = pa.RecordBatch.from_pydict({k: pa.array(v, pa.string()) for k, v in columns.items()})
    records = np.arange(1, raw_rows.num_rows + 1, dtype=np.int64)  # a row's place within this read
    result = validate(raw_rows, records, source, now)
    if not refused:
        return result
    nvml_rejects = make_rejects(now, source, [None] * len(refused), [r for r, _ in refused], [m for _, m in refused])
    parts = [nvml_rejects] if result.rejects is None else [result.rejects, nvml_rejects]
    return ValidatedBatch(result.samples, pa.Table.from_batches(parts).combine_chunks().to_batches()[0])


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_gpu(nvml: Any, handle: Any, index: int, identity: GpuReading | None = None) -> GpuReading:
    """Read one GPU's ten fields through NVML (``nvml`` is the pynvml module); per-field errors are kept."""
    errors: dict[str, str] = {}

    def attempt(attribute: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except nvml.NVMLError as exc:
            errors[attribute] = f"{type(exc).__name__}: {exc}"
            return None

    if identity is None:
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        model = attempt("model", lambda: _text(nvml.nvmlDeviceGetName(handle))) or ""
        minor = attempt("minor", lambda: int(nvml.nvmlDeviceGetMinorNumber(handle)))
        pci = attempt("pci_bus_id", lambda: _text(nvml.nvmlDeviceGetPciInfo(handle).busId)) or ""
        identity = GpuReading(index, uuid, model, minor, pci)
        errors.clear()
    util = attempt("gpu_util", lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    if util is None:
        errors["mem_util"] = errors["gpu_util"]
    memory = attempt("fb_used_bytes", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    if memory is None:
        errors["fb_free_bytes"] = errors["fb_used_bytes"]
    enc = attempt("enc_util", lambda: nvml.nvmlDeviceGetEncoderUtilization(handle))
    dec = attempt("dec_util", lambda: nvml.nvmlDeviceGetDecoderUtilization(handle))
    return GpuReading(
        index=identity.index,
        uuid=identity.uuid,
        model=identity.model,
        minor=identity.minor,
        pci_bus_id=identity.pci_bus_id,
        gpu_util=None if util is None else int(util.gpu),
        mem_util=None if util is None else int(util.memory),
        enc_util=None if enc is None else int(enc[0]),
        dec_util=None if dec is None else int(dec[0]),
        temperature_c=attempt(
            "temperature_c", lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
        ),
        power_mw=attempt("power_mw", lambda: int(nvml.nvmlDeviceGetPowerUsage(handle))),
        fb_used_bytes=None if memory is None else int(memory.used),
        fb_free_bytes=None if memory is None else int(memory.free),
        sm_clock_mhz=attempt("sm_clock_mhz", lambda: int(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))),
        mem_clock_mhz=attempt("mem_clock_mhz", lambda: int(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM))),
        errors=errors,
    )


class NvmlSource:
    """This node's GPUs through NVML; one ``read_pass`` reads each of the shard's GPUs once."""

    def __init__(self, hostname: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self._hostname = hostname or socket.gethostname()
        self._clock = clock
        self._nvml: Any = None
        self._gpus: list[tuple[Any, GpuReading]] = []
        self._hasher = KeyHasher()

    @property
    def replayable(self) -> bool:
        """A live read: never the same twice."""
        return False

    @property
    def name(self) -> str:
        """``nvml:<hostname>``, recorded with rejects."""
        return f"nvml:{self._hostname}"

    @property
    def gpus(self) -> list[GpuReading]:
        """The identities of the GPUs found by ``open``."""
        return [identity for _, identity in self._gpus]

    def open(self) -> None:
        """Start NVML and list the GPUs; ``SourceError`` with a clear message where there is no GPU or driver."""
        if self._nvml is not None:
            return
        try:
            import pynvml
        except ImportError:
            raise SourceError(
                "NVML source needs nvidia-ml-py: pip install 'gpu-telemetry-pipeline[nvml]'", host=self._hostname
            ) from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise SourceError(
                f"NVML cannot start on {self._hostname}: {exc} (no NVIDIA driver or GPU on this node?); "
                "run the NVML source on GPU nodes, or scrape dcgm-exporter with --scrape",
                host=self._hostname,
            ) from None
        try:
            count = int(pynvml.nvmlDeviceGetCount())
            if count == 0:
                raise SourceError(f"NVML found no GPU on {self._hostname}", host=self._hostname)
            gpus = []
            for index in range(count):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                gpus.append((handle, read_gpu(pynvml, handle, index)))
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise SourceError(f"NVML cannot list the GPUs on {self._hostname}: {exc}", host=self._hostname) from None
        except SourceError:
            pynvml.nvmlShutdown()
            raise
        self._nvml = pynvml
        self._gpus = [(handle, _identity(reading)) for handle, reading in gpus]
        log.info("NVML on %s: %d GPU(s)", self._hostname, len(self._gpus))

    def close(self) -> None:
        """Shut NVML down."""
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as exc:
                log.warning("NVML shutdown failed: %s", exc)
            self._nvml = None
            self._gpus = []

    def read_pass(self, shard: Shard, start: int = 0) -> Iterator[SourceBatch]:
        """Read the shard's GPUs once (``start`` is ignored: a live read cannot be replayed)."""
        if self._nvml is None:
            self.open()
        mine = [(h, g) for h, g in self._gpus if self._hasher.shard_of(g.uuid, shard.count) == shard.index]
        if not mine:
            return
        read_at = self._clock()
        readings = [read_gpu(self._nvml, handle, g.index, g) for handle, g in mine]
        result = rows_from_readings(readings, self._hostname, read_at, self.name)
        yield SourceBatch(result.samples, result.rejects, 1)


def _identity(reading: GpuReading) -> GpuReading:
    return GpuReading(reading.index, reading.uuid, reading.model, reading.minor, reading.pci_bus_id)
