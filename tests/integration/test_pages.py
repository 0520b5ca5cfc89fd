"""The fleet and GPU pages over a real PostgreSQL holding a fleet with known values (tests/pages_data.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import psycopg
import pytest
from fastapi.testclient import TestClient

from pipeline.config import GatewaySettings
from pipeline.gateway.app import build_app
from pipeline.gateway.pages.scales import Scale
from pipeline.storage.reader import Reader
from tests.pages_data import UTIL, hold, load_fleet, mark_blank, mark_hot, mark_missing, use, uuid_of

HOT, SILENT, BLANK = uuid_of(3, 5), uuid_of(1, 2), uuid_of(2, 7)
EVIL = "<script>alert(1)</script>"
# Missing after 3 x 1 s + 300 s: the data stamped at the fixture stays fresh however slow the machine.
SETTINGS = GatewaySettings(auth="off", health_grace_s=300)


class Cells(HTMLParser):
    """The heatmap cells of a page: class, fill, link and title of each."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self._link: str | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "a":
            self._link = a.get("href")
        if tag == "rect" and a.get("class", "").startswith("cell") and self._link is not None:
            self.cells.append({"class": a["class"], "fill": a["fill"], "href": self._link, "title": ""})
        self._in_title = tag == "title"

    def handle_data(self, data: str) -> None:
        if self._in_title and self.cells and not self.cells[-1]["title"]:
            self.cells[-1]["title"] = data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._link = None
        self._in_title = False


def cells(html: str) -> list[dict[str, str]]:
    p = Cells()
    p.feed(html)
    return p.cells


def section(html: str, anchor: str) -> str:
    return html.split(f'id="{anchor}"', 1)[1].split("</table>", 1)[0]


@pytest.fixture
def now() -> datetime:
    """The instant the test's data is stamped (the pages compare it with the clock: never import time)."""
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def fleet(fresh_db: str, now: datetime) -> Iterator[TestClient]:
    """32 hosts x 8 GPUs; one hot (97 C, held by team-a), one silent for 10 min, one with a blank code."""
    load_fleet(fresh_db, 32, now)
    mark_hot(fresh_db, HOT)
    mark_missing(fresh_db, SILENT, timedelta(minutes=10), now)
    mark_blank(fresh_db, BLANK, UTIL, "not supported", now)
    hold(fresh_db, HOT, "team-a", "train-7", now - timedelta(minutes=30), None)
    reader = Reader(fresh_db)
    reader.open(wait=True)
    with TestClient(build_app(reader, SETTINGS)) as c:
        yield c
    reader.close()


def test_the_counts_are_those_of_the_data(fleet: TestClient) -> None:
    page = fleet.get("/").text
    counts = dict(re.findall(r"<dt>([^<]+)</dt><dd>(?:<a [^>]+>)?([\d,]+)", page))
    # Utilisation (host * 8 + i) % 100 is <= 5 % for 18 of 256 GPUs; the silent one and the one whose
    # utilisation is a blank code count as neither active nor idle.
    assert counts == {
        "GPUs": "256",
        "hosts": "32",
        "active (&gt; 5 %)": "236",
        "idle": "18",
        "not reporting": "1",
        "silent hosts": "0",
        "blank codes": "1",
        "XID events (1 h)": "0",
    }


def test_every_gpu_is_a_cell_coloured_by_its_value_linking_to_its_page(fleet: TestClient) -> None:
    found = cells(fleet.get("/").text)
    assert len(found) == 256
    by_uuid = {c["href"].removeprefix("/gpus/"): c for c in found}
    plain = by_uuid[uuid_of(0, 3)]  # utilisation 3 %
    assert plain["class"] == "cell" and plain["fill"] == Scale(0, 100).colour(3.0)
    assert plain["title"] == f"host-00000 GPU 3 ({uuid_of(0, 3)}): GPU utilisation 3 %"
    temps = cells(fleet.get("/?metric=DCGM_FI_DEV_GPU_TEMP").text)
    hot = next(c for c in temps if c["href"] == f"/gpus/{HOT}")
    assert hot["fill"] == Scale(30, 100, "C").colour(97.0)  # temperatures span 30..97 C: the scale 30..100


def test_a_silent_gpu_and_a_blank_code_are_marked_not_coloured(fleet: TestClient) -> None:
    page = fleet.get("/").text
    by_uuid = {c["href"].removeprefix("/gpus/"): c for c in cells(page)}
    assert by_uuid[SILENT]["class"] == "cell missing" and by_uuid[SILENT]["fill"] == "url(#hm-missing)"
    assert "not reporting (since" in by_uuid[SILENT]["title"]
    assert by_uuid[BLANK]["class"] == "cell blank" and "DCGM blank code not supported" in by_uuid[BLANK]["title"]
    assert [u for u, c in by_uuid.items() if c["class"] != "cell"] == sorted([SILENT, BLANK])
    assert f'href="/gpus/{SILENT}"' in section(page, "missing")
    blank = section(page, "blank")
    assert f'href="/gpus/{BLANK}"' in blank and "not supported" in blank and "DCGM_FI_DEV_GPU_UTIL" in blank


