"""The supervisor restarted by Ray resumes from its stored state, even while the database is away.

The controller is a detached actor with ``max_restarts``; Ray re-runs its constructor with the
original arguments. A constructor that gives up (the database stopped, as in a node drain that also
restarts PostgreSQL) leaves the actor dead for good, and nothing would ever re-create the supervisor:
it waits the outage out instead. The test runs its own PostgreSQL server so that it can stop it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import ray

from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.runtime.driver import Pipeline
from pipeline.runtime.names import CONTROLLER_NAME
from pipeline.sources.synthetic import write_csv
from pipeline.storage.database import Database
from pipeline.storage.migrate import migrate
from tests.integration.test_db_outage import OwnServer
from tests.support import assert_healthy, unique_namespace

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[OwnServer]:
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip("initdb/pg_ctl are not installed")
    root = Path(tempfile.mkdtemp(prefix="pipeline-supervisor-pg-"))
    own = OwnServer(root)
    own.start()
    try:
        yield own
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            own.stop()
        shutil.rmtree(root, ignore_errors=True)


def _controller_pid(namespace: str) -> int:
    controller = ray.get_actor(CONTROLLER_NAME, namespace=namespace)
    return int(ray.get(controller.stats.remote(), timeout=30)["pid"])


def test_a_supervisor_restarted_while_the_database_is_away_waits_and_resumes(
    ray_local: None, server: OwnServer, tmp_path: Path
) -> None:
    db = server.url()
    migrate(db)
    csv = tmp_path / "fleet.csv"
    rows = write_csv(csv, hosts=4, scrapes=3)
    namespace = unique_namespace()
    settings = Settings.load(
        overrides={
            # paced passes: ingest is still going when the supervisor dies
            "streamer": {"csv": csv, "count": 1, "interval_s": 0.5, "batch_rows": 100, "passes": 30},
            "collector": {"count": 1, "poll_timeout_s": 0.05},
            "ray": {"namespace": namespace},
            "queue": {"partitions": 2, "group": "sup"},
            "scaling": {"period_s": 0.5},
        },
        environ={},
    )
    p = Pipeline(settings, Database(db))
    p.deploy(fresh=True)
    try:
        before = _controller_pid(namespace)
        deadline = time.monotonic() + 60
        while p.stored_totals()[0] == 0:
            assert time.monotonic() < deadline, "nothing stored before the fault"
            time.sleep(0.2)

        server.stop()
        os.kill(before, 9)  # Ray restarts the detached supervisor; its constructor meets no database
        time.sleep(6)  # longer than a connect timeout plus a few retries
        server.start()

        deadline = time.monotonic() + 120
        after = None
        while after is None:
            with contextlib.suppress(ray.exceptions.RayError):
                after = _controller_pid(namespace)
            assert time.monotonic() < deadline, "the supervisor never came back"
            time.sleep(0.5)
        assert after != before

        deadline = time.monotonic() + 180
        while not p.progress().streamers_done:
            assert time.monotonic() < deadline, "ingest did not finish after the supervisor came back"
            time.sleep(0.5)
        final = p.drain(timeout_s=120)
        assert_healthy(p)
        stored, rejects = p.stored_totals()
    finally:
        p.stop()
    assert final.produced == 30 * rows == stored and rejects == 0
    with psycopg.connect(db) as c:
        total, distinct = c.execute(
            "SELECT count(*), count(DISTINCT (gpu_key, metric_id, ts)) FROM telemetry"
        ).fetchone()  # type: ignore[misc]
    assert total == distinct == 30 * rows


@ray.remote(max_restarts=1, max_task_retries=0)
class _Worker:
    """A stand-in actor whose worker loop is run the way streamers and collectors run theirs."""

    def start(self, fail: str) -> int:
        import threading

        from pipeline.errors import SourceError
        from pipeline.runtime.actors import run_worker

        def loop() -> None:
            time.sleep(0.2)
            raise (SourceError("bad file") if fail == "pipeline" else KeyError("a bug"))

        self.error: str | None = None
        threading.Thread(target=run_worker, args=("worker", loop, self._failed), daemon=True).start()
        return os.getpid()

    def _failed(self, error: str) -> None:
        self.error = error

    def state(self) -> tuple[int, str | None]:
        return os.getpid(), getattr(self, "error", None)


def test_an_unexpected_error_in_a_worker_loop_ends_the_process_so_that_ray_restarts_it(ray_local: None) -> None:
    worker = _Worker.remote()  # type: ignore[attr-defined]
    pid = ray.get(worker.start.remote("bug"), timeout=60)
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(ray.exceptions.RayActorError):
            now, error = ray.get(worker.state.remote(), timeout=30)
            if now != pid:
                break
        assert time.monotonic() < deadline, "the actor stayed up with a dead loop"
        time.sleep(0.2)
    assert error is None  # a new process (the restart), not the old one reporting

    # A PipelineError is an expected stop: the actor stays up and reports it.
    kept = _Worker.remote()  # type: ignore[attr-defined]
    pid = ray.get(kept.start.remote("pipeline"), timeout=60)
    deadline = time.monotonic() + 30
    while (state := ray.get(kept.state.remote(), timeout=30))[1] is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert state == (pid, "SourceError: bad file")
    ray.kill(worker)
    ray.kill(kept)


def test_the_supervisor_counts_restarts_and_recreates_an_actor_gone_for_good(
    ray_local: None, fresh_db: str, tmp_path: Path
) -> None:
    csv = tmp_path / "fleet.csv"
    rows = write_csv(csv, hosts=4, scrapes=3)
    namespace = unique_namespace()
    settings = Settings.load(
        overrides={
            "streamer": {"csv": csv, "count": 1, "interval_s": 0.5, "batch_rows": 100, "passes": 30},
            "collector": {"count": 2, "poll_timeout_s": 0.05},
            "ray": {"namespace": namespace},
            "queue": {"partitions": 2, "group": "sup"},
            "scaling": {"period_s": 0.5},
        },
        environ={},
    )
    p = Pipeline(settings, Database(fresh_db))
    p.deploy(fresh=True)
    try:
        deadline = time.monotonic() + 60
        while p.stored_totals()[0] == 0:
            assert time.monotonic() < deadline, "nothing stored before the faults"
            time.sleep(0.2)
        while not {"collector-0", "collector-1"} <= set(actors := p.progress().status["actors"]):
            assert time.monotonic() < deadline, f"the supervisor tracks no collectors: {actors}"
            time.sleep(0.2)
        os.kill(int(actors["collector-0"]["pid"]), 9)  # Ray restarts it: a restart the supervisor counts
        # Gone for good (as after a node loss past max_restarts): only the supervisor brings it back.
        ray.kill(ray.get_actor("collector-1", namespace=namespace), no_restart=True)
        deadline = time.monotonic() + 120
        while True:
            actors = p.progress().status["actors"]
            counted = actors["collector-0"]["restarts"] >= 1 and actors["collector-1"]["recreated"] >= 1
            if counted and all(a["state"] == "running" for a in actors.values()):
                break
            assert time.monotonic() < deadline, actors
            time.sleep(0.5)
        assert "restarted by Ray" in str(actors["collector-0"]["reason"])
        assert actors["collector-1"]["reason"]  # why it was re-created, as status shows it
        deadline = time.monotonic() + 180
        while not p.progress().streamers_done:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        final = p.drain(timeout_s=120)
        assert_healthy(p)
        stored, rejects = p.stored_totals()
    finally:
        p.stop()
    assert final.produced == 30 * rows == stored and rejects == 0
    with psycopg.connect(fresh_db) as c:
        total, distinct = c.execute(
            "SELECT count(*), count(DISTINCT (gpu_key, metric_id, ts)) FROM telemetry"
        ).fetchone()  # type: ignore[misc]
    assert total == distinct == 30 * rows


def test_deploy_is_idempotent_rescales_on_new_counts_and_bounds_and_refuses_a_frozen_change(
    ray_local: None, fresh_db: str, tmp_path: Path
) -> None:
    csv = tmp_path / "fleet.csv"
    rows = write_csv(csv, hosts=4, scrapes=3)
    namespace = unique_namespace()

    def settings(collectors: int, **scaling: object) -> Settings:
        return Settings.load(
            overrides={
                "streamer": {"csv": csv, "count": 1, "interval_s": 0.5, "batch_rows": 100, "passes": 30},
                "collector": {"count": collectors, "poll_timeout_s": 0.05},
                "ray": {"namespace": namespace},
                "queue": {"partitions": 4, "group": "dep"},
                "scaling": {"period_s": 0.5, **scaling},
            },
            environ={},
        )

    def collectors(p: Pipeline) -> int:
        return int(p.progress().status["roles"]["collector"]["actual"])

    first = Pipeline(settings(1), Database(fresh_db))
    assert first.deploy()["action"] == "created"
    try:
        again = Pipeline(settings(1), Database(fresh_db)).deploy()
        assert again["action"] == "unchanged" and collectors(first) == 1
        more = Pipeline(settings(3), Database(fresh_db)).deploy()
        assert more["action"] == "reconciled" and "collector.count" in more["changed"]
        assert collectors(first) == 3
        # New bounds: the running count is brought inside them.
        bounded = Pipeline(settings(3, collectors_min=2, collectors_max=2), Database(fresh_db)).deploy()
        assert bounded["action"] == "reconciled" and collectors(first) == 2
        # The queue's shape cannot change under a running pipeline: a clear refusal, nothing changed.
        frozen = settings(3, collectors_min=2, collectors_max=2).model_copy(
            update={"queue": settings(2).queue.model_copy(update={"partitions": 8})}
        )
        with pytest.raises(ConfigError, match="queue.partitions"):
            Pipeline(frozen, Database(fresh_db)).deploy()
        assert collectors(first) == 2
        deadline = time.monotonic() + 180
        while not first.progress().streamers_done:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        final = first.drain(timeout_s=120)
        assert_healthy(first)
        stored, _ = first.stored_totals()
    finally:
        first.stop()
    assert final.produced == 30 * rows == stored
