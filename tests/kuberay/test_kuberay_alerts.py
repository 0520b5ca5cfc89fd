"""The shipped alerts run on synthetic series (`promtool test rules`), and every metric the alerts
and the dashboard query is one the pipeline exports, used as its kind allows."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kuberay.conftest import ENVS
from tests.kuberay.policy import promql_metric_names
from tests.kuberay.rendered import of_kind, one

HERE = Path(__file__).resolve().parent
CASES = HERE / "alerts.promtest.yaml"
KNOWN_EXTERNAL_METRICS = {"up"}
_RANGE_FUNCTIONS = ("rate", "irate", "increase")

Objects = dict[str, list[dict[str, Any]]]


def _groups(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = one(objs, "PrometheusRule")["spec"]["groups"]
    return groups


def _alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


@pytest.fixture(scope="module")
def promtool() -> str:
    """Path of promtool (Debian's `prometheus` package; .ci/run installs it), or skip."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed (apt-get install prometheus): alert unit tests not run")
    return exe


def test_every_overlay_ships_the_same_alerts(rendered: Objects) -> None:
    first = _groups(rendered[ENVS[0]])
    for env in ENVS[1:]:
        assert _groups(rendered[env]) == first, f"{env} alerts differ from {ENVS[0]}'s"


def test_every_alert_has_a_firing_and_a_quiet_case(rendered: Objects) -> None:
    cases = yaml.safe_load(CASES.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts(_groups(rendered["prod"])))
    assert alerts >= {"MessageQueueHighLag", "APIGatewayHighLatency"}, "the seed's alerts are missing"
    assert alerts - fires == set(), f"no case where these fire: {sorted(alerts - fires)}"
    assert alerts - quiet == set(), f"no case where these stay quiet: {sorted(alerts - quiet)}"
    assert (fires | quiet) - alerts == set(), (
        f"cases for alerts that are not shipped: {sorted((fires | quiet) - alerts)}"
    )


def test_the_alerts_fire_on_synthetic_series_and_only_then(rendered: Objects, promtool: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": _groups(rendered["prod"])}, sort_keys=False))
    lint = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    suite = tmp_path / "alerts_test.yaml"
    cases = yaml.safe_load(CASES.read_text())
    suite.write_text(yaml.safe_dump({"rule_files": [rules.name], **cases}, sort_keys=False))
    done = subprocess.run(
        [promtool, "test", "rules", str(suite)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, f"promtool test rules failed:\n{done.stdout}\n{done.stderr}"
    assert "SUCCESS" in done.stdout + done.stderr


def test_promtool_catches_a_broken_threshold(rendered: Objects, promtool: str, tmp_path: Path) -> None:
    groups = _groups(rendered["prod"])
    for group in groups:
        for rule in group["rules"]:
            if rule.get("alert") == "MessageQueueHighLag":
                rule["expr"] = rule["expr"].replace("> 10000", "> 100000")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    suite = tmp_path / "alerts_test.yaml"
    suite.write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], **yaml.safe_load(CASES.read_text())}))
    done = subprocess.run(
        [promtool, "test", "rules", str(suite)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode != 0 and "MessageQueueHighLag" in done.stdout + done.stderr


# --- metric names and kinds ----------------------------------------------------------------------


def _metrics() -> dict[str, str]:
    """Series name -> what it is: counter, gauge, histogram_bucket, histogram_sum, histogram_count."""
    from pipeline.metrics import ALL, exported_metric_names

    out: dict[str, str] = {}
    for m in ALL:
        if m.kind == "histogram":
            for suffix in ("bucket", "sum", "count"):
                out[f"{m.exported_name}_{suffix}"] = f"histogram_{suffix}"
        else:
            out[m.exported_name] = m.kind
    assert set(out) == set(exported_metric_names())
    return out


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def _dashboard_promql(objs: list[dict[str, Any]]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets (rows included) and query variables."""
    exprs = []
    for cm in of_kind(objs, "ConfigMap"):
        if cm["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
            continue
        for text in cm["data"].values():
            dashboard = json.loads(text)
            for panel in _panels(dashboard.get("panels") or []):
                exprs += [t["expr"] for t in panel.get("targets") or () if t.get("expr")]
            for var in (dashboard.get("templating") or {}).get("list") or ():
                query = var.get("query")
                if var.get("type") == "query" and isinstance(query, dict) and "query" in query:
                    query = query["query"]
                if var.get("type") == "query" and isinstance(query, str) and "label_values" in query:
                    exprs.append(re.sub(r"label_values\((.*),\s*\w+\)", r"\1", query))
    return exprs


def _expressions(objs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    rules = [("rule " + r.get("alert", r.get("record", "?")), r["expr"]) for g in _groups(objs) for r in g["rules"]]
    return rules + [("dashboard", e) for e in _dashboard_promql(objs)]


@pytest.mark.parametrize("env", ENVS)
def test_alerts_and_dashboard_query_only_exported_metrics(rendered: Objects, env: str) -> None:
    exported = set(_metrics()) | KNOWN_EXTERNAL_METRICS
    unknown = {
        f"{where}: {name}"
        for where, expr in _expressions(rendered[env])
        for name in promql_metric_names(expr)
        if name not in exported
    }
    assert not unknown, "not exported by pipeline/metrics.py (Ray actors' metrics carry ray_):\n" + "\n".join(
        sorted(unknown)
    )
    assert len(_dashboard_promql(rendered[env])) >= 10, "the dashboard's Prometheus queries were not found"
    referenced = {name for _, expr in _expressions(rendered[env]) for name in promql_metric_names(expr)}
    assert {
        "message_queue_consumer_lag",
        "http_request_duration_seconds_bucket",
        "ray_pipeline_rejects_total",
        "ray_pipeline_collector_last_commit_timestamp_seconds",
    } <= referenced


def test_rate_is_taken_of_counters_and_quantiles_of_buckets(rendered: Objects) -> None:
    kinds = _metrics()
    problems = []
    for where, expr in _expressions(rendered["prod"]):
        for fn, name in re.findall(r"\b(\w+)\s*\(\s*([a-zA-Z_:][\w:]*)\s*(?:\{[^}]*\})?\s*\[", expr):
            kind = kinds.get(name, "")
            if fn in _RANGE_FUNCTIONS and kind not in (
                "counter",
                "histogram_bucket",
                "histogram_sum",
                "histogram_count",
            ):
                problems.append(f"{where}: {fn}() of {kind or 'unknown'} {name}")
        for name in re.findall(r"histogram_quantile\([^,]+,.*?\b([a-zA-Z_:][\w:]*_bucket)\b", expr):
            if kinds.get(name) != "histogram_bucket":
                problems.append(f"{where}: histogram_quantile of {name}, not a histogram's buckets")
    assert not problems, "\n".join(problems)
