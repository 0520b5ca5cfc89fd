"""The supervisor killed (SIGKILL) half way through a streamer re-split: no row lost, none stored twice.

A re-split stores the new layout before it removes any old streamer (write-ahead), starts the new
streamers, then stores the layout again without the re-split mark. The test holds the supervisor at
one of those layout writes — a trigger in the test's own database makes the UPDATE wait on an
advisory lock the test holds — kills the supervisor's process there, and lets Ray restart it:

* ``new-streamers-started``: the new streamers run and have stored rows, the layout still carries
  the re-split mark. The restarted supervisor finishes the re-split (removes every streamer it finds,
  seeds missing checkpoints) and the new layout's streamers resume from their checkpoints.
* ``old-streamers-paused``: every old streamer stopped at the common pass boundary, the new layout is
  not stored yet. The restarted supervisor adopts the old layout, whose streamers were paused: they
  must stream on, not sit idle while the pipeline reports them done.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import ray

from pipeline.config import Settings
from pipeline.runtime.driver import Pipeline
from pipeline.runtime.names import find, streamer_name
from pipeline.sources.synthetic import write_csv
from pipeline.storage.database import Database
from tests.integration.test_faults import expected_multiset, stored_multiset
from tests.support import assert_healthy, unique_namespace

LOCK = 4242
HOLDS = {
    # The write after the new streamers started: three of them, and no re-split mark (any more).
    "new-streamers-started": "NEW.layout->>'streamers' = '3' AND NOT (NEW.layout ? 'resplit')",
    # The write-ahead itself: the old streamers have paused at the boundary.
    "old-streamers-paused": "NEW.layout ? 'resplit'",
}


class LayoutHold:
    """Makes the supervisor's next matching layout UPDATE wait until released (a test-only trigger)."""

    def __init__(self, conninfo: str, condition: str) -> None:
        self._admin = psycopg.connect(conninfo, autocommit=True)
        self._admin.execute("CREATE TABLE resplit_gate (armed boolean NOT NULL)")
        self._admin.execute("INSERT INTO resplit_gate VALUES (true)")
        self._admin.execute(
            "CREATE FUNCTION resplit_hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF {condition} AND EXISTS (SELECT 1 FROM resplit_gate WHERE armed) THEN "
            f"PERFORM pg_advisory_xact_lock({LOCK}); END IF; RETURN NEW; END $$"
        )
        self._admin.execute("SELECT pg_advisory_lock(%s)", (LOCK,))
        self._admin.execute(
            "CREATE TRIGGER resplit_hold BEFORE UPDATE OF layout ON pipeline_deployments "
            "FOR EACH ROW EXECUTE FUNCTION resplit_hold()"
        )

    def waiting(self) -> int | None:
        """The backend held at the lock, if any."""
        row = self._admin.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND l.objid = %s AND NOT l.granted AND d.datname = current_database()",
            (LOCK,),
        ).fetchone()
        return None if row is None else int(row[0])

    def release(self, backend: int) -> None:
        """Disarm, abort the held UPDATE (its client is dead), and let go of the lock."""
        self._admin.execute("UPDATE resplit_gate SET armed = false")
        self._admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        self._admin.execute("SELECT pg_advisory_unlock(%s)", (LOCK,))

    def close(self) -> None:
        self._admin.execute("DROP TRIGGER IF EXISTS resplit_hold ON pipeline_deployments")
        self._admin.close()


@pytest.fixture
def layout_hold(fresh_db: str, request: pytest.FixtureRequest) -> Iterator[LayoutHold]:
    hold = LayoutHold(fresh_db, HOLDS[request.param])
    try:
        yield hold
    finally:
        hold.close()


def wait_for(what: str, timeout_s: float, check: Any) -> Any:
    deadline = time.monotonic() + timeout_s  # a bound, not a measurement
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def new_streamers_stored(namespace: str, count: int, epoch_before: int) -> bool:
    """Every streamer of the new layout runs and has published (its ids carry a newer epoch)."""
    for i in range(count):
        handle = find(streamer_name(i), namespace)
        if handle is None:
            return False
        try:
            s = ray.get(handle.stats.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return False
        epoch = int(str(s["id"]).split("@", 1)[1].split("/", 1)[0])
        if epoch <= epoch_before or not s["messages"]:
            return False
    return True


@pytest.mark.parametrize("layout_hold", list(HOLDS), indirect=True)
def test_a_supervisor_killed_during_a_resplit_loses_and_duplicates_nothing(
    ray_local: None, fresh_db: str, tmp_path: Path, layout_hold: LayoutHold, request: pytest.FixtureRequest
) -> None:
    moment = request.node.callspec.params["layout_hold"]
    csv = tmp_path / "fleet.csv"
    rows = write_csv(csv, hosts=4, scrapes=2)  # 640 rows a pass
    passes = 60
    settings = Settings.load(
        overrides={
            "streamer": {"csv": csv, "count": 1, "interval_s": 0.05, "batch_rows": 300, "passes": passes},
            "collector": {"count": 2, "poll_timeout_s": 0.05},
            "ray": {"namespace": unique_namespace()},
            "queue": {"partitions": 4, "group": "resplit-crash"},
        },
        environ={},
    )
    p = Pipeline(settings, Database(fresh_db))
    p.deploy(fresh=True)
    try:
        wait_for("first rows", 60, lambda: p.progress().stored > 0)
        controller = p._supervisor()
        before = ray.get(controller.stats.remote(), timeout=60)
        controller.scale.remote("streamer", 3)  # not awaited: its caller dies with the supervisor
        backend = wait_for("the supervisor to reach the held layout write", 120, layout_hold.waiting)
        if moment == "new-streamers-started":
            wait_for("the new streamers to publish", 60, lambda: new_streamers_stored(p.namespace, 3, before["epoch"]))
        os.kill(int(before["pid"]), signal.SIGKILL)
        layout_hold.release(backend)
        after = wait_for("the restarted supervisor", 120, lambda: _answer(controller))
        assert after["pid"] != before["pid"]
        wait_for("streamers to finish", 240, lambda: p.progress().streamers_done)
        final = p.drain(timeout_s=120)
        assert_healthy(p)
        stored, _ = p.stored_totals()
        streamers = final.status["roles"]["streamer"]["actual"]
    finally:
        p.stop()
    got, want = stored_multiset(fresh_db), expected_multiset(csv, passes)
    assert got == want, (stored, sum(got.values()), {k: (got[k], want[k]) for k in want if got[k] != want[k]})
    assert final.produced == stored == passes * rows
    if moment == "new-streamers-started":
        assert streamers == 3  # the restarted supervisor finished the re-split it had stored


def _answer(controller: Any) -> dict[str, Any] | None:
    try:
        return dict(ray.get(controller.stats.remote(), timeout=10))
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None
