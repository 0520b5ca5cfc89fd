"""A page written from fetched rows is the JSON the response model documents, byte for byte."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.gateway.bodies import telemetry_page
from pipeline.gateway.models import Sample, TelemetryPage
from pipeline.storage.reader import SamplePage

T0 = datetime(2025, 7, 18, 20, 42, 34, tzinfo=UTC)


def test_a_page_is_the_models_json() -> None:
    rows = [
        (T0, 1, 41.0),
        (T0, 2, 87.5),
        (T0 + timedelta(microseconds=123), 1, 1e-7),
        (T0 + timedelta(seconds=1), 2, 1e20),
    ]
    names = {1: "DCGM_FI_DEV_GPU_TEMP", 2: "DCGM_FI_DEV_GPU_UTIL"}
    end = T0 + timedelta(hours=1)
    body = telemetry_page("GPU-a/mig-1", T0, end, SamplePage(rows, names, True), "WyJhc2MiXQ")
    model = TelemetryPage(
        uuid="GPU-a/mig-1",
        start_time=T0,
        end_time=end,
        items=[Sample(ts=ts, metric=names[m], value=v) for ts, m, v in rows],
        next_cursor="WyJhc2MiXQ",
    )
    assert body == model.model_dump_json().encode()


def test_an_empty_last_page() -> None:
    body = telemetry_page("GPU-a", T0, T0, SamplePage([], {}, False), None)
    assert (
        body
        == TelemetryPage(uuid="GPU-a", start_time=T0, end_time=T0, items=[], next_cursor=None)
        .model_dump_json()
        .encode()
    )
