"""Scraping dcgm-exporter endpoints: targets, the exposition parser, and the source over a local HTTP server."""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import ConfigError, SourceError
from pipeline.records import DCGM_FIELDS, REJECT_SCHEMA, SAMPLE_SCHEMA
from pipeline.sources import Shard, Source
from pipeline.sources.prometheus import PrometheusSource, parse_exposition
from pipeline.sources.synthetic import FLEET_MODEL, SyntheticFleet
from pipeline.sources.targets import (
    TargetList,
    assign_targets,
    normalize_target,
    parse_targets,
    read_targets_file,
    resolve_addresses,
)

SENTINEL = "9223372036854775794"  # DCGM int64 blank + 2: "not supported"
MALFORMED = 'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-broken" 41'
_HELP = {
    "DCGM_FI_DEV_GPU_UTIL": "GPU utilization (in %).",
    "DCGM_FI_DEV_MEM_COPY_UTIL": "Memory utilization (in %).",
    "DCGM_FI_DEV_ENC_UTIL": "Encoder utilization (in %).",
    "DCGM_FI_DEV_DEC_UTIL": "Decoder utilization (in %).",
    "DCGM_FI_DEV_GPU_TEMP": "GPU temperature (in C).",
    "DCGM_FI_DEV_POWER_USAGE": "Power draw (in W).",
    "DCGM_FI_DEV_FB_USED": "Framebuffer memory used (in MiB).",
    "DCGM_FI_DEV_FB_FREE": "Framebuffer memory free (in MiB).",
    "DCGM_FI_DEV_SM_CLOCK": "SM clock frequency (in MHz).",
    "DCGM_FI_DEV_MEM_CLOCK": "Memory clock frequency (in MHz).",
}


# --- a dcgm-exporter simulation -----------------------------------------------------------------


def render_dcgm_scrape(
    fleet: SyntheticFleet,
    host: int,
    *,
    new_spelling: bool = False,
    pods: dict[int, tuple[str, str, str]] | None = None,
    mig_gpu: int | None = None,
    sentinel: tuple[int, str] | None = None,
    malformed: bool = False,
    xid: dict[int, int] | None = None,
    silent: frozenset[int] = frozenset(),
    old_pod_labels: bool = False,
) -> str:
    """One scrape of a fleet host in dcgm-exporter's text format (HELP/TYPE, one family per field).

    ``new_spelling`` writes ``hostname``/``uuid`` instead of ``Hostname``/``UUID``; ``pods`` maps a
    local GPU index to (pod, namespace, container) (``old_pod_labels``: as ``pod_name``/``pod_namespace``/
    ``container_name``, dcgm-exporter's ``--use-old-namespace``); ``mig_gpu`` is split into MIG instances
    1 and 2; ``sentinel`` puts DCGM's "not supported" value on (local GPU index, field); ``xid`` adds
    ``DCGM_FI_DEV_XID_ERRORS`` (the given code per local index, 0 for the others); ``silent`` GPUs are
    left out (they stopped reporting).
    """
    per_host = fleet.gpus_per_host
    gpus = np.arange(host * per_host, (host + 1) * per_host, dtype=np.int64)
    values = fleet.values(gpus)
    if xid is not None:
        values = np.column_stack([values, [float(xid.get(i, 0)) for i in range(per_host)]])
    fields = list(DCGM_FIELDS) + (["DCGM_FI_DEV_XID_ERRORS"] if xid is not None else [])
    host_key, uuid_key = ("hostname", "uuid") if new_spelling else ("Hostname", "UUID")
    pod_keys = ("pod_name", "pod_namespace", "container_name") if old_pod_labels else ("pod", "namespace", "container")
    out = ["# HELP go_goroutines Number of goroutines that currently exist.", "# TYPE go_goroutines gauge"]
    out.append("go_goroutines 14")
    for m, metric in enumerate(fields):
        out += [f"# HELP {metric} {_HELP.get(metric, 'XID errors')}", f"# TYPE {metric} gauge"]
        for local, g in enumerate(gpus.tolist()):
            if local in silent:
                continue
            v = values[local, m]
            text = f"{v:.3f}" if metric == "DCGM_FI_DEV_POWER_USAGE" else str(int(v))
            if sentinel == (local, metric):
                text = SENTINEL
            base = (
                f'gpu="{local}",{uuid_key}="{fleet.uuids[g]}",pci_bus_id="00000000:{local + 0x18:02X}:00.0",'
                f'device="nvidia{local}",modelName="{FLEET_MODEL}"'
            )
            tail = f'{host_key}="{fleet.hostnames[g]}",DCGM_FI_DRIVER_VERSION="535.129.03"'
            if pods and local in pods:
                pod, namespace, container = pods[local]
                tail += f',{pod_keys[2]}="{container}",{pod_keys[1]}="{namespace}",{pod_keys[0]}="{pod}"'
            if mig_gpu == local:
                for instance in (1, 2):
                    out.append(f'{metric}{{{base},GPU_I_PROFILE="3g.40gb",GPU_I_ID="{instance}",{tail}}} {text}')
            else:
                out.append(f"{metric}{{{base},{tail}}} {text}")
        if malformed and metric == "DCGM_FI_DEV_GPU_TEMP":
            out.append(MALFORMED)
    out += ["# HELP process_cpu_seconds_total CPU time.", "# TYPE process_cpu_seconds_total counter"]
    out.append("process_cpu_seconds_total 3.5")
    return "\n".join(out) + "\n"


