"""The Serve config bounds slow clients at the proxy (no Ray needed: the YAML is read as data)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]


def test_the_serve_config_sets_request_and_keep_alive_timeouts() -> None:
    config = yaml.safe_load((ROOT / "pipeline" / "gateway" / "serve_config.yaml").read_text())
    http = config["http_options"]
    assert 0 < http["request_timeout_s"] <= 120
    assert 0 < http["keep_alive_timeout_s"] <= 30
