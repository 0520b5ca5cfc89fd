"""Where a deployed pipeline's desired state lives: the ``pipeline_deployments`` table.

The supervisor is a detached actor that Ray restarts with its original constructor arguments; what
changed since (a new deploy, an operator's pin, a re-split's layout) must come from somewhere that
outlives the actor, the node and the GCS. The database already holds the pipeline's offsets, so it
holds this too: a restarted supervisor reads its row and resumes exactly.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pipeline.errors import DatabaseUnavailable
from pipeline.storage.database import connect

__all__ = ["Deployment", "DeploymentStore"]


@dataclass(frozen=True, slots=True)
class Deployment:
    """One namespace's stored desired state."""

    namespace: str
    spec: dict[str, Any]
    pins: dict[str, int | None] = field(default_factory=dict)
    layout: dict[str, Any] | None = None
    baseline: dict[str, int] = field(default_factory=dict)


class DeploymentStore:
    """Reads and writes ``pipeline_deployments`` rows; each call is its own short transaction."""

    def __init__(self, conninfo: str, timeout_s: float = 5.0) -> None:
        self._conninfo = conninfo
        self._timeout = timeout_s

    def _execute(self, query: str | sql.Composed, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            with contextlib.closing(connect(self._conninfo, self._timeout, autocommit=True)) as conn:
                cur = conn.execute(query, params)
                return list(cur.fetchall()) if cur.description else []
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"deployment state unreachable: {str(exc).strip()}") from None

    def load(self, namespace: str) -> Deployment | None:
        """The stored state of ``namespace``, or None when nothing is deployed there."""
        rows = self._execute(
            "SELECT spec, pins, layout, baseline FROM pipeline_deployments WHERE namespace = %s", (namespace,)
        )
        if not rows:
            return None
        spec, pins, layout, baseline = rows[0]
        return Deployment(namespace, dict(spec), dict(pins), layout, dict(baseline))

    def create(self, namespace: str, spec: Mapping[str, Any], baseline: Mapping[str, int]) -> Deployment:
        """Store a new deployment unless one exists; returns the stored one (the first writer wins)."""
        self._execute(
            "INSERT INTO pipeline_deployments (namespace, spec, baseline) VALUES (%s, %s, %s) "
            "ON CONFLICT (namespace) DO NOTHING",
            (namespace, json.dumps(spec), json.dumps(dict(baseline))),
        )
        stored = self.load(namespace)
        assert stored is not None
        return stored

    def save_spec(self, namespace: str, spec: Mapping[str, Any]) -> None:
        """Replace the desired settings (a new deploy of a running pipeline)."""
        self._update(namespace, "spec", spec)

    def save_pins(self, namespace: str, pins: Mapping[str, int | None]) -> None:
        """Store the operator's pins (``scale``)."""
        self._update(namespace, "pins", pins)

    def save_layout(self, namespace: str, layout: Mapping[str, Any]) -> None:
        """Store the fleet's shard layout (epoch, counts, retired totals)."""
        self._update(namespace, "layout", layout)

    def _update(self, namespace: str, column: str, value: Mapping[str, Any]) -> None:
        query = sql.SQL("UPDATE pipeline_deployments SET {} = %s, updated_at = now() WHERE namespace = %s").format(
            sql.Identifier(column)
        )
        self._execute(query, (json.dumps(dict(value)), namespace))

    def delete(self, namespace: str) -> None:
        """Forget the deployment and its streamers' checkpoints (after ``stop`` removed its actors)."""
        self._execute("DELETE FROM producer_checkpoints WHERE namespace = %s", (namespace,))
        self._execute("DELETE FROM pipeline_deployments WHERE namespace = %s", (namespace,))
