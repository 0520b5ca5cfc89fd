"""The pages in a real headless Chromium, from a running pipeline (``python -m pipeline run``, auth on).

The browser signs in through the token prompt, reads the fleet, clicks a GPU and comes back, walks
the heatmap with the keyboard, watches the pipeline page refresh itself, and checks that nothing
broke the Content-Security-Policy. Screenshots go to ``test-artefacts/pages/`` (and, with
``PIPELINE_UPDATE_SCREENSHOT=1``, the fleet's to ``docs/fleet-page.png`` for the README, made with
``PIPELINE_PAGES_HOSTS=32``: the fleet ``make run`` streams). A gateway
with authentication off (the same app on uvicorn, over the same database) shows the pages at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from tests.browser import Browser
from tests.conftest import _with_dbname
from tests.e2e.test_cli import ROOT, free_port

pytestmark = pytest.mark.e2e
ARTEFACTS = ROOT / "test-artefacts" / "pages"
DOCS_SHOT = ROOT / "docs" / "fleet-page.png"
HOSTS = int(os.environ.get("PIPELINE_PAGES_HOSTS", "4"))  # 32 for the README's screenshot (make run's fleet)


@dataclass(frozen=True)
class Running:
    base: str
    token: str
    conninfo: str
    lines: list[str]


def _wait(what: str, ready: object, timeout: float, lines: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f} s:\n" + "".join(lines[-40:])
        time.sleep(0.5)


@pytest.fixture(scope="module")
def running(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """``python -m pipeline run`` on a fresh database, its gateway up and its fleet in the latest-value table."""
    name = f"t_{uuidlib.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    conninfo = _with_dbname(pg_server, name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "RAY_ADDRESS"))}
    env.update(
        DATABASE_URL=conninfo,
        XDG_DATA_HOME=str(tmp_path_factory.mktemp("data-home")),
        PYTHONUNBUFFERED="1",
        PIPELINE_RAY__NAMESPACE="pages-browser",
    )
    port = free_port()
    args = ["run", "--hosts", str(HOSTS), "--interval", "1", "--duration", "900", "--partitions", "4"]
    run = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(run.stderr.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    try:
        _wait("the api token line", lambda: any(ln.startswith("api token") for ln in lines), 300, lines)
        token = next(ln.split(": ", 1)[1].strip() for ln in lines if ln.startswith("api token"))

        def fleet_listed() -> bool:
            try:
                r = httpx.get(f"{base}/api/v1/gpus", headers={"Authorization": f"Bearer {token}"}, timeout=5)
            except httpx.HTTPError:
                return False
            return r.status_code == 200 and len(r.json()["items"]) >= HOSTS * 8

        _wait("the gateway listing the fleet", fleet_listed, 300, lines)
        yield Running(base, token, conninfo, lines)
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(120)
        except subprocess.TimeoutExpired:
            run.kill()
        with psycopg.connect(pg_server, autocommit=True) as admin, contextlib.suppress(psycopg.Error):
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    b = Browser(ARTEFACTS).start()
    yield b
    b.close()


def gpus_listed(running: Running) -> list[str]:
    r = httpx.get(f"{running.base}/api/v1/gpus", headers={"Authorization": f"Bearer {running.token}"}, timeout=30)
    return [g["uuid"] for g in r.json()["items"]]


def severe(browser: Browser) -> list[str]:
    """Console errors (CSP violations, script errors), leaving out the prompt's own 401."""
    return [
        e["message"]
        for e in browser.console()
        if e.get("level") == "SEVERE" and "status of 401" not in e.get("message", "")
    ]


def test_run_prints_the_pages_url_first(running: Running) -> None:
    assert running.lines[0].startswith(f"pages: {running.base}/ ") and "api token printed below" in running.lines[0]


