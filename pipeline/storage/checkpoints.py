"""Streamers' resume checkpoints in the database (``producer_checkpoints``), one row per producer.

A checkpoint is written after every acknowledged flush, so this keeps one connection open and
upserts in autocommit; a lost connection is re-opened on the next call, and a database that is away
is a ``DatabaseUnavailable`` the streamer waits out like a broker that is away.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import psycopg

from pipeline.errors import DatabaseUnavailable
from pipeline.storage.database import connect

__all__ = ["CheckpointStore"]


class CheckpointStore:
    """Checkpoints of the producers of one Ray namespace."""

    def __init__(self, conninfo: str, namespace: str, timeout_s: float = 5.0) -> None:
        self._conninfo = conninfo
        self._namespace = namespace
        self._timeout = timeout_s
        self._conn: psycopg.Connection[Any] | None = None

    def _execute(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self._conninfo, self._timeout, autocommit=True)
            cur = self._conn.execute(query, params)
            return list(cur.fetchall()) if cur.description else []
        except psycopg.OperationalError as exc:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            raise DatabaseUnavailable(f"checkpoint store unreachable: {str(exc).strip()}") from None

    def save(self, producer: str, state: Mapping[str, Any]) -> None:
        """Store ``producer``'s latest checkpoint."""
        self._execute(
            "INSERT INTO producer_checkpoints (namespace, producer, state) VALUES (%s, %s, %s) "
            "ON CONFLICT (namespace, producer) DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
            (self._namespace, producer, json.dumps(dict(state))),
        )

    def load(self, producer: str) -> dict[str, Any] | None:
        """``producer``'s latest checkpoint, or None."""
        rows = self._execute(
            "SELECT state FROM producer_checkpoints WHERE namespace = %s AND producer = %s",
            (self._namespace, producer),
        )
        return dict(rows[0][0]) if rows else None

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
