"""Live source: scrapes dcgm-exporter ``/metrics`` endpoints (Prometheus text format).

One pass is one scrape round of this shard's targets, fetched concurrently; the streamer's
``interval_s`` paces the rounds, so the source itself never waits between them. Every sample's
``source_ts`` is the time its target's scrape started. A target that is down (refused, timed out,
HTTP error) yields nothing for that round, is retried with exponential backoff within the round's
budget, and is reported through ``health()`` and one log line per change of state; the other
targets carry on. Bad *data* becomes rejects, with the same checks and reasons as the CSV path.

Labels map onto the sample schema as dcgm-exporter writes them: ``Hostname`` (older) or
``hostname``, ``UUID`` or ``uuid``, ``gpu``, ``device``, ``modelName``; every label (``pci_bus_id``,
``GPU_I_PROFILE``, ``GPU_I_ID``, ``pod``, ``namespace``, ``container``, ...) is kept in ``labels``,
and the workload and static facts are read from them (``pipeline.sources.attribution``). A MIG
instance is a GPU of its own: its identity is ``<parent UUID>/mig-<GPU_I_ID>``.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from pipeline.records import empty_samples, make_rejects
from pipeline.sources.base import Shard, SourceBatch
from pipeline.sources.targets import TargetList, assign_targets
from pipeline.sources.validate import RAW_COLUMNS, ValidatedBatch, validate

__all__ = ["PrometheusSource", "TargetHealth", "parse_exposition"]

log = logging.getLogger(__name__)

TELEMETRY_PREFIX: Final = "DCGM_FI_"
_ACCEPT: Final = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
_PARSE_ERRORS: Final = (ValueError, IndexError)  # what prometheus-client's text parser raises


@dataclass(slots=True)
class TargetHealth:
    """How one target's scrapes are going (times are UNIX seconds)."""

    url: str
    up: bool | None = None  # None: not scraped yet
    last_attempt: float | None = None
    last_success: float | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    last_duration_s: float | None = None
    last_samples: int = 0
    last_rejects: int = 0


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One target's round: the parsed batch, or the error that ended the last try."""

    url: str
    started: float
    duration_s: float
    attempts: int
    result: ValidatedBatch | None = None
    error: str | None = None


