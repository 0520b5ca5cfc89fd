"""Which ``Accept-Encoding`` headers take gzip (RFC 9110, 12.5.3): what ``GzipLarge`` compresses for."""

from __future__ import annotations

import pytest

from pipeline.gateway.http import accepts_gzip


def headers(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"x"), *((b"accept-encoding", v.encode()) for v in values)]


@pytest.mark.parametrize(
    "values",
    [("gzip",), ("GZIP",), ("br, gzip;q=0.5",), ("*",), ("x-gzip",), ("*;q=0, gzip",), ("gzip;q=abc, *, gzip",)],
)
def test_taken(values: tuple[str, ...]) -> None:
    assert accepts_gzip(headers(*values))


@pytest.mark.parametrize(
    "values",
    [
        (),
        ("identity",),
        ("br, deflate",),
        ("gzip;q=0",),
        ("gzip; Q=0",),
        ("gzip;foo=1;q=0",),
        ("*, gzip;q=0",),  # named outranks the wildcard
        ("*", "gzip;q=0"),  # in a second header as well
        ("*;q=0",),
        ("gzip;q=abc",),
    ],
)
def test_refused(values: tuple[str, ...]) -> None:
    assert not accepts_gzip(headers(*values))
