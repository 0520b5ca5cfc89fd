"""Settings, errors, records, binary COPY encoding, partitioning, metrics definitions."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import pipeline.errors as errors
from pipeline import metrics
from pipeline.config import Settings
from pipeline.partitioning import KeyHasher
from pipeline.records import SAMPLE_SCHEMA, Envelope, make_rejects
from pipeline.storage.copy_format import HEADER, PG_EPOCH_US, encode_telemetry
from tests.support import split


def test_settings_sources_in_order(tmp_path: Path) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text("queue: {partitions: 8, brokers: 2}\nstreamer: {count: 3}\n")
    s = Settings.load(
        cfg,
        overrides={"streamer": {"count": 5, "csv": None}},
        environ={"PIPELINE_QUEUE__PARTITIONS": "12", "DATABASE_URL": "postgresql://h/db"},
    )
    assert s.queue.partitions == 12  # env beats the file
    assert s.queue.brokers == 2  # file beats the default
    assert s.streamer.count == 5  # overrides beat everything
    assert s.database.url is not None and s.database.url.get_secret_value() == "postgresql://h/db"
    assert "postgresql" not in repr(s)  # secrets are not printed


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PIPELINE_QUEUE__PARTITIONS": "0"}, "queue.partitions [PIPELINE_QUEUE__PARTITIONS]"),
        ({"PIPELINE_STREAMER__INTERVAL_S": "soon"}, "streamer.interval_s [PIPELINE_STREAMER__INTERVAL_S]"),
        ({"PIPELINE_GATEWAY__DEFAULT_LIMIT": "50000"}, "default_limit 50000 exceeds max_limit"),
    ],
)
def test_bad_settings_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        Settings.load(environ=environ)
    assert message in str(info.value)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="does not exist"):
        Settings.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(errors.ConfigError, match="must hold a mapping"):
        Settings.load(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("queue: {partitons: 3}\n")
    with pytest.raises(errors.ConfigError, match="queue.partitons"):
        Settings.load(unknown)


def test_envelope_counts() -> None:
    samples = pa.RecordBatch.from_pylist([], schema=SAMPLE_SCHEMA)
    rejects = make_rejects(0, "f.csv", [3, None], ["a", None], ["bad", "worse"])
    env = Envelope(samples, rejects)
    assert (env.num_rows, env.num_rejects) == (0, 2)
    assert env.nbytes >= rejects.nbytes


def test_binary_copy_encoding_is_the_postgres_wire_format() -> None:
    ts = np.array([PG_EPOCH_US + 1, PG_EPOCH_US + 2], dtype=np.int64)
    payload = encode_telemetry(ts, np.array([7, 8], np.int32), np.array([1, 2], np.int16), np.array([1.5, -2.0]))
    assert payload.startswith(HEADER) and payload.endswith(b"\xff\xff")
    row = payload[len(HEADER) : len(HEADER) + 2 + 4 + 8 + 4 + 4 + 4 + 2 + 4 + 8]
    fields = struct.unpack(">hiqiiihid", row)
    assert fields == (4, 8, 1, 4, 7, 2, 1, 8, 1.5)
    assert len(payload) == len(HEADER) + 2 * 40 + 2


def test_partitions_are_stable_and_split_keeps_order() -> None:
    h = KeyHasher()
    uuids = pa.array(["GPU-a", "GPU-b", "GPU-a", "GPU-c"])
    parts = h.partitions(uuids, 4)
    assert parts[0] == parts[2] and list(parts) == list(KeyHasher().partitions(uuids, 4))
    batch = pa.RecordBatch.from_arrays([uuids, pa.array([0, 1, 2, 3])], names=["uuid", "i"])
    pieces = dict(split(batch, parts, 4))
    assert pieces[int(parts[0])].column("i").to_pylist()[:2] == [0, 2]
    assert sum(p.num_rows for p in pieces.values()) == 4


def test_metric_names_follow_the_convention() -> None:
    names = [m.name for m in metrics.ALL]
    assert len(names) == len(set(names))
    for m in metrics.ALL:
        assert m.name.startswith(("pipeline_", "http_", "message_queue_")), m.name
        if m.kind == "counter":
            assert m.name.endswith("_total"), m.name
    assert "message_queue_consumer_lag" in metrics.exported_metric_names()
    assert "http_request_duration_seconds_bucket" in metrics.exported_metric_names()
    assert "ray_pipeline_collector_rows_total" in metrics.exported_metric_names()
