"""Unit-test fixtures: generated dcgm-exporter data, so no test needs ``../shared``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.sources.synthetic import write_csv


@dataclass(frozen=True)
class FleetCsv:
    """A generated dcgm-exporter CSV and how many sample rows one pass of it holds."""

    path: Path
    rows: int


@pytest.fixture(scope="session")
def fleet_csv(tmp_path_factory: pytest.TempPathFactory) -> FleetCsv:
    """31 hosts x 8 GPUs x 10 metrics, one scrape (the real export's shape: 2,480 rows)."""
    path = tmp_path_factory.mktemp("fleet") / "fleet.csv"
    rows = write_csv(path, hosts=31, gpus_per_host=8, scrapes=1, seed=11)
    return FleetCsv(path, rows)
