"""Static checks of the TimescaleDB migrations (002, 003, 005, 006, 024).

TimescaleDB cannot be installed on the development machines, so this SQL never runs here: on plain
PostgreSQL the integration tests only prove that each file is a no-op. These checks read the text
instead: every TimescaleDB call sits behind the extension guard and (except the backfill's CALLs) in
dynamic SQL, only functions and options the TimescaleDB 2.x documentation defines are used, version-
specific APIs sit behind their version check, the rollups expose the columns the reader expects, the
policy windows respect the retention, and the documented defaults match docs/storage.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SQL = ROOT / "sql"
DOCS = ROOT / "docs" / "storage.md"

# Functions and procedures used, with the TimescaleDB release that documents them (2.x docs, target 2.28).
TIMESCALEDB_API = {
    "create_hypertable": "2.13 generalized form with a dimension builder",
    "by_range": "2.13",
    "add_columnstore_policy": "2.18 (procedure; replaces add_compression_policy)",
    "add_compression_policy": "2.0 (deprecated in 2.18, still supported)",
    "add_retention_policy": "2.0",
    "add_continuous_aggregate_policy": "2.0",
    "refresh_continuous_aggregate": "2.0 (procedure; not in a transaction block)",
    "time_bucket": "1.0",
    "last": "1.0",
}
TIMESCALEDB_OPTIONS = {
    "timescaledb.enable_columnstore",  # 2.18
    "timescaledb.segmentby",  # 2.18
    "timescaledb.orderby",  # 2.18
    "timescaledb.compress",  # before 2.18
    "timescaledb.compress_segmentby",  # before 2.18
    "timescaledb.compress_orderby",  # before 2.18
    "timescaledb.continuous",
    "timescaledb.materialized_only",
}
POSTGRES_FUNCTIONS = {
    "avg",
    "coalesce",
    "count",
    "current_setting",
    "format",
    "max",
    "min",
    "now",
    "nullif",
    "regexp_split_to_table",
    "trim",
    "split_part",
    "string_to_array",
    "array_to_string",
    "sum",
}
SQL_WORDS = {"exists", "in", "values", "with", "set", "as", "by", "and", "or", "not", "then", "array"}
GUARD = "IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN RETURN"
ROLLUP_COLUMNS = ["bucket", "gpu_key", "metric_id", "avg", "min", "max", "count", "last"]
NO_TRANSACTION = "-- migrate: no-transaction"


def timescaledb_files() -> list[Path]:
    files = sorted(SQL.glob("*_timescaledb_*.sql"))
    assert [f.name[:3] for f in files] == ["002", "003", "005", "006", "024"]
    return files


def statements(body: str) -> list[str]:
    """Split PL/pgSQL/SQL text at top-level semicolons; comments dropped, quoted text kept."""
    out, cur, i = [], [], 0
    while i < len(body):
        if body.startswith("--", i):
            i = body.find("\n", i) if "\n" in body[i:] else len(body)
            continue
        ch = body[i]
        if ch == "'":
            end = i + 1
            while True:
                end = body.index("'", end)
                if body.startswith("''", end):
                    end += 2
                    continue
                break
            cur.append(body[i : end + 1])
            i = end + 1
            continue
        tag = re.match(r"\$[a-z_]*\$", body[i:])
        if tag:
            end = body.index(tag.group(0), i + len(tag.group(0))) + len(tag.group(0))
            cur.append(body[i:end])
            i = end
            continue
        if ch == ";":
            out.append(" ".join("".join(cur).split()))
            cur = []
        else:
            cur.append(ch)
        i += 1
    if "".join(cur).strip():
        out.append(" ".join("".join(cur).split()))
    return out


def do_bodies(path: Path) -> list[str]:
    """The bodies of the file's DO blocks; asserts the file holds nothing else but comments."""
    text = path.read_text()
    top = statements(text)
    assert top and all(s.startswith("DO $migration$") and s.endswith("$migration$") for s in top), path.name
    bodies = re.findall(r"DO \$migration\$(.*?)\$migration\$;", text, re.DOTALL)
    assert len(bodies) == len(top), path.name
    return bodies


def code(path: Path) -> str:
    """The file's DO bodies as one line of statements, comments dropped."""
    return " ".join(s for body in do_bodies(path) for s in statements(body))


def without_messages(text: str) -> str:
    """Text with the messages of RAISE statements removed (prose, not calls)."""
    return re.sub(r"RAISE \w+ '(?:[^']|'')*'(?: '(?:[^']|'')*')*", "RAISE", text)


