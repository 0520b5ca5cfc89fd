"""Scrape targets: parsing target lists, expanding DNS names, and splitting targets between streamers.

A target is written as a URL (``http://node-7:9400/metrics``) or as ``host[:port][/path]``, which
means dcgm-exporter's defaults: plain HTTP, port 9400, path ``/metrics``. A ``dns+http://`` (or
``dns+https://``) target names a DNS name with many addresses, such as a headless Service in front
of a dcgm-exporter DaemonSet: every address becomes a target of its own.

Streamer ``i`` of ``n`` scrapes the targets whose key hash (``KeyHasher.shard_of``) is ``i``, so each
target is scraped by exactly one streamer, and a new streamer count re-splits them.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from pipeline.errors import ConfigError, SourceError
from pipeline.queue.keys import KeyHasher
from pipeline.sources.base import Shard

__all__ = [
    "DEFAULT_PATH",
    "DEFAULT_PORT",
    "TargetList",
    "assign_targets",
    "normalize_target",
    "parse_targets",
    "read_targets_file",
    "resolve_addresses",
]

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 9400  # dcgm-exporter's port
DEFAULT_PATH: Final = "/metrics"
_SCHEMES: Final = ("http", "https", "dns+http", "dns+https")

Resolver = Callable[[str, int], list[str]]


def normalize_target(text: str) -> str:
    """One target as a full URL: ``host[:port][/path]`` gets ``http://``, port 9400 and ``/metrics``."""
    raw = text.strip()
    if any(ch.isspace() for ch in raw):
        raise ConfigError(f"scrape target `{text}` contains whitespace", value=text)
    bare = "://" not in raw
    parts = urlsplit(f"http://{raw}" if bare else raw)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigError(
            f"scrape target `{text}`: scheme `{parts.scheme}` is not one of {', '.join(_SCHEMES)}", value=text
        )
    if not parts.hostname:
        raise ConfigError(f"scrape target `{text}` has no host", value=text)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"scrape target `{text}` has an invalid port", value=text) from None
    netloc = parts.netloc
    if bare and port is None:
        netloc = f"{netloc}:{DEFAULT_PORT}"
    return urlunsplit((scheme, netloc, parts.path or DEFAULT_PATH, parts.query, ""))


def parse_targets(entries: str | Iterable[str]) -> list[str]:
    """Targets from text (one per line and/or comma-separated; ``#`` starts a comment), deduplicated."""
    lines = entries.splitlines() if isinstance(entries, str) else list(entries)
    out: list[str] = []
    for line in lines:
        for item in line.split("#", 1)[0].split(","):
            if item.strip():
                url = normalize_target(item)
                if url not in out:
                    out.append(url)
    return out


def read_targets_file(path: str | Path) -> list[str]:
    """The targets listed in a file; ``SourceError`` if it cannot be read, ``ConfigError`` naming a bad line."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"scrape target file {p} cannot be read: {exc}", path=str(p)) from None
    out: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            found = parse_targets([line])
        except ConfigError as exc:
            raise ConfigError(f"{p}, line {number}: {exc}", path=str(p), line=number) from None
        out.extend(url for url in found if url not in out)
    return out


def assign_targets(targets: Sequence[str], shard: Shard, hasher: KeyHasher | None = None) -> list[str]:
    """The targets streamer ``shard.index`` of ``shard.count`` scrapes (each target lands in one shard)."""
    if shard.count == 1:
        return list(targets)
    h = hasher or KeyHasher()
    return [t for t in targets if h.shard_of(t, shard.count) == shard.index]


def resolve_addresses(host: str, port: int) -> list[str]:
    """Every TCP address a DNS name resolves to, sorted; ``OSError`` if it does not resolve."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


def _expand(url: str, addresses: Sequence[str]) -> list[str]:
    parts = urlsplit(url)
    scheme = parts.scheme.removeprefix("dns+")
    port = parts.port or (443 if scheme == "https" else 80)
    out = []
    for address in addresses:
        host = f"[{address}]" if ":" in address else address
        out.append(urlunsplit((scheme, f"{host}:{port}", parts.path, parts.query, "")))
    return out


class TargetList:
    """The current targets: fixed ones plus a file re-read when it changes, with ``dns+`` names expanded.

    ``load()`` fails (``SourceError``/``ConfigError``) when the list is unusable at start-up. Later,
    ``current()`` never raises: a file that turns unreadable or a name that stops resolving keeps
    the last good list, and the problem is logged once.
    """

    def __init__(
        self,
        targets: Iterable[str] = (),
        file: str | Path | None = None,
        dns_ttl_s: float = 30.0,
        resolver: Resolver = resolve_addresses,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fixed = parse_targets(list(targets))
        self._file = Path(file) if file is not None else None
        self._dns_ttl = dns_ttl_s
        self._resolver = resolver
        self._clock = clock
        self._from_file: list[str] = []
        self._file_mtime: float | None = None
        self._file_problem: str | None = None
        self._resolved: dict[str, tuple[float, list[str]]] = {}
        self._dns_problems: dict[str, str] = {}

    @property
    def configured(self) -> list[str]:
        """The targets as configured (before DNS expansion)."""
        return self._fixed + [t for t in self._from_file if t not in self._fixed]

    def load(self) -> None:
        """Read the file (if any) and check there is at least one target."""
        if self._file is not None:
            self._from_file = read_targets_file(self._file)
            self._file_mtime = self._mtime()
        if not self.configured:
            where = f" (file {self._file} lists none)" if self._file is not None else ""
            raise SourceError(f"no scrape targets given: pass --scrape URL[,URL...] or --scrape-file FILE{where}")

    def current(self) -> list[str]:
        """The targets to scrape now, ``dns+`` names replaced by one URL per address."""
        self._refresh_file()
        out: list[str] = []
        for url in self.configured:
            for expanded in self._expanded(url) if url.startswith("dns+") else [url]:
                if expanded not in out:
                    out.append(expanded)
        return out

    def _mtime(self) -> float | None:
        try:
            return self._file.stat().st_mtime if self._file is not None else None
        except OSError:
            return None

    def _refresh_file(self) -> None:
        if self._file is None:
            return
        mtime = self._mtime()
        if mtime is not None and mtime == self._file_mtime:
            return
        try:
            targets = read_targets_file(self._file)
        except (SourceError, ConfigError) as exc:
            if self._file_problem != str(exc):
                log.warning("keeping the previous scrape targets: %s", exc)
                self._file_problem = str(exc)
            return
        if targets != self._from_file:
            log.info("scrape target file %s now lists %d target(s)", self._file, len(targets))
        self._from_file, self._file_mtime, self._file_problem = targets, mtime, None

    def _expanded(self, url: str) -> list[str]:
        now = self._clock()
        cached = self._resolved.get(url)
        if cached is not None and now - cached[0] < self._dns_ttl:
            return cached[1]
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "dns+https" else 80)
        try:
            addresses = self._resolver(host, port)
        except OSError as exc:
            problem = f"{exc}"
            if self._dns_problems.get(url) != problem:
                log.warning("scrape target %s does not resolve (%s); keeping its last addresses", url, problem)
                self._dns_problems[url] = problem
            previous = [] if cached is None else cached[1]
            self._resolved[url] = (now, previous)
            return previous
        self._dns_problems.pop(url, None)
        expanded = _expand(url, addresses)
        if cached is None or cached[1] != expanded:
            log.info("scrape target %s resolves to %d address(es)", url, len(expanded))
        self._resolved[url] = (now, expanded)
        return expanded
