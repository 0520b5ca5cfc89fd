"""Session settings of the write path: what a connection asks the server for."""

from __future__ import annotations

from pipeline.storage.database import SessionSettings, session_options
from pipeline.storage.writer import _merged


def test_session_options_ask_for_keepalives_and_timeouts() -> None:
    opts = session_options(SessionSettings(idle_in_transaction_s=2.5, lock_timeout_s=1.0, statement_timeout_s=30.0))
    assert (opts["keepalives"], opts["keepalives_idle"], opts["keepalives_interval"], opts["keepalives_count"]) == (
        1,
        10,
        5,
        3,
    )
    assert "-c idle_in_transaction_session_timeout=2500" in opts["options"]
    assert "-c lock_timeout=1000" in opts["options"]
    assert "-c statement_timeout=30000" in opts["options"]


def test_options_already_in_the_url_are_kept() -> None:
    merged = _merged("postgresql://u@h/db?options=-csearch_path%3Dx", session_options(SessionSettings()))
    assert merged["options"].startswith("-csearch_path=x ")
    assert "-c lock_timeout=3000" in merged["options"]