def calls(text: str) -> set[str]:
    found = re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\(", without_messages(text))
    return {m.lower() for m in found} - SQL_WORDS


def is_timescaledb(stmt: str) -> bool:
    return bool(calls(stmt) & TIMESCALEDB_API.keys()) or "timescaledb." in stmt or "CREATE EXTENSION" in stmt


def action(stmt: str) -> str:
    """A statement without the control flow that leads to it (BEGIN, ELSE, IF ... THEN)."""
    return re.sub(r"^(?:BEGIN |ELSE |IF .*? THEN )+", "", stmt)


def select_list(definition: str) -> list[str]:
    """Output column names of a view's SELECT list (alias, else the bare column)."""
    text = definition[definition.index(" AS SELECT ") + len(" AS SELECT ") : definition.index(" FROM ")]
    items, depth, cur = [], 0, ""
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    items.append(cur.strip())
    return [re.split(r"\bAS ", item)[-1].strip() for item in items]


@pytest.mark.parametrize("path", timescaledb_files(), ids=lambda p: p.name)
def test_every_timescaledb_call_is_behind_the_extension_guard(path: Path) -> None:
    for body in do_bodies(path):
        stmts = statements(body)
        guard = next(i for i, s in enumerate(stmts) if s.endswith(GUARD) or "pg_available_extensions" in s)
        assert not any(is_timescaledb(s) for s in stmts[:guard]), path.name
        used = [s for s in stmts[guard + 1 :] if is_timescaledb(s)]
        assert used, f"{path.name}: no TimescaleDB statement after the guard"
        for s in used:
            # Dynamic SQL, so plain PostgreSQL never parses it; 006's CALLs must be static (see the file).
            expected = "CALL " if path.name.startswith("006") else "EXECUTE "
            assert action(s).startswith(expected), f"{path.name}: {s[:80]}"


def test_the_extension_is_created_only_when_available_and_preloaded() -> None:
    stmts = statements(do_bodies(SQL / "002_timescaledb_extension.sql")[0])
    create = next(i for i, s in enumerate(stmts) if "CREATE EXTENSION" in s)
    checks = " ".join(stmts[:create])
    assert "pg_available_extensions" in checks and "shared_preload_libraries" in checks
    assert stmts[create] == "EXECUTE 'CREATE EXTENSION IF NOT EXISTS timescaledb'"


@pytest.mark.parametrize("path", timescaledb_files(), ids=lambda p: p.name)
def test_only_documented_timescaledb_functions_and_options_are_used(path: Path) -> None:
    text = code(path)
    unknown = calls(text) - TIMESCALEDB_API.keys() - POSTGRES_FUNCTIONS
    assert not unknown, f"{path.name} calls functions not in the documented list: {sorted(unknown)}"
    options = set(re.findall(r"timescaledb\.[a-z_]+", text))
    assert options <= TIMESCALEDB_OPTIONS, sorted(options - TIMESCALEDB_OPTIONS)


def test_version_specific_apis_are_behind_their_version_checks() -> None:
    body = code(SQL / "003_timescaledb_hypertable.sql")
    too_old = body.index("IF version < ARRAY[2, 13] THEN RAISE EXCEPTION")
    assert too_old < body.index("by_range(")
    new, old, end = (
        body.index("IF version >= ARRAY[2, 18] THEN"),
        body.index("ELSE EXECUTE 'ALTER TABLE telemetry SET (timescaledb.compress,"),
        body.index("END IF", body.index("add_compression_policy")),
    )
    assert new < body.index("add_columnstore_policy") < old < body.index("add_compression_policy") < end
    assert "segmentby = ''gpu_key, metric_id''" in body and "compress_segmentby = ''gpu_key, metric_id''" in body
    assert "orderby = ''ts''" in body
    assert "migrate_data => true" in body and "create_default_indexes => false" in body


def rollups() -> dict[str, str]:
    body = code(SQL / "005_timescaledb_rollups.sql")
    return dict(re.findall(r"CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+) (.*?) WITH NO DATA", body))


def test_rollups_have_the_reader_columns_and_are_created_without_data() -> None:
    views = rollups()
    assert set(views) == {"telemetry_1m", "telemetry_1h"}
    for name, definition in views.items():
        # WITH NO DATA: materializing "WITH DATA" is refused in a transaction block or a DO block.
        assert "timescaledb.continuous" in definition and "timescaledb.materialized_only = false" in definition
        assert select_list(definition) == ROLLUP_COLUMNS, name
    assert "time_bucket(INTERVAL '1 minute', ts)" in views["telemetry_1m"]
    assert (
        "time_bucket(INTERVAL '1 hour', bucket)" in views["telemetry_1h"]
        and "FROM telemetry_1m" in views["telemetry_1h"]
    )


def interval_hours(text: str) -> float:
    value, unit = text.split()
    return float(value) * {"minute": 1 / 60, "minutes": 1 / 60, "hour": 1, "hours": 1, "day": 24, "days": 24}[unit]


def test_refresh_windows_stay_inside_the_retention_of_their_source() -> None:
    body = code(SQL / "005_timescaledb_rollups.sql")
    starts = dict(re.findall(r"add_continuous_aggregate_policy\('(\w+)', start_offset => INTERVAL '([^']+)'", body))
    kept = dict(re.findall(r"add_retention_policy\('(\w+)', drop_after => INTERVAL '([^']+)'", body))
    raw_floor_hours = 24  # 003 refuses a raw retention of 1 day or less
    assert interval_hours(starts["telemetry_1m"]) < raw_floor_hours
    assert interval_hours(starts["telemetry_1h"]) < interval_hours(kept["telemetry_1m"])
    hypertable = (SQL / "003_timescaledb_hypertable.sql").read_text()
    assert "IF retention <= interval '1 day' THEN" in hypertable


def test_the_backfill_runs_outside_a_transaction_as_one_statement() -> None:
    path = SQL / "006_timescaledb_rollups_backfill.sql"
    assert path.read_text().splitlines()[0] == NO_TRANSACTION
    assert len(statements(path.read_text())) == 1
    body = statements(do_bodies(path)[0])
    assert [s.split("(")[1].split(",")[0] for s in body if s.startswith("CALL")] == ["'telemetry_1m'", "'telemetry_1h'"]


def documented(name: str) -> str:
    match = re.search(rf"^\| {re.escape(name)} \| `([^`]+)` \|", DOCS.read_text(), re.MULTILINE)
    assert match, f"docs/storage.md has no '| {name} | `...` |' row"
    return match.group(1)


@pytest.mark.parametrize(
    ("setting", "doc_row"),
    [("chunk_interval", "Chunk interval"), ("compress_after", "Compress after"), ("retention", "Raw retention")],
)
def test_defaults_match_docs(setting: str, doc_row: str) -> None:
    text = (SQL / "003_timescaledb_hypertable.sql").read_text()
    default = re.search(rf"current_setting\('pipeline\.{setting}', true\), ''\), '([^']+)'\)", text)
    assert default, setting
    assert default.group(1) == documented(doc_row)


def test_chunk_interval_arithmetic_holds() -> None:
    text = (SQL / "003_timescaledb_hypertable.sql").read_text()
    assert "-- Chunk interval: 15 minutes." in text
    bytes_per_sample = float(documented("Uncompressed bytes/sample").split()[0])
    rate, chunk_s, ram = 250_000, 15 * 60, 128 * 2**30
    assert rate * chunk_s * bytes_per_sample <= 0.25 * ram
    assert rate * 3600 * bytes_per_sample > 0.25 * ram  # why not 1 hour


USAGE_COLUMNS = ["bucket", "gpu_key", "workload_id", "seconds", "active_s", "mem_idle_s", "util_s", "energy_j"]


def test_the_usage_aggregate_sums_every_usage_1m_column_and_refreshes_inside_its_retention() -> None:
    body = code(SQL / "024_timescaledb_usage.sql")
    views = dict(re.findall(r"CREATE MATERIALIZED VIEW IF NOT EXISTS (usage_1[hd]) (.*?) WITH NO DATA", body))
    assert set(views) == {"usage_1h", "usage_1d"}
    for (name, definition), (width, source) in zip(
        sorted(views.items(), key=lambda v: v[0] != "usage_1h"),
        (("1 hour", "usage_1m"), ("1 day", "usage_1h")),
        strict=True,
    ):
        assert "timescaledb.continuous" in definition and "timescaledb.materialized_only = false" in definition
        assert select_list(definition) == USAGE_COLUMNS, name
        assert f"time_bucket(INTERVAL '{width}', bucket)" in definition and f"FROM {source}" in definition
        assert all(f"sum({c}) AS {c}" in definition for c in USAGE_COLUMNS[3:])  # additive: an exact hierarchy
    plain = (SQL / "023_attribution.sql").read_text()
    table = re.search(r"CREATE TABLE usage_1m \((.*?)\n\);", plain, re.DOTALL)
    assert table and [line.split()[0] for line in table.group(1).strip().splitlines()[:8]] == USAGE_COLUMNS
    starts = dict(re.findall(r"add_continuous_aggregate_policy\('(\w+)', start_offset => INTERVAL '([^']+)'", body))
    kept = dict(re.findall(r"add_retention_policy\('(\w+)', drop_after => INTERVAL '([^']+)'", body))
    assert interval_hours(starts["usage_1h"]) < interval_hours(kept["usage_1m"])
    assert interval_hours(starts["usage_1d"]) < interval_hours(kept["usage_1h"])
    assert "create_hypertable(%L, by_range(%L, %L::interval)" in body and "'usage_1m', 'bucket', '1 day'" in body
    # the Grafana view over the table goes before the table, and comes back over the aggregate
    assert body.index("DROP VIEW IF EXISTS grafana.usage_1h") < body.index("DROP TABLE usage_1h")
    assert body.index("CREATE VIEW grafana.usage_1h") > body.index("CREATE MATERIALIZED VIEW")
