"""Every metric is defined once, named by the convention."""

from __future__ import annotations

from pipeline import metrics


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
