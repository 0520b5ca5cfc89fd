"""The pages' building blocks without a database: escaping, colour scales, charts, the shell, rates."""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest

from pipeline.gateway.pages.charts import (
    Bar,
    Cell,
    Lane,
    Row,
    Series,
    bars,
    grid,
    heatmap,
    legend,
    line_chart,
    timeline,
)
from pipeline.gateway.pages.html import Markup, el, escape, gpu_path, href, join, number, time_tag
from pipeline.gateway.pages.layout import CSP, CSS, JS, document
from pipeline.gateway.pages.pipeline_page import Rates
from pipeline.gateway.pages.scales import CATEGORICAL, Scale, luminance, viridis

EVIL = '<script>alert("x")</script>&\'"'
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class _Tags(HTMLParser):
    """Every start tag and text node of a document (to check what a browser would build)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(markup: str) -> _Tags:
    p = _Tags()
    p.feed(markup)
    return p


# --- escaping --------------------------------------------------------------------------------------


def test_text_and_attribute_values_are_escaped_by_default() -> None:
    page = el("td", {"title": EVIL, "class": "n"}, EVIL, 3, None, [EVIL])
    tags = parse(page)
    assert [t for t, _ in tags.tags] == ["td"]  # no <script> element came out of the values
    assert tags.tags[0][1]["title"] == EVIL
    assert "".join(tags.text) == EVIL + "3" + EVIL


def test_markup_stays_markup_and_plain_strings_joining_it_are_escaped() -> None:
    joined = Markup("<b>") + EVIL
    assert isinstance(joined, Markup) and "<script>" not in joined and joined.startswith("<b>")
    assert isinstance(EVIL + Markup("<i>"), Markup)
    assert escape(Markup("<b>")) == "<b>" and join([Markup("<b>"), "<"]) == "<b>&lt;"


@pytest.mark.parametrize("name", ["on click", 'x"y', "1a", ""])
def test_tag_and_attribute_names_must_be_plain(name: str) -> None:
    with pytest.raises(ValueError):
        el(name or " ")
    with pytest.raises(ValueError):
        el("td", {name: "v"})


def test_links_stay_on_this_origin_and_quote_the_uuid() -> None:
    assert href("/", metric="DCGM_FI_DEV_GPU_TEMP", page=None) == "/?metric=DCGM_FI_DEV_GPU_TEMP"
    for bad in ("javascript:alert(1)", "//evil.example/", "https://evil.example/"):
        with pytest.raises(ValueError):
            href(bad)
    assert gpu_path("GPU-1/mig-2") == "/gpus/GPU-1%2Fmig-2"
    assert gpu_path('"><script>') == "/gpus/%22%3E%3Cscript%3E"


def test_times_are_utc_tags_and_numbers_read_plainly() -> None:
    tag = time_tag(datetime(2026, 1, 1, 1, 30, tzinfo=UTC) + timedelta(hours=0))
    assert tag == '<time datetime="2026-01-01T01:30:00Z">2026-01-01 01:30:00 UTC</time>'
    assert number(1234567, 1, "W") == "1,234,567 W" and number(0.25, 2) == "0.25" and number(None) == "—"


# --- colour ----------------------------------------------------------------------------------------


def test_viridis_has_its_published_ends_and_rises_in_lightness() -> None:
    assert viridis(0) == "#440154" and viridis(1) == "#fde725" and viridis(-3) == viridis(0)
    lum = [luminance(viridis(i / 100)) for i in range(101)]
    assert all(b > a for a, b in itertools.pairwise(lum)), "lightness must rise monotonically"
    assert lum[-1] / lum[0] > 10  # the ends are far apart in lightness, not only in hue


def test_categorical_colours_are_distinct_and_scales_map_their_range() -> None:
    assert len(set(CATEGORICAL)) == len(CATEGORICAL) == 8
    s = Scale(0, 100, "%")
    assert s.colour(0) == viridis(0) and s.colour(100) == viridis(1) and s.colour(250) == viridis(1)
    assert s.ink(0) == "#ffffff" and s.ink(100) == "#000000"  # text stays readable on both ends
    assert Scale.around([13.0, 87.0], "W") == Scale(10, 90, "W")
    assert Scale.around([], "W") == Scale(0, 1, "W") and Scale.around([5.0], None, (0, 100)) == Scale(0, 100, None)


# --- charts ----------------------------------------------------------------------------------------


def test_heatmap_cells_link_carry_titles_and_mark_missing_and_blank() -> None:
    rows = [
        Row(
            "h1", [Cell("h1 gpu 0: 71 %", 71.0, "/gpus/a"), Cell("h1 gpu 1: not reporting", None, "/gpus/b", "missing")]
        ),
        Row(EVIL, [Cell(EVIL, None, "/gpus/c", "blank")]),
    ]
    svg = heatmap(rows, Scale(0, 100, "%"), "GPU utilisation")
    tags = parse(svg)
    rects = [a for t, a in tags.tags if t == "rect" and "cell" in (a.get("class") or "")]
    assert [r["class"] for r in rects] == ["cell", "cell missing", "cell blank"]
    assert rects[0]["fill"] == Scale(0, 100).colour(71) and rects[1]["fill"] == "url(#hm-missing)"
    assert [a["href"] for t, a in tags.tags if t == "a" and "href" in a] == ["/gpus/a", "/gpus/b", "/gpus/c"]
    assert "script" not in [t for t, _ in tags.tags] and EVIL in "".join(tags.text)
    assert tags.tags[0][1]["role"] == "img" and tags.tags[0][1]["aria-label"] == "GPU utilisation"


def test_grid_and_legend() -> None:
    svg = grid(
        [Cell(f"host {i}", float(i), f"/?hostname=h{i}") for i in range(130)], Scale(0, 130), "hosts", per_line=64
    )
    assert svg.count('class="cell"') == 130 and 'height="51"' in svg  # three rows of 17 px
    lg = legend(Scale(0, 100, "%"), "GPU utilisation")
    assert "0 %" in lg and "100 %" in lg and "not reporting" in lg and "DCGM blank code" in lg


def test_line_chart_breaks_at_gaps_and_summarises_in_words() -> None:
    points = [(T0 + timedelta(seconds=10 * i), float(i)) for i in range(10)]
    points += [(T0 + timedelta(seconds=300 + 10 * i), 50.0) for i in range(5)]
    svg = line_chart(
        [Series("avg", points)], T0, T0 + timedelta(minutes=6), "C", "Temperature", gap=timedelta(seconds=30)
    )
    assert svg.count("<polyline") == 2  # no line drawn across the 3-minute silence
    label = dict(parse(svg).tags[0][1])["aria-label"]
    assert label == "Temperature: min 0 C, mean 19.7 C, max 50 C, last 50 C"
    empty = line_chart([Series("avg", [])], T0, T0 + timedelta(hours=1), "W", "Power")
    assert "no samples in this window" in empty


def test_bars_and_timeline_scale_to_the_largest_and_label_everything() -> None:
    svg = bars([Bar("team-a", [3.0, 1.0]), Bar("team-b", [1.0, 0.0])], ["active", "idle"], "GPU-h", "Usage")
    widths = [float(w) for w in re.findall(r'<rect x="[\d.]+" y="\d+" width="([\d.]+)" height="16"', svg)]
    assert widths[0] == pytest.approx(3 * widths[2]) and widths[0] + widths[1] == pytest.approx(450.0)
    assert "team-a: active 3 GPU-h" in svg and ">4 GPU-h<" in svg and "team-b: idle 0 GPU-h" in svg
    lanes = [Lane("pod-a", [(T0, T0 + timedelta(seconds=30))]), Lane("pod-b", [(T0 + timedelta(seconds=30), None)])]
    tl = timeline(lanes, T0, T0 + timedelta(seconds=120), "Allocations")
    assert "pod-a: 00:00:00 to 00:00:30 UTC" in tl and "pod-b: 00:00:30 to now" in tl


# --- the shell -------------------------------------------------------------------------------------


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_the_csp_allows_exactly_the_pages_own_style_and_script() -> None:
    assert f"script-src {_hash(JS)};" in CSP and f"style-src {_hash(CSS)};" in CSP
    assert CSP.startswith("default-src 'none';") and "frame-ancestors 'none'" in CSP
    assert "http" not in CSP and "unsafe" not in CSP
    page = document("Fleet", el("p", None, EVIL), current="/", refresh_s=10, signed_in=True)
    tags = parse(page)
    scripts = [a for t, a in tags.tags if t == "script"]
    assert len(scripts) == 1 and "src" not in scripts[0]
    assert f"<style>{CSS}</style>" in page and f"<script>{JS}</script>" in page  # the hashed bytes exactly
    assert not [
        a for t, a in tags.tags if t in ("link", "img") and (a.get("href") or a.get("src") or "")[:5] != "data:"
    ]
    assert ("main", {"id": "main", "tabindex": "-1", "data-refresh": "10"}) in tags.tags
    assert ("a", {"href": "/", "aria-current": "page"}) in tags.tags
    assert any(t == "form" and a.get("action") == "/logout" for t, a in tags.tags)


# --- rates -----------------------------------------------------------------------------------------


def test_rates_come_from_two_snapshots_and_restart_after_a_counter_went_down() -> None:
    now = [0.0]
    rates = Rates(clock=lambda: now[0])
    rates.add(T0, 1000, 500)
    assert rates.current() == (None, None)
    now[0] = 10.0
    rates.add(T0 + timedelta(seconds=10), 3000, 2500)
    assert rates.current() == (200.0, 200.0)
    now[0] = 10.5
    rates.add(T0 + timedelta(seconds=10.5), 3100, 2600)  # within a second: replaces the last snapshot
    assert rates.current() == pytest.approx((2100 / 10.5, 2100 / 10.5))
    now[0] = 20.0
    rates.add(T0 + timedelta(seconds=20), 10, 2700)  # the broker restarted: its counter began again
    assert rates.current() == (None, None)
    ins, stored = rates.series()
    assert ins == [] and stored == []
