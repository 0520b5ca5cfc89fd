"""Settings: sources in order, bad values named, config file errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import pipeline.errors as errors
from pipeline.config import Settings


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
        (
            {
                "PIPELINE_QUEUE__BROKERS": "3",
                "PIPELINE_QUEUE__REPLICATION_FACTOR": "2",
                "PIPELINE_QUEUE__MIN_INSYNC": "3",
            },
            "min_insync (3) exceeds replication_factor (2) [PIPELINE_QUEUE__MIN_INSYNC]",
        ),
        (
            {"PIPELINE_QUEUE__BROKERS": "2", "PIPELINE_QUEUE__REPLICATION_FACTOR": "3"},
            "replication_factor (3) needs at least as many brokers (queue.brokers is 2)",
        ),
        ({"PIPELINE_QUEUE__REPLICATION_FACTOR": "0"}, "queue.replication_factor [PIPELINE_QUEUE__REPLICATION_FACTOR]"),
    ],
)
def test_bad_settings_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        Settings.load(environ=environ)
    assert message in str(info.value)


def test_replication_defaults_to_one_copy_and_takes_three_with_two_in_sync() -> None:
    s = Settings.load(environ={})
    assert (s.queue.replication_factor, s.queue.min_insync) == (1, 1)
    s = Settings.load(
        environ={
            "PIPELINE_QUEUE__BROKERS": "3",
            "PIPELINE_QUEUE__REPLICATION_FACTOR": "3",
            "PIPELINE_QUEUE__MIN_INSYNC": "2",
        }
    )
    assert (s.queue.replication_factor, s.queue.min_insync) == (3, 2)


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