@dataclass
class Reply:
    """What a fake endpoint answers."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class FakeExporter:
    """A local HTTP server answering GETs per path from ``routes`` (path -> callable returning a Reply)."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[], Reply]] = {}
        self.hits: Counter[str] = Counter()
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                exporter.hits[self.path] += 1
                route = exporter.routes.get(self.path)
                reply = route() if route else Reply(404, b"not found\n")
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                self.send_response(reply.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(reply.body)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        """The full URL of ``path`` on this server."""
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def serve_text(self, path: str, render: Callable[[], str]) -> str:
        """Serve freshly rendered text at ``path``; returns its URL."""
        self.routes[path] = lambda: Reply(body=render().encode())
        return self.url(path)

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """A URL on a local port nothing listens on (a dead target)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/metrics"


@dataclass
class Fleet:
    """Two live dcgm-exporter targets of a synthetic fleet and what they should yield."""

    targets: list[str]
    series: set[tuple[str, str]]  # (uuid, metric) stored every scrape
    sentinel: tuple[str, str]  # the (uuid, metric) that is always a DCGM blank
    uuids: set[str]


def serve_fleet(exporter: FakeExporter) -> Fleet:
    """Host 0 (older label spelling, pod labels, a sentinel, a malformed line) and host 1 (newer spelling, MIG)."""
    fleet = SyntheticFleet(hosts=2, gpus_per_host=4, seed=11)
    a = exporter.serve_text(
        "/a/metrics",
        lambda: render_dcgm_scrape(
            fleet,
            0,
            pods={0: ("train-0", "ml", "trainer"), 1: ("infer-7", "serving", "server")},
            sentinel=(2, "DCGM_FI_DEV_ENC_UTIL"),
            malformed=True,
        ),
    )
    b = exporter.serve_text("/b/metrics", lambda: render_dcgm_scrape(fleet, 1, new_spelling=True, mig_gpu=3))
    uuids = set(fleet.uuids[:7]) | {f"{fleet.uuids[7]}/mig-1", f"{fleet.uuids[7]}/mig-2"}
    sentinel = (fleet.uuids[2], "DCGM_FI_DEV_ENC_UTIL")
    series = {(u, m) for u in uuids for m in DCGM_FIELDS} - {sentinel}
    return Fleet([a, b], series, sentinel, uuids)


@pytest.fixture
def exporter() -> Iterator[FakeExporter]:
    server = FakeExporter()
    yield server
    server.close()


def read_round(source: Source, shard: Shard = Shard()) -> tuple[pa.Table, pa.Table]:
    samples, rejects = [], []
    for batch in source.read_pass(shard):
        samples.append(batch.samples)
        if batch.rejects is not None:
            rejects.append(batch.rejects)
    return pa.Table.from_batches(samples, schema=SAMPLE_SCHEMA), pa.Table.from_batches(rejects, schema=REJECT_SCHEMA)


def series_of(table: pa.Table) -> Counter[tuple[str, str]]:
    return Counter(zip(table.column("uuid").to_pylist(), table.column("metric").to_pylist(), strict=True))


# --- targets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("gpu-node-7", "http://gpu-node-7:9400/metrics"),
        ("10.0.0.5:9500", "http://10.0.0.5:9500/metrics"),
        ("gpu-node-7/custom", "http://gpu-node-7:9400/custom"),
        ("http://gpu-node-7/metrics", "http://gpu-node-7/metrics"),
        ("HTTPS://exp.example:8443", "https://exp.example:8443/metrics"),
        ("[fd00::1]:9400", "http://[fd00::1]:9400/metrics"),
        ("dns+http://dcgm.gpu-operator.svc:9400/metrics", "dns+http://dcgm.gpu-operator.svc:9400/metrics"),
    ],
)
def test_targets_are_normalized_to_urls_with_dcgm_exporter_defaults(text: str, url: str) -> None:
    assert normalize_target(text) == url


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://node/metrics", "scheme `ftp` is not one of"),
        ("http://:9400/metrics", "has no host"),
        ("node:notaport", "invalid port"),
        ("gpu node-1", "contains whitespace"),
    ],
)
def test_a_bad_target_is_a_config_error_naming_it(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        normalize_target(text)
    assert text in str(info.value)


def test_target_lists_accept_commas_lines_comments_and_drop_repeats(tmp_path: Path) -> None:
    assert parse_targets("a, b:9500\n# whole-line comment\nc # trailing\n\na") == [
        "http://a:9400/metrics",
        "http://b:9500/metrics",
        "http://c:9400/metrics",
    ]
    path = tmp_path / "targets.txt"
    path.write_text("a\n\nftp://bad\n")
    with pytest.raises(ConfigError, match=r"targets.txt, line 3: scrape target `ftp://bad`"):
        read_targets_file(path)
    with pytest.raises(SourceError, match="cannot be read"):
        read_targets_file(tmp_path / "absent.txt")


@given(
    st.lists(st.integers(min_value=0, max_value=10**6), unique=True, max_size=40).map(
        lambda ids: [f"http://gpu-node-{i}:9400/metrics" for i in ids]
    ),
    st.integers(min_value=1, max_value=9),
)
def test_each_target_is_scraped_by_exactly_one_streamer(targets: list[str], count: int) -> None:
    shares = [assign_targets(targets, Shard(i, count)) for i in range(count)]
    assert sorted(t for share in shares for t in share) == sorted(targets)
    # The split depends on the target and the count only: every streamer computes the same one.
    assert shares == [assign_targets(list(reversed(targets)), Shard(i, count))[::-1] for i in range(count)]


def test_the_target_file_is_re_read_when_it_changes_and_a_broken_one_keeps_the_last_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "targets.txt"
    path.write_text("a\n")
    targets = TargetList(["fixed"], path)
    targets.load()
    assert targets.current() == ["http://fixed:9400/metrics", "http://a:9400/metrics"]
    path.write_text("a\nb\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert targets.current()[-1] == "http://b:9400/metrics"
    path.write_text("ftp://broken\n")
    os.utime(path, (time.time() + 10, time.time() + 10))
    with caplog.at_level(logging.WARNING):
        assert (
            targets.current()
            == targets.current()
            == [
                "http://fixed:9400/metrics",
                "http://a:9400/metrics",
                "http://b:9400/metrics",
            ]
        )
    assert len([r for r in caplog.records if "keeping the previous scrape targets" in r.message]) == 1


def test_no_targets_at_all_fails_at_open(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no scrape targets given"):
        PrometheusSource([]).open()
    empty = tmp_path / "targets.txt"
    empty.write_text("# nothing yet\n")
    with pytest.raises(SourceError, match="lists none"):
        PrometheusSource(targets_file=empty).open()


def test_dns_targets_expand_to_one_url_per_address_and_survive_a_failed_lookup() -> None:
    answers: list[list[str] | OSError] = [["10.0.0.2", "10.0.0.1", "fd00::3"], OSError("no such host")]
    now = [0.0]

    def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("dcgm.gpu-operator.svc", 9400)
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    targets = TargetList(["dns+http://dcgm.gpu-operator.svc:9400/metrics"], resolver=resolver, clock=lambda: now[0])
    expected = ["http://10.0.0.2:9400/metrics", "http://10.0.0.1:9400/metrics", "http://[fd00::3]:9400/metrics"]
    assert targets.current() == expected
    now[0] = 10.0  # within the TTL: no lookup
    assert targets.current() == expected
    now[0] = 100.0  # the lookup fails: the last addresses stay
    assert targets.current() == expected
    assert answers == []


def test_localhost_resolves_through_the_real_resolver() -> None:
    assert "127.0.0.1" in resolve_addresses("localhost", 9400)


# --- the exposition format ----------------------------------------------------------------------


def test_a_scrape_maps_both_label_spellings_mig_and_pod_labels_onto_samples() -> None:
    fleet = SyntheticFleet(hosts=2, gpus_per_host=4, seed=11)
    old = render_dcgm_scrape(fleet, 0, pods={1: ("train-0", "ml", "trainer")})
    new = render_dcgm_scrape(fleet, 1, new_spelling=True, mig_gpu=3)
    at = 1_750_000_000.25
    a = parse_exposition(old, "http://10.0.0.1:9400/metrics", at)
    b = parse_exposition(new, "http://10.0.0.2:9400/metrics", at)
    assert a.rejects is None and b.rejects is None
    assert a.samples.num_rows == 40 and b.samples.num_rows == 50  # go_*/process_* ignored
    rows = a.samples.to_pylist() + b.samples.to_pylist()
    assert {r["metric"] for r in rows} == set(DCGM_FIELDS)
    assert {r["hostname"] for r in rows} == {"gpu-node-001", "gpu-node-002"}
    assert {r["model"] for r in rows} == {FLEET_MODEL}
    assert all(r["source_ts"].timestamp() == at for r in rows)
    first = rows[0]
    assert (first["uuid"], first["gpu_index"], first["device"]) == (fleet.uuids[0], 0, "nvidia0")
    labels = dict(next(r for r in rows if r["uuid"] == fleet.uuids[1])["labels"])
    assert (labels["pod"], labels["namespace"], labels["container"]) == ("train-0", "ml", "trainer")
    assert labels["pci_bus_id"] == "00000000:19:00.0" and labels["instance"] == "10.0.0.1:9400"
    mig = [r for r in rows if r["uuid"].startswith(fleet.uuids[7])]
    assert {r["uuid"] for r in mig} == {f"{fleet.uuids[7]}/mig-1", f"{fleet.uuids[7]}/mig-2"}
    assert {dict(r["labels"])["GPU_I_PROFILE"] for r in mig} == {"3g.40gb"}
    assert {dict(r["labels"])["uuid"] for r in mig} == {fleet.uuids[7]}
    power = [r["value"] for r in rows if r["metric"] == "DCGM_FI_DEV_POWER_USAGE"]
    assert any(v != int(v) for v in power)  # decimals kept


def test_a_malformed_line_is_rejected_with_its_line_and_every_other_line_kept() -> None:
    fleet = SyntheticFleet(hosts=1, gpus_per_host=4, seed=3)
    text = render_dcgm_scrape(fleet, 0, malformed=True)
    url = "http://10.0.0.1:9400/metrics"
    result = parse_exposition(text, url, 1_750_000_000.0)
    assert result.samples.num_rows == 40
    assert result.rejects is not None
    (reject,) = result.rejects.to_pylist()
    number = text.split("\n").index(MALFORMED) + 1
    assert (reject["source"], reject["line"], reject["raw"]) == (url, number, MALFORMED)
    assert reject["reason"] == (
        f"line {number} is not a valid Prometheus text sample line: "
        'could not convert string to float: \'{gpu="0",UUID="GPU-broken"\''
    )
    clean = parse_exposition(text.replace(MALFORMED + "\n", ""), url, 1_750_000_000.0)
    assert clean.samples.column("value").equals(result.samples.column("value"))


def test_blank_codes_nan_and_missing_uuid_are_rejected_with_the_csv_reasons() -> None:
    text = (
        "# TYPE DCGM_FI_DEV_ENC_UTIL gauge\n"
        f'DCGM_FI_DEV_ENC_UTIL{{gpu="0",UUID="GPU-a",Hostname="h"}} {SENTINEL}\n'
        'DCGM_FI_DEV_ENC_UTIL{gpu="1",UUID="GPU-b",Hostname="h"} NaN\n'
        'DCGM_FI_DEV_ENC_UTIL{gpu="2",Hostname="h"} 3\n'
        'DCGM_FI_DEV_ENC_UTIL{gpu="3",UUID="GPU-d",Hostname="h"} 4\n'
    )
    result = parse_exposition(text, "http://h:9400/metrics", 1_750_000_000.0)
    assert result.samples.column("uuid").to_pylist() == ["GPU-d"]
    assert result.rejects is not None
    rejects = result.rejects.to_pylist()
    assert [r["line"] for r in rejects] == [2, 3, 4]
    assert [r["reason"] for r in rejects] == [
        f"value `{SENTINEL}` for DCGM_FI_DEV_ENC_UTIL is a DCGM int64 not supported code (no value)",
        "value `NaN` for DCGM_FI_DEV_ENC_UTIL is NaN",
        "missing GPU uuid (metric `DCGM_FI_DEV_ENC_UTIL`)",
    ]
    assert rejects[0]["raw"] == text.split("\n")[1]


def test_counters_keep_their_exported_name_and_the_target_host_names_unlabelled_gpus() -> None:
    text = (
        "# TYPE DCGM_FI_DEV_XID_ERRORS counter\n"
        'DCGM_FI_DEV_XID_ERRORS{gpu="0",UUID="GPU-a"} 7\n'
        'DCGM_FI_DEV_XID_ERRORS{gpu="1",UUID="GPU-b",err_msg="a \\"quoted\\" } brace"} 2 1750000000000\n'
    )
    result = parse_exposition(text, "http://gpu-node-9:9400/metrics", 1_750_000_000.0)
    rows = result.samples.to_pylist()
    assert [(r["metric"], r["value"], r["hostname"]) for r in rows] == [
        ("DCGM_FI_DEV_XID_ERRORS", 7.0, "gpu-node-9"),
        ("DCGM_FI_DEV_XID_ERRORS", 2.0, "gpu-node-9"),
    ]


def test_garbage_is_rejected_line_by_line_and_never_raises() -> None:
    text = "\x00\x01 not metrics\n# TYPE x\n{broken\n" + 'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a"} 40\n'
    result = parse_exposition(text, "http://h:9400/metrics", 1_750_000_000.0)
    assert result.samples.column("value").to_pylist() == [40.0]
    assert result.rejects is not None
    assert result.rejects.column("line").to_pylist() == [1, 2, 3]
    assert "comment line" in result.rejects.column("reason")[1].as_py()


# --- the source over HTTP -----------------------------------------------------------------------


def test_rounds_store_every_gpu_and_metric_while_a_dead_target_is_reported(
    exporter: FakeExporter, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = serve_fleet(exporter)
    dead = closed_port_url()
    source = PrometheusSource([*fleet.targets, dead], interval_s=0.5, timeout_s=0.5, retries=1, backoff_s=0.01)
    assert isinstance(source, Source)
    source.open()
    try:
        with caplog.at_level(logging.INFO, logger="pipeline.sources.prometheus"):
            rounds = [read_round(source) for _ in range(3)]
        health = source.health()
    finally:
        source.close()
    for samples, rejects in rounds:
        assert set(series_of(samples)) == fleet.series and set(series_of(samples).values()) == {1}
        assert sorted(rejects.column("reason").to_pylist(), key=len) == [
            f"value `{SENTINEL}` for DCGM_FI_DEV_ENC_UTIL is a DCGM int64 not supported code (no value)",
            f"line {rejects.column('line')[1].as_py()} is not a valid Prometheus text sample line: "
            'could not convert string to float: \'{gpu="0",UUID="GPU-broken"\'',
        ]
        assert set(rejects.column("source").to_pylist()) == {fleet.targets[0]}
    stamps = [samples.column("source_ts")[0].as_py() for samples, _ in rounds]
    assert stamps == sorted(set(stamps))  # every round is a new scrape time
    assert health[dead]["up"] is False and health[dead]["consecutive_failures"] == 3
    assert "cannot connect" in health[dead]["last_error"] and health[dead]["last_success"] is None
    for url in fleet.targets:
        assert health[url]["up"] is True and health[url]["consecutive_failures"] == 0
    assert health[fleet.targets[1]]["last_samples"] == 50
    down = [r for r in caplog.records if "is down" in r.message]
    assert len(down) == 1 and dead in down[0].message  # logged once, not every round
    assert exporter.hits["/a/metrics"] == 3


def test_a_target_that_comes_back_is_logged_once_and_healthy(
    exporter: FakeExporter, caplog: pytest.LogCaptureFixture
) -> None:
    body = b'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a"} 40\n'
    replies = [Reply(503), Reply(503), Reply(body=body)]
    exporter.routes["/m"] = lambda: replies.pop(0)
    source = PrometheusSource([exporter.url("/m")], interval_s=0, timeout_s=0.5, retries=0)
    with caplog.at_level(logging.INFO, logger="pipeline.sources.prometheus"):
        assert read_round(source)[0].num_rows == 0
        assert read_round(source)[0].num_rows == 0
        assert read_round(source)[0].num_rows == 1
    source.close()
    messages = [r.message for r in caplog.records]
    assert sum("is down (HTTP 503" in m for m in messages) == 1
    assert sum("is back up after 2 failed round(s)" in m for m in messages) == 1
    assert source.health()[exporter.url("/m")]["up"] is True


def test_server_errors_are_retried_with_backoff_and_client_errors_are_not(exporter: FakeExporter) -> None:
    body = b'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a"} 40\n'
    replies = [Reply(500), Reply(502), Reply(body=body)]
    exporter.routes["/flaky"] = lambda: replies.pop(0)
    missing = exporter.url("/nothing-here")
    source = PrometheusSource([exporter.url("/flaky"), missing], interval_s=2, retries=2, backoff_s=0.01)
    samples, _ = read_round(source)
    source.close()
    assert samples.column("uuid").to_pylist() == ["GPU-a"]
    assert exporter.hits["/flaky"] == 3 and exporter.hits["/nothing-here"] == 1
    health = source.health()
    assert health[missing]["last_error"] == "HTTP 404 Not Found"
    assert health[exporter.url("/flaky")]["up"] is True


def test_a_slow_target_times_out_without_holding_up_the_others(exporter: FakeExporter) -> None:
    body = b'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a"} 40\n'
    exporter.routes["/slow"] = lambda: Reply(body=body, delay_s=1.0)
    exporter.routes["/fast"] = lambda: Reply(body=body.replace(b"GPU-a", b"GPU-b"))
    source = PrometheusSource([exporter.url("/slow"), exporter.url("/fast")], interval_s=0, timeout_s=0.2, retries=3)
    t0 = time.monotonic()
    samples, _ = read_round(source)
    elapsed = time.monotonic() - t0
    source.close()
    assert samples.column("uuid").to_pylist() == ["GPU-b"]
    assert elapsed < 0.9  # the round's budget (0.2 s) bounds the retries of the slow one
    slow = source.health()[exporter.url("/slow")]
    assert slow["up"] is False and "timed out" in slow["last_error"]


def test_gzip_responses_are_decoded(exporter: FakeExporter) -> None:
    body = gzip.compress(b'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a"} 40\n')
    exporter.routes["/gz"] = lambda: Reply(body=body, headers={"Content-Encoding": "gzip"})
    source = PrometheusSource([exporter.url("/gz")], interval_s=1)
    samples, _ = read_round(source)
    source.close()
    assert samples.column("value").to_pylist() == [40.0]


def test_streamers_split_the_targets_and_a_new_count_re_splits_them(exporter: FakeExporter) -> None:
    body = b'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-a"} 40\n'
    urls = []
    for i in range(8):
        exporter.routes[f"/n{i}"] = lambda: Reply(body=body)
        urls.append(exporter.url(f"/n{i}"))
    for count in (2, 3):
        exporter.hits.clear()
        sources = [PrometheusSource(urls, interval_s=1) for _ in range(count)]
        rows = [read_round(s, Shard(i, count))[0].num_rows for i, s in enumerate(sources)]
        scraped = [set(s.health()) for s in sources]
        for s in sources:
            s.close()
        assert sum(rows) == 8 and set(exporter.hits.values()) == {1}
        assert set().union(*scraped) == set(urls) and sum(len(x) for x in scraped) == 8
        assert scraped == [set(assign_targets(urls, Shard(i, count))) for i in range(count)]