def test_sign_in_then_fleet_to_a_gpu_and_back(browser: Browser, running: Running) -> None:
    browser.get(running.base + "/")
    assert browser.find("h1").text == "Sign in" and browser.title.startswith("Sign in")
    browser.screenshot("01-token-prompt")
    browser.find("#token").type("not-the-token-0123456789")
    browser.find("#login button").click()
    _wait_text(browser, "#login-msg", "not accepted")
    field = browser.find("#token")
    browser.run("arguments[0].value = ''", {"element-6066-11e4-a52e-4f735466cecf": field.ref})
    field.type(running.token)
    browser.find("#login button").click()
    _wait_text(browser, "h1", "Fleet")
    assert running.token not in browser.url
    (cookie,) = [c for c in browser.cookies() if c["name"] == "gpu_telemetry_token"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert browser.run("return document.cookie") == ""  # scripts cannot read it

    listed = gpus_listed(running)
    cells = browser.find_all("svg.heatmap a rect.cell")
    assert len(cells) == len(listed)
    counts = {
        dt.text: dd.text
        for dt, dd in zip(browser.find_all("dl.counts dt"), browser.find_all("dl.counts dd"), strict=True)
    }
    assert counts["GPUs"] == str(len(listed)) and counts["hosts"] == str(HOSTS)
    legend = browser.find("svg.legend").text
    assert "0 %" in legend and "100 %" in legend and "not reporting" in legend
    assert len(browser.find_all("#hottest + table")[0].find_all("tbody tr")) >= 1
    shot = browser.screenshot("02-fleet")
    if os.environ.get("PIPELINE_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, DOCS_SHOT)

    first = browser.find("svg.heatmap a[aria-label]")  # a GPU's cell (a host's label links to its GPUs)
    target = first.attribute("href")
    assert target is not None and target.startswith("/gpus/")
    first.click()
    browser.wait_url("/gpus/")
    _wait_text(browser, "h1", "GPU")
    assert len(browser.find_all("svg.chart.line")) >= 1 and "CSV" in browser.find("p.pager").text
    browser.screenshot("03-gpu")
    browser.back()
    _wait_text(browser, "h1", "Fleet")
    assert browser.url == running.base + "/"
    assert severe(browser) == []


def test_the_heatmap_is_reached_and_opened_with_the_keyboard(browser: Browser, running: Running) -> None:
    browser.get(running.base + "/")
    _wait_text(browser, "h1", "Fleet")
    for _ in range(60):
        browser.keys("tab")
        if browser.run("return !!document.activeElement.querySelector('rect.cell')"):
            break
    else:
        raise AssertionError("Tab never reached a heatmap cell")
    assert browser.run("return document.activeElement.getAttribute('href')").startswith("/gpus/")
    browser.keys("enter")
    browser.wait_url("/gpus/")
    _wait_text(browser, "h1", "GPU")


def test_the_pipeline_page_shows_the_queue_and_refreshes_itself(browser: Browser, running: Running) -> None:
    browser.get(running.base + "/pipeline")
    _wait_text(browser, "h1", "Pipeline")
    # The page refreshes itself in place every 5 s: each read is retried when it raced a refresh.
    lag_rows = browser.settled(lambda: browser.find_all("#lag ~ table")[0].find_all("tbody tr"))
    assert len(lag_rows) == 4  # one per partition
    states = browser.settled(lambda: [r.text for r in browser.find_all("#actors + table")[0].find_all("tbody tr")])
    assert states and all("running" in s for s in states), states

    def counts() -> str:
        return browser.settled(lambda: browser.find("dl.counts").text)

    before = counts()
    deadline = time.monotonic() + 30
    while counts() == before:  # refreshed in place every 5 s while samples flow
        assert time.monotonic() < deadline, "the pipeline page did not refresh itself"
        time.sleep(0.5)
    assert "/pipeline" in browser.url and "rows/s in" in counts()
    browser.screenshot("04-pipeline")
    browser.get(running.base + "/usage")
    _wait_text(browser, "h1", "Usage")
    assert browser.find("form select[name=group_by]")
    browser.screenshot("05-usage")
    assert severe(browser) == []


def test_dark_mode_follows_the_browser(browser: Browser, running: Running) -> None:
    browser.call(
        "POST",
        "goog/cdp/execute",
        {
            "cmd": "Emulation.setEmulatedMedia",
            "params": {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
        },
    )
    try:
        browser.get(running.base + "/")
        _wait_text(browser, "h1", "Fleet")
        background = browser.run("return getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(21, 22, 26)", background
        browser.screenshot("06-fleet-dark")
    finally:
        browser.call("POST", "goog/cdp/execute", {"cmd": "Emulation.setEmulatedMedia", "params": {"features": []}})


def test_with_authentication_off_the_pages_open_at_once(browser: Browser, running: Running) -> None:
    import uvicorn

    from pipeline.config import GatewaySettings
    from pipeline.gateway.app import build_app
    from pipeline.storage.reader import Reader

    reader = Reader(running.conninfo)
    reader.open(wait=True)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_app(reader, GatewaySettings(auth="off")), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        browser.call("DELETE", "cookie")
        browser.get(f"http://127.0.0.1:{port}/")
        _wait_text(browser, "h1", "Fleet")
        assert not browser.find_all("form[action='/logout']") and browser.cookies() == []
        browser.screenshot("07-fleet-auth-off")
    finally:
        server.should_exit = True
        thread.join(10)
        reader.close()


def _wait_text(browser: Browser, css: str, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = browser.find_all(css)
        if found and text in found[0].text:
            return
        if time.monotonic() > deadline:
            shown = found[0].text if found else "(none)"
            raise AssertionError(f"{css} shows {shown!r}, not {text!r}, at {browser.url}")
        time.sleep(0.2)
