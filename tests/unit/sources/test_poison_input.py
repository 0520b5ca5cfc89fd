"""Poison input: NUL bytes, invalid UTF-8, files as editors write them: a reject or a good row, never a crash."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.sources.dcgm_csv import HEADER, DcgmCsvSource
from tests.unit.sources.test_dcgm_csv_and_synthetic import GOOD, read_all


def csv_bytes(rows: list[list[str]], quoting: int = csv.QUOTE_ALL, line_end: str = "\n") -> bytes:
    out = io.StringIO()
    w = csv.writer(out, quoting=quoting, lineterminator=line_end)
    w.writerow(HEADER)
    w.writerows(rows)
    return out.getvalue().encode()


def row(i: int, **changes: str) -> list[str]:
    r = list(GOOD)
    r[HEADER.index("value")] = str(i)
    for name, v in changes.items():
        r[HEADER.index(name)] = v
    return r


def test_a_nul_byte_is_a_reject_with_a_reason_and_never_reaches_the_database(tmp_path: Path) -> None:
    rows = [row(1), row(2, Hostname="host\x00-1"), row(3), row(4, labels_raw='a="x\x00"')]
    path = tmp_path / "nul.csv"
    path.write_bytes(csv_bytes(rows))
    samples, rejects = read_all(DcgmCsvSource(path))
    assert samples.column("value").to_pylist() == [1.0, 3.0]
    assert rejects is not None and rejects.column("line").to_pylist() == [3, 5]
    assert all("NUL" in r for r in rejects.column("reason").to_pylist())
    # PostgreSQL refuses NUL in text: nothing stored may carry one, not even the raw text of the reject
    for col in ("raw", "reason", "source"):
        assert not any("\x00" in (v or "") for v in rejects.column(col).to_pylist())
    for name in ("hostname", "uuid", "metric", "device", "model"):
        assert not any("\x00" in (v or "") for v in samples.column(name).to_pylist())


@pytest.mark.parametrize("where", [0, 7000])
def test_invalid_utf8_anywhere_is_a_reject_with_a_reason(tmp_path: Path, where: int) -> None:
    rows = [row(i) for i in range(8000)]
    lines = csv_bytes(rows).split(b"\n")
    lines[1 + where] = lines[1 + where].replace(b"host-1", b"host-\xff\xfe1")
    path = tmp_path / "utf8.csv"
    path.write_bytes(b"\n".join(lines))
    source = DcgmCsvSource(path, block_bytes=64 << 10)  # many blocks: the bad one is far from the first
    samples, rejects = read_all(source)
    assert samples.num_rows == 7999
    assert rejects is not None and rejects.column("line").to_pylist() == [2 + where]
    assert "UTF-8" in rejects.column("reason")[0].as_py()
    assert "\ufffd" in rejects.column("raw")[0].as_py()  # the raw text kept, bad bytes replaced


@pytest.mark.parametrize(
    "shape",
    ["bom", "crlf", "no_final_newline", "unquoted", "bom_crlf_unquoted_no_newline"],
)
def test_files_as_editors_write_them_read_like_any_other(tmp_path: Path, shape: str) -> None:
    rows = [row(i, labels_raw="") for i in range(5)]
    quoting = csv.QUOTE_MINIMAL if "unquoted" in shape else csv.QUOTE_ALL
    data = csv_bytes(rows, quoting=quoting, line_end="\r\n" if "crlf" in shape else "\n")
    if "bom" in shape:
        data = b"\xef\xbb\xbf" + data
    if "no_newline" in shape or shape == "no_final_newline":
        data = data.rstrip(b"\r\n")
    path = tmp_path / f"{shape}.csv"
    path.write_bytes(data)
    samples, rejects = read_all(DcgmCsvSource(path))
    assert rejects is None
    assert samples.column("value").to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert samples.column("hostname").to_pylist() == ["host-1"] * 5
    assert samples.column("uuid").to_pylist() == ["GPU-aaaa"] * 5
    assert all(not m.endswith("\r") for m in samples.column("metric").to_pylist())


def test_the_real_file_still_reads_every_good_row(real_csv: Path) -> None:
    samples, _ = read_all(DcgmCsvSource(real_csv))
    assert samples.num_rows == 2470
    assert isinstance(samples, pa.Table)