class _ScrapeFailed(Exception):
    """A try at a target failed; ``retry`` says whether another try may help."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _name_and_value(line: str) -> tuple[str, str]:
    """The metric name and the value token of a sample line the parser accepted."""
    end = len(line)
    for i, ch in enumerate(line):
        if ch == "{" or ch.isspace():
            end = i
            break
    name = line[:end]
    rest = line[end:]
    if rest.lstrip().startswith("{"):
        rest = rest[rest.rindex("}") + 1 :]
    tokens = rest.split()
    return name, tokens[0] if tokens else ""


def _parse_lines(lines: Sequence[str]) -> tuple[list[tuple[int, Sample]], list[tuple[int, str, str]]]:
    """Parse line by line: each good sample with its line number, and each bad line with a reason."""
    parsed: list[tuple[int, Sample]] = []
    bad: list[tuple[int, str, str]] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        try:
            samples = [s for f in text_string_to_metric_families(text + "\n") for s in f.samples]
        except _PARSE_ERRORS as exc:
            kind = "comment" if text.startswith("#") else "sample"
            detail = str(exc) or "bad syntax"
            bad.append((number, line, f"line {number} is not a valid Prometheus text {kind} line: {detail}"))
            continue
        if len(samples) == 1:
            parsed.append((number, samples[0]))
    return parsed, bad


def parse_exposition(text: str, source: str, scraped_at: float, now_us: int | None = None) -> ValidatedBatch:
    """Turn one scrape's text into samples (``DCGM_FI_*`` only) and rejects, keeping every good line.

    ``source`` (the target URL) is recorded with rejects; its host names the GPUs' host when no
    ``Hostname``/``hostname`` label does. Reject ``line`` numbers count lines of ``text`` from 1.
    """
    lines = text.split("\n")
    bad: list[tuple[int, str, str]] = []
    try:
        parsed_all = [s for f in text_string_to_metric_families(text) for s in f.samples]
        numbers = [i for i, line in enumerate(lines, 1) if (s := line.strip()) and not s.startswith("#")]
        if len(numbers) != len(parsed_all):  # the parser skipped or merged a line: let each line speak
            raise ValueError("sample count differs from line count")
        parsed = list(zip(numbers, parsed_all, strict=True))
    except _PARSE_ERRORS:
        parsed, bad = _parse_lines(lines)

    fallback_host = urlsplit(source).hostname or ""
    instance = urlsplit(source).netloc
    stamp = _rfc3339(scraped_at)
    columns: dict[str, list[str]] = {name: [] for name in RAW_COLUMNS}
    records: list[int] = []
    for number, sample in parsed:
        name, value = _name_and_value(lines[number - 1].strip())
        if not name.startswith(TELEMETRY_PREFIX):
            continue
        labels = sample.labels
        uuid = labels.get("UUID") or labels.get("uuid") or ""  # a MIG device's name is made in validate()
        raw_labels = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        if "instance" not in labels:
            raw_labels += ("," if raw_labels else "") + f'instance="{instance}"'
        columns["timestamp"].append(stamp)
        columns["metric"].append(name)
        columns["gpu_index"].append(labels.get("gpu", ""))
        columns["device"].append(labels.get("device", ""))
        columns["uuid"].append(uuid)
        columns["model"].append(labels.get("modelName", ""))
        columns["hostname"].append(labels.get("Hostname") or labels.get("hostname") or fallback_host)
        columns["value"].append(value)
        columns["labels_raw"].append(raw_labels)
        records.append(number)

    now = time.time_ns() // 1000 if now_us is None else now_us
    raw = pa.RecordBatch.from_pydict({k: pa.array(v, pa.string()) for k, v in columns.items()})
    result = validate(raw, np.array(records, dtype=np.int64), source, now)
    value_rejects = result.rejects
    if value_rejects is not None:  # keep the exposition line itself as the raw text, not a CSV rendering
        raw_lines = pa.array([lines[n - 1] for n in value_rejects.column("line").to_pylist()], pa.string())
        index = value_rejects.schema.get_field_index("raw")
        value_rejects = value_rejects.set_column(index, value_rejects.schema.field(index), raw_lines)
    if not bad:
        return ValidatedBatch(result.samples, value_rejects)
    line_rejects = make_rejects(now, source, [b[0] for b in bad], [b[1] for b in bad], [b[2] for b in bad])
    parts = [line_rejects] if value_rejects is None else [line_rejects, value_rejects]
    merged = pa.Table.from_batches(parts).combine_chunks().sort_by("line").to_batches()[0]
    return ValidatedBatch(result.samples, merged)


class PrometheusSource:
    """Scrapes dcgm-exporter endpoints; one ``read_pass`` is one concurrent round over the shard's targets.

    ``interval_s`` is the streamer's pace: the retries of one round stop once ``max(interval_s,
    timeout_s)`` has passed since it began, so a round never runs much past the next one's start.
    """

    def __init__(
        self,
        targets: Sequence[str] = (),
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        retries: int = 2,
        backoff_s: float = 0.1,
        targets_file: str | Path | None = None,
        max_workers: int = 16,
        max_bytes: int = 32 << 20,
        dns_ttl_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or max_workers < 1:
            raise ValueError("timeout_s must be > 0, retries and backoff_s >= 0, max_workers >= 1")
        self._targets = TargetList(targets, targets_file, dns_ttl_s)
        self._budget_s = max(interval_s, timeout_s)
        self._timeout_s = timeout_s
        self._retries = retries
        self._backoff_s = backoff_s
        self._max_workers = max_workers
        self._max_bytes = max_bytes
        self._clock = clock
        self._pool: ThreadPoolExecutor | None = None
        # Exporters are reached directly, as Prometheus does: no proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._health: dict[str, TargetHealth] = {}

    @property
    def replayable(self) -> bool:
        """A live scrape: never the same twice."""
        return False

    @property
    def name(self) -> str:
        """The targets as configured (rejects name the exact target URL instead)."""
        configured = self._targets.configured
        if not configured:
            return "scrape:(no targets)"
        more = f" (+{len(configured) - 1} more)" if len(configured) > 1 else ""
        return f"scrape:{configured[0]}{more}"

    def open(self) -> None:
        """Check there are targets (and the target file reads); contacts no target."""
        self._targets.load()
        self._closing.clear()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="scrape")

    def close(self) -> None:
        """Abandon retries in flight and stop the scrape threads."""
        self._closing.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def health(self) -> dict[str, dict[str, Any]]:
        """Per-target health of this shard's targets, keyed by URL."""
        with self._lock:
            return {url: asdict(h) for url, h in self._health.items()}

    def read_pass(self, shard: Shard, start: int = 0) -> Iterator[SourceBatch]:
        """Scrape this shard's targets once; one batch per target that answered (positions count targets).

        ``start`` is ignored: a live scrape cannot be replayed, so a resumed pass scrapes anew.
        """
        if self._pool is None:
            self.open()
        assert self._pool is not None
        targets = assign_targets(self._targets.current(), shard)
        with self._lock:
            self._health = {url: self._health.get(url) or TargetHealth(url) for url in targets}
        deadline = time.monotonic() + self._budget_s
        futures: list[Future[_Outcome]] = [self._pool.submit(self._scrape, url, deadline) for url in targets]
        for position, future in enumerate(futures, 1):
            outcome = future.result()
            self._record(outcome)
            result = outcome.result
            if result is None or (result.samples.num_rows == 0 and result.rejects is None):
                continue
            samples = result.samples if result.samples.num_rows else empty_samples()
            yield SourceBatch(samples, result.rejects, position)

    def _scrape(self, url: str, deadline: float) -> _Outcome:
        """Fetch and parse one target, retrying with backoff until it answers or the budget is spent."""
        started = self._clock()
        t0 = time.monotonic()
        attempts = 0
        error = "not tried: no time left in this round"
        while not self._closing.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0.01:
                break
            attempts += 1
            try:
                scraped_at = self._clock()
                text = self._fetch(url, min(self._timeout_s, remaining))
            except _ScrapeFailed as exc:
                error = str(exc)
                pause = self._backoff_s * (2 ** (attempts - 1))
                if not exc.retry or attempts > self._retries or time.monotonic() + pause >= deadline:
                    break
                if self._closing.wait(pause):
                    break
                continue
            try:
                result = parse_exposition(text, url, scraped_at)
            except Exception as exc:  # a parser bug must not stop the other targets; reported as health
                log.exception("parsing the scrape of %s failed", url)
                error = f"cannot parse the response: {type(exc).__name__}: {exc}"
                break
            return _Outcome(url, scraped_at, time.monotonic() - t0, attempts, result=result)
        return _Outcome(url, started, time.monotonic() - t0, attempts, error=error)

    def _fetch(self, url: str, timeout: float) -> str:
        """One GET; the body as text, or ``_ScrapeFailed`` naming what went wrong."""
        request = urllib.request.Request(
            url, headers={"Accept": _ACCEPT, "Accept-Encoding": "gzip", "User-Agent": "gpu-telemetry-pipeline"}
        )
        try:
            with self._opener.open(request, timeout=timeout) as response:
                body: bytes = response.read(self._max_bytes + 1)
                encoding = response.headers.get("Content-Encoding", "")
                charset: str = response.headers.get_content_charset() or "utf-8"
        except urllib.error.HTTPError as exc:
            retry = exc.code >= 500 or exc.code == 429
            raise _ScrapeFailed(f"HTTP {exc.code} {exc.reason}", retry=retry) from None
        except urllib.error.URLError as exc:
            raise _ScrapeFailed(f"cannot connect: {exc.reason}") from None
        except TimeoutError:
            raise _ScrapeFailed(f"timed out after {timeout:.2f} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise _ScrapeFailed(f"{type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # a URL that urllib refuses (http.client.InvalidURL, ...): retrying cannot help
            raise _ScrapeFailed(f"bad URL: {exc}", retry=False) from None
        if len(body) > self._max_bytes:
            raise _ScrapeFailed(f"response larger than {self._max_bytes} bytes", retry=False)
        if encoding.strip().lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError, zlib.error) as exc:
                raise _ScrapeFailed(f"bad gzip body: {exc}") from None
        try:
            return body.decode(charset, errors="replace")
        except LookupError:
            return body.decode("utf-8", errors="replace")

    def _record(self, outcome: _Outcome) -> None:
        """Update the target's health; log only when it goes down or comes back."""
        with self._lock:
            h = self._health.setdefault(outcome.url, TargetHealth(outcome.url))
            was_up, failed_rounds = h.up, h.consecutive_failures
            h.last_attempt = outcome.started
            h.last_duration_s = outcome.duration_s
            if outcome.result is not None:
                h.up = True
                h.last_success = outcome.started
                h.consecutive_failures = 0
                h.last_samples = outcome.result.samples.num_rows
                h.last_rejects = 0 if outcome.result.rejects is None else outcome.result.rejects.num_rows
            else:
                h.up = False
                h.consecutive_failures += 1
                h.last_error = outcome.error
                h.last_samples = h.last_rejects = 0
        if outcome.result is None and was_up is not False:
            log.warning(
                "scrape target %s is down (%s after %d tries); retrying every round",
                outcome.url,
                outcome.error,
                outcome.attempts,
            )
        elif outcome.result is not None and was_up is False:
            log.info("scrape target %s is back up after %d failed round(s)", outcome.url, failed_rounds)
