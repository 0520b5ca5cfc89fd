"""The dcgm-exporter CSV reader, validation and the synthetic fleet."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.errors import SourceError
from pipeline.records import SAMPLE_SCHEMA
from pipeline.sources import Shard
from pipeline.sources.dcgm_csv import HEADER, DcgmCsvSource
from pipeline.sources.synthetic import SyntheticFleet, write_csv
from pipeline.sources.validate import blank_code, parse_labels

GOOD = [
    "2025-07-18T20:42:34Z",
    "DCGM_FI_DEV_GPU_TEMP",
    "3",
    "nvidia3",
    "GPU-aaaa",
    "NVIDIA H100 80GB HBM3",
    "host-1",
    "",
    "",
    "",
    "41",
    'UUID="GPU-aaaa",gpu="3",Hostname="host-1"',
]


def write(path: Path, rows: list[list[str]], header: list[str] | tuple[str, ...] = HEADER) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_all(source: DcgmCsvSource, shard: Shard = Shard(), start: int = 2) -> tuple[pa.Table, pa.Table | None]:
    source.open()
    samples, rejects = [], []
    for b in source.read_pass(shard, start):
        samples.append(b.samples)
        if b.rejects is not None:
            rejects.append(b.rejects)
    table = pa.Table.from_batches(samples, schema=SAMPLE_SCHEMA)
    return table, (pa.Table.from_batches(rejects) if rejects else None)


def with_value(value: str, **changes: str) -> list[str]:
    row = list(GOOD)
    row[10] = value
    for name, v in changes.items():
        row[HEADER.index(name)] = v
    return row


def test_real_file_is_read_completely(real_csv: Path) -> None:
    table, rejects = read_all(DcgmCsvSource(real_csv, batch_rows=500))
    assert table.num_rows == 2470
    assert rejects is None
    assert len(set(table.column("uuid").to_pylist())) == 247
    assert len(set(table.column("hostname").to_pylist())) == 31
    assert len(set(table.column("metric").to_pylist())) == 10
    first = table.slice(0, 1).to_pylist()[0]
    assert first["labels"] and dict(first["labels"])["UUID"] == first["uuid"]
    assert first["gpu_index"] == int(dict(first["labels"])["gpu"])
    power = table.filter(pa.compute.equal(table.column("metric"), "DCGM_FI_DEV_POWER_USAGE"))
    assert any(v != int(v) for v in power.column("value").to_pylist())  # decimals kept


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (
            with_value("9223372036854775794"),
            "value `9223372036854775794` for DCGM_FI_DEV_GPU_TEMP is a DCGM int64 not supported code",
        ),
        (with_value("9223372036854775792"), "DCGM int64 blank code"),
        (with_value("2147483632"), "DCGM int32 blank code"),
        (with_value("2147483635"), "DCGM int32 no permission code"),
        (with_value("140737488355329"), "DCGM fp64 not found code"),
        (with_value("<<<NULL>>>"), "value `<<<NULL>>>` for DCGM_FI_DEV_GPU_TEMP is the DCGM blank string"),
        (with_value("abc"), "value `abc` for DCGM_FI_DEV_GPU_TEMP is not a number"),
        (with_value("NaN"), "value `NaN` for DCGM_FI_DEV_GPU_TEMP is NaN"),
        (with_value("-inf"), "value `-inf` for DCGM_FI_DEV_GPU_TEMP is infinite"),
        (with_value("1e999"), "value `1e999` for DCGM_FI_DEV_GPU_TEMP is infinite"),
        (with_value(""), "missing value for DCGM_FI_DEV_GPU_TEMP"),
        (with_value("1", uuid=""), "missing GPU uuid"),
        (with_value("1", metric_name=""), "missing metric name"),
        (with_value("1", timestamp="yesterday"), "timestamp `yesterday` is not an RFC 3339 time"),
        (with_value("1", timestamp="2025-13-40T20:42:34Z"), "timestamp `2025-13-40T20:42:34Z` is not an RFC 3339"),
        (with_value("1", gpu_id="x"), "gpu index `x` is not an integer"),
    ],
)
def test_each_bad_value_is_rejected_with_a_reason(tmp_path: Path, row: list[str], reason: str) -> None:
    path = write(tmp_path / "in.csv", [GOOD, row, GOOD])
    table, rejects = read_all(DcgmCsvSource(path))
    assert table.num_rows == 2  # the good rows beside it are all kept
    assert rejects is not None and rejects.num_rows == 1
    r = rejects.to_pylist()[0]
    assert reason in r["reason"]
    assert r["line"] == 3
    assert r["source"] == str(path)
    assert r["raw"]


def test_wrong_column_count_is_rejected_with_its_raw_line(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    write(path, [GOOD])
    with path.open("a") as f:
        f.write('"2025-07-18T20:42:34Z","DCGM_FI_DEV_GPU_TEMP","3"\n')
    with path.open("a", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerow(GOOD)
    table, rejects = read_all(DcgmCsvSource(path))
    assert table.num_rows == 2
    assert rejects is not None
    r = rejects.to_pylist()[0]
    assert r["line"] == 3 and "wrong column count: expected 12 fields" in r["reason"]
    assert r["raw"] == '"2025-07-18T20:42:34Z","DCGM_FI_DEV_GPU_TEMP","3"'


def test_unknown_header_fails_with_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", [["1", "2"]], header=["time", "name"])
    with pytest.raises(SourceError, match="unknown header .*missing column\\(s\\) timestamp, metric_name"):
        DcgmCsvSource(path).open()


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        DcgmCsvSource(tmp_path / "nope.csv").open()
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SourceError, match="is empty"):
        DcgmCsvSource(tmp_path / "empty.csv").open()


def test_batches_are_cut_at_fixed_records_so_resuming_rebuilds_them(tmp_path: Path) -> None:
    path = tmp_path / "fleet.csv"
    write_csv(path, hosts=4, scrapes=2)  # 640 rows
    src = DcgmCsvSource(path, batch_rows=100, block_bytes=8 << 10, cache_bytes=0)
    src.open()
    full = list(src.read_pass(Shard()))
    assert [b.position for b in full][:3] == [102, 202, 302]
    resumed = list(src.read_pass(Shard(), start=302))
    assert [b.position for b in resumed] == [b.position for b in full[3:]]
    for a, b in zip(resumed, full[3:], strict=True):
        assert a.samples.column("uuid").equals(b.samples.column("uuid"))
        assert a.samples.column("value").equals(b.samples.column("value"))


def test_small_blocks_stream_the_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.csv"
    write_csv(path, hosts=8, scrapes=2)
    table, _ = read_all(DcgmCsvSource(path, batch_rows=10_000, block_bytes=16 << 10, cache_bytes=0))
    assert table.num_rows == 8 * 8 * 10 * 2


def test_shards_split_gpus_exactly_once(real_csv: Path) -> None:
    tables = [read_all(DcgmCsvSource(real_csv), Shard(i, 3))[0] for i in range(3)]
    uuids = [set(t.column("uuid").to_pylist()) for t in tables]
    assert sum(t.num_rows for t in tables) == 2470
    assert not (uuids[0] & uuids[1]) and not (uuids[1] & uuids[2]) and not (uuids[0] & uuids[2])


def test_replays_come_from_memory_and_match(real_csv: Path) -> None:
    src = DcgmCsvSource(real_csv)
    src.open()
    first = pa.Table.from_batches([b.samples for b in src.read_pass(Shard())])
    second = pa.Table.from_batches([b.samples for b in src.read_pass(Shard())])
    assert first.equals(second)


def test_blank_codes() -> None:
    assert blank_code("9223372036854775794", 9223372036854775794.0) == "int64 not supported"
    assert blank_code("2147483647", 2147483647.0) == "int32 blank+15"
    assert blank_code("140737488355328", 140737488355328.0) == "fp64 blank"
    assert blank_code("2147483631", 2147483631.0) is None
    assert blank_code("80", 80.0) is None


def test_labels_are_parsed_into_a_map() -> None:
    parsed = parse_labels(pa.array(['a="x",b="y,z"', "", 'k="v"'])).to_pylist()
    assert parsed[0] == [("a", "x"), ("b", "y,z")]
    assert parsed[1] is None
    assert parsed[2] == [("k", "v")]


def test_synthetic_fleet_is_realistic_and_deterministic(tmp_path: Path) -> None:
    fleet = SyntheticFleet(hosts=4, batch_rows=100)
    batches = list(fleet.read_pass(Shard()))
    table = pa.Table.from_batches([b.samples for b in batches])
    assert table.num_rows == fleet.rows_per_pass == 320
    assert batches[-1].position == 320
    by_metric: dict[str, list[float]] = {}
    for m, v in zip(table.column("metric").to_pylist(), table.column("value").to_pylist(), strict=True):
        by_metric.setdefault(m, []).append(v)
    assert all(0 <= v <= 100 for v in by_metric["DCGM_FI_DEV_GPU_UTIL"])
    assert all(20 <= v <= 95 for v in by_metric["DCGM_FI_DEV_GPU_TEMP"])
    assert all(50 <= v <= 720 for v in by_metric["DCGM_FI_DEV_POWER_USAGE"])
    used, free = np.array(by_metric["DCGM_FI_DEV_FB_USED"]), np.array(by_metric["DCGM_FI_DEV_FB_FREE"])
    assert np.all(used + free == 81559)
    assert SyntheticFleet(hosts=4).uuids == fleet.uuids
    path = tmp_path / "fleet.csv"
    assert write_csv(path, hosts=2, scrapes=3) == 480
    back, rejects = read_all(DcgmCsvSource(path))
    assert back.num_rows == 480 and rejects is None
    assert len(set(back.column("source_ts").to_pylist())) == 3


def test_synthetic_shards_partition_the_fleet() -> None:
    fleet = SyntheticFleet(hosts=8)
    seen = [
        set(pa.Table.from_batches([b.samples for b in fleet.read_pass(Shard(i, 3))]).column("uuid").to_pylist())
        for i in range(3)
    ]
    assert set().union(*seen) == set(fleet.uuids)
    assert sum(len(s) for s in seen) == len(fleet.uuids)