def test_the_hot_gpu_tops_the_hottest_table_with_its_holder(fleet: TestClient) -> None:
    hottest = section(fleet.get("/").text, "hottest")
    rows = re.findall(r'<tr><td><a href="/gpus/([^"]+)">', hottest)
    assert rows[0] == HOT and len(rows) == 10
    assert "97 C" in hottest and "team-a/train-7" in hottest
    idle = re.findall(r'<tr><td><a href="/gpus/([^"]+)">', section(fleet.get("/").text, "idle"))
    assert sorted(idle[:3]) == [uuid_of(0, 0), uuid_of(12, 4), uuid_of(25, 0)]  # the three at 0 % (ties: any order)


def test_a_large_fleet_is_drawn_by_host_and_paged(fresh_db: str, now: datetime) -> None:
    load_fleet(fresh_db, 300, now)  # 2,400 GPUs: more than one page of GPU cells
    mark_missing(fresh_db, uuid_of(7, 0), timedelta(hours=1), now)
    reader = Reader(fresh_db)
    reader.open(wait=True)
    with TestClient(build_app(reader, SETTINGS)) as c:
        by_host = cells(c.get("/").text)
        assert len(by_host) == 300 and by_host[0]["href"] == "/?hostname=host-00000&metric=DCGM_FI_DEV_GPU_UTIL"
        seven = by_host[7]["title"]
        assert "host-00007" in seven and "1 of 8 not reporting" in seven and "over 8 GPUs" in seven
        first = c.get("/?view=gpus").text
        assert len(cells(first)) == 256 * 8 and "Hosts 1-256 of 300 (page 1 of 2)" in first and 'rel="next"' in first
        second = c.get("/?view=gpus&page=2").text
        assert len(cells(second)) == 44 * 8 and 'rel="prev"' in second and 'rel="next"' not in second
        one = c.get("/?hostname=host-00007").text
        assert len(cells(one)) == 8 and "<h1>Host host-00007</h1>" in one
        for bad in ("/?page=3&view=gpus", "/?page=0", "/?metric=DCGM_FI_DEV_SM_CLOCK", "/?view=all", "/?limit=5"):
            r = c.get(bad)
            assert r.status_code == 400 and r.headers["content-type"].startswith("text/html"), bad
    reader.close()


def test_user_controlled_text_is_escaped(fresh_db: str, now: datetime) -> None:
    load_fleet(fresh_db, 1, now)
    with psycopg.connect(fresh_db) as conn:
        conn.execute("UPDATE gpus SET hostname = %s, model = %s WHERE uuid = %s", (EVIL, EVIL, uuid_of(0, 0)))
        conn.execute("UPDATE gpus SET uuid = %s WHERE uuid = %s", (f'GPU-"{EVIL}', uuid_of(0, 1)))
    hold(fresh_db, uuid_of(0, 2), EVIL, EVIL, now - timedelta(minutes=1), None)
    reader = Reader(fresh_db)
    reader.open(wait=True)
    with TestClient(build_app(reader, SETTINGS)) as c:
        for path in ("/", "/?hostname=" + EVIL, f"/gpus/{uuid_of(0, 0)}"):
            page = c.get(path).text
            assert EVIL not in page and "&lt;script&gt;" in page, path
        assert c.get(f'/gpus/GPU-"{EVIL}').status_code == 200
    reader.close()


# --- one GPU ------------------------------------------------------------------------------------------


def test_the_gpu_page_charts_each_metric_and_links_the_window(fleet: TestClient, fresh_db: str, now: datetime) -> None:
    with psycopg.connect(fresh_db) as conn:
        conn.execute(
            "INSERT INTO telemetry (ts, value, gpu_key, metric_id) SELECT %s - make_interval(secs => s), s %% 60, "
            "g.gpu_key, m.metric_id FROM generate_series(0, 3590, 10) s, gpus g, metrics m WHERE g.uuid = %s "
            "AND m.name IN ('DCGM_FI_DEV_GPU_UTIL', 'DCGM_FI_DEV_POWER_USAGE')",
            (now, HOT),
        )
        conn.execute(
            "INSERT INTO gpu_events (gpu_key, ts, kind, code) SELECT gpu_key, %s, 'xid', 79 FROM gpus WHERE uuid = %s",
            (now - timedelta(minutes=5), HOT),
        )
    hold(fresh_db, HOT, "team-c", "old", now - timedelta(hours=3), now - timedelta(minutes=50))
    page = fleet.get(f"/gpus/{HOT}").text
    assert f"<h1>GPU <code>{HOT}</code></h1>" in page and 'href="/?hostname=host-00003"' in page
    assert page.count("<polyline") >= 2 and "<figcaption>GPU utilisation" in page and "<figcaption>Power" in page
    assert "97 C" in page  # the newest temperature, from the latest-value table
    held = page.split('id="allocations"')[1].split("</table>")[0]
    assert "team-a/train-7: " in held and "to now" in held  # its bar in the timeline, open to the right
    assert re.search(
        r'<td>team-a/train-7</td><td><time [^>]+>[^<]+</time></td><td>still holds it</td><td class="n">30(\.0)? min',
        held,
    )
    assert re.search(r'<td>team-c/old</td>.*?<td class="n">130(\.0)? min</td>', held)  # ended 50 min ago
    events = page.split('id="events"')[1].split("</table>")[0]
    assert '<td class="n">79</td><td>GPU has fallen off the bus</td>' in events
    assert "team-c/old" not in fleet.get(f"/gpus/{HOT}?window=15m").text
    links = dict(
        re.findall(r'href="(/gpus/[^"]+/export\?format=(csv|arrow|json)[^"]*)"', page)[i][::-1] for i in range(3)
    )
    csv = fleet.get(links["csv"].replace("&amp;", "&"))
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert len(csv.text.strip().splitlines()) == 1 + 2 * 360  # header + both metrics, every 10 s for an hour
    js = fleet.get(links["json"].replace("&amp;", "&")).json()
    assert js["uuid"] == HOT and len(js["items"]) == 720
    assert fleet.get(f"/gpus/{HOT}?window=6h").status_code == 200
    bad = fleet.get(f"/gpus/{HOT}?window=2h")
    assert bad.status_code == 400 and "15m, 1h, 6h, 24h, 7d" in bad.text
    missing = fleet.get("/gpus/GPU-nope")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")


