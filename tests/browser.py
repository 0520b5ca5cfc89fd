"""A real headless Chromium for page tests, driven by Debian's chromedriver over W3C WebDriver (httpx).

No client library: the protocol is a handful of JSON calls (new session, navigate, find, click,
type, keys, back, screenshot, cookies, the console log). ``Browser.start`` skips the test, with the
reason, where ``chromium`` or ``chromedriver`` is missing (.ci/run installs both).
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

__all__ = ["Browser", "Element"]

_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
T = TypeVar("T")
KEYS = {"tab": "\ue004", "enter": "\ue007", "shift": "\ue008"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Element:
    """One element of the current page."""

    def __init__(self, browser: Browser, ref: str) -> None:
        self._b = browser
        self.ref = ref

    def click(self) -> None:
        self._b.call("POST", f"element/{self.ref}/click", {})

    def type(self, text: str) -> None:
        self._b.call("POST", f"element/{self.ref}/value", {"text": text})

    @property
    def text(self) -> str:
        return str(self._b.call("GET", f"element/{self.ref}/text"))

    def find_all(self, css: str) -> list[Element]:
        """Elements matching ``css`` inside this one."""
        found = self._b.call("POST", f"element/{self.ref}/elements", {"using": "css selector", "value": css})
        return [Element(self._b, e[_ELEMENT]) for e in found]

    def attribute(self, name: str) -> str | None:
        value = self._b.call("GET", f"element/{self.ref}/attribute/{name}")
        return None if value is None else str(value)


class Browser:
    """One headless Chromium session; screenshots go to ``artefacts``."""

    def __init__(self, artefacts: Path, width: int = 1280, height: int = 1000) -> None:
        self.artefacts = artefacts
        self._size = (width, height)
        self._driver: subprocess.Popen[bytes] | None = None
        self._http: httpx.Client | None = None
        self._session = ""

    def start(self) -> Browser:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        driver = shutil.which("chromedriver")
        if chromium is None or driver is None:
            pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
        port = _free_port()
        self._driver = subprocess.Popen(
            [driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self._http.get("/status").json()["value"]["ready"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("chromedriver did not become ready in 30 s")
            time.sleep(0.2)
        options = {
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                f"--window-size={self._size[0]},{self._size[1]}",
            ],
        }
        caps = {"browserName": "chrome", "goog:chromeOptions": options, "goog:loggingPrefs": {"browser": "ALL"}}
        r = self._http.post("/session", json={"capabilities": {"alwaysMatch": caps}})
        r.raise_for_status()
        self._session = r.json()["value"]["sessionId"]
        self.artefacts.mkdir(parents=True, exist_ok=True)
        return self

    def close(self) -> None:
        if self._http is not None and self._session:
            with contextlib.suppress(httpx.HTTPError):
                self._http.delete(f"/session/{self._session}")
        if self._http is not None:
            self._http.close()
        if self._driver is not None:
            self._driver.terminate()
            try:
                self._driver.wait(10)
            except subprocess.TimeoutExpired:
                self._driver.kill()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        assert self._http is not None
        r = self._http.request(method, f"/session/{self._session}/{path}", json=body)
        value = r.json().get("value")
        if r.status_code != 200:
            raise AssertionError(f"WebDriver {method} {path}: {r.status_code} {value}")
        return value

    # --- what tests use ---------------------------------------------------------------------------------

    def get(self, url: str) -> None:
        self.call("POST", "url", {"url": url})

    @property
    def url(self) -> str:
        return str(self.call("GET", "url"))

    @property
    def title(self) -> str:
        return str(self.call("GET", "title"))

    def back(self) -> None:
        self.call("POST", "back", {})

    def find_all(self, css: str) -> list[Element]:
        found = self.call("POST", "elements", {"using": "css selector", "value": css})
        return [Element(self, e[_ELEMENT]) for e in found]

    def find(self, css: str, timeout: float = 30) -> Element:
        """The first element matching ``css``, waiting up to ``timeout`` for it to appear."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find_all(css)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no element {css!r} on {self.url} after {timeout} s")
            time.sleep(0.2)

    def settled(self, read: Callable[[], T], timeout: float = 30) -> T:
        """``read()`` of a page that replaces its own elements (a refresh in place): read again when an
        element it held went stale in between, up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return read()
            except AssertionError as e:
                if "stale element" not in str(e) or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def wait_url(self, contains: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while contains not in self.url:
            if time.monotonic() > deadline:
                raise AssertionError(f"the browser is at {self.url}, not at a URL with {contains!r}")
            time.sleep(0.2)

    def run(self, script: str, *args: Any) -> Any:
        return self.call("POST", "execute/sync", {"script": script, "args": list(args)})

    def keys(self, *names: str) -> None:
        """Press and release keys (``tab``, ``enter``, ``shift``) on whatever has the focus."""
        actions = []
        for name in names:
            actions += [{"type": "keyDown", "value": KEYS[name]}, {"type": "keyUp", "value": KEYS[name]}]
        self.call("POST", "actions", {"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})

    def cookies(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "cookie"))

    def console(self) -> list[dict[str, Any]]:
        """Console entries since the last call (CSP violations and script errors show here)."""
        return list(self.call("POST", "se/log", {"type": "browser"}))

    def screenshot(self, name: str) -> Path:
        path = self.artefacts / f"{name}.png"
        path.write_bytes(base64.b64decode(self.call("GET", "screenshot")))
        return path
