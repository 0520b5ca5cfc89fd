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


def test_every_ray_container_bounds_half_sent_requests_at_its_proxy() -> None:
    from pipeline.gateway.proxy_guard import PROXY_CALLBACK

    docs = list(yaml.safe_load_all((ROOT / "kuberay" / "base" / "system" / "raycluster.yaml").read_text()))
    containers = []
    for doc in docs:
        spec = (doc or {}).get("spec", {})
        cluster = spec.get("rayClusterConfig", spec)
        groups = [cluster.get("headGroupSpec", {}), *cluster.get("workerGroupSpecs", [])]
        for group in groups:
            containers += [c for c in group.get("template", {}).get("spec", {}).get("containers", []) if c]
    assert containers
    for c in containers:
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env.get("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH") == PROXY_CALLBACK, c["name"]