# --- usage --------------------------------------------------------------------------------------------


def test_usage_per_pod_and_namespace_is_the_hand_computed_sum(fresh_db: str) -> None:
    """GPU X: pod team-a/train held it 30 min at 80 % and 300 W, then team-b/serve 90 min (60 at 50 %, 200 W;
    30 idle holding memory, 100 W), all ending 2 h ago; nobody held GPU Y for 15 min at 0 % and 50 W; GPU Z:
    team-c/recent for 30 min at 50 % and 200 W, ending 10 min ago (the only use in the last hour)."""
    now = datetime.now(UTC)
    load_fleet(fresh_db, 1, now)
    x, y, z = uuid_of(0, 0), uuid_of(0, 1), uuid_of(0, 2)
    start = (now - timedelta(hours=4)).replace(second=0, microsecond=0)
    use(fresh_db, x, "team-a", "train", start, 30, 80.0, 300.0)
    use(fresh_db, x, "team-b", "serve", start + timedelta(minutes=30), 60, 50.0, 200.0)
    use(fresh_db, x, "team-b", "serve", start + timedelta(minutes=90), 30, 0.0, 100.0, mem_idle=True)
    use(fresh_db, y, None, None, start, 15, 0.0, 50.0)
    use(fresh_db, z, "team-c", "recent", (now - timedelta(minutes=40)).replace(second=0, microsecond=0), 30, 50, 200)
    reader = Reader(fresh_db)
    reader.open(wait=True)
    with TestClient(build_app(reader, SETTINGS)) as c:
        pods = c.get("/usage?group_by=pod&window=6h").text
        namespaces = c.get("/usage?window=24h").text
        hosts = c.get("/usage?group_by=hostname&window=24h").text
        last_hour = c.get("/usage?group_by=pod&window=1h").text  # from the minute rollups
        assert c.get("/usage?group_by=user").status_code == 400
    reader.close()

    def row(page: str, label: str) -> list[str]:
        table = page.split('id="usage"')[1].split("</table>")[0]
        cells = re.search(rf"<tr><td>{re.escape(label)}</td>(.*?)</tr>", table)
        assert cells is not None, (label, table)
        return re.findall(r'<td class="n">([^<]*)</td>', cells.group(1))

    # mean GPUs (GPU time over the window), GPU-h, allocated, active, idle, memory held idle, mean utilisation, kWh
    assert row(pods, "team-a/train") == ["0.08", "0.50", "0.50", "0.50", "0", "0", "80 %", "0.150"]
    assert row(pods, "team-b/serve") == ["0.25", "1.50", "1.50", "1", "0.50", "0.50", "33.3 %", "0.250"]
    assert row(pods, "(no pod)") == ["0.04", "0.25", "0", "0", "0.25", "0", "0 %", "0.013"]
    assert (
        row(namespaces, "team-b") == ["0.06", *row(pods, "team-b/serve")[1:]] and row(namespaces, "team-a")[1] == "0.50"
    )
    assert row(hosts, "host-00000") == ["0.11", "2.75", "2.50", "2", "0.75", "0.50", "41.8 %", "0.512"]
    assert "team-a/train" not in last_hour.split('id="usage"')[1]
    # the last hour is 61 whole minutes (the minute of its start and of its end): 30 min of GPU time over 61
    assert row(last_hour, "team-c/recent") == ["0.49", "0.50", "0.50", "0.50", "0", "0", "50 %", "0.100"]
    # The most used first (the API lists by name): team-b/serve, team-a/train and team-c/recent, nobody.
    order = re.findall(r"<tr><td>([^<]+)</td>", pods.split('id="usage"')[1])
    assert order == ["team-b/serve", "team-a/train", "team-c/recent", "(no pod)"]
