"""Faults of replicated partitions on a real multi-node Ray cluster; run by ``test_replication.py``.

A process holds one Ray session, and the test session already has its own (``ray_local``): each
scenario runs here, in a subprocess, on a ``ray.cluster_utils.Cluster`` of a head (streamers,
collectors, the supervisor) and three broker nodes (``broker_<i>`` resources, as KubeRay's broker
worker groups give, with ``ray.placement`` on), ``replication_factor`` 3 and ``min_insync`` 2, the
real CSV streamed flat out. It prints one JSON line: what was measured and the database's counts.

Scenarios:

* ``leader``: the node of partition 0's leader (also the groups' coordinator) is removed mid-stream;
  how long until every partition it led has a new leader that takes appends and commits again.
* ``follower``: the node of a broker that leads nothing (two partitions, led by brokers 0 and 1) is
  removed: commits go on, both partitions are reported under-replicated, then repaired when a node
  with its resource returns (the replica is rebuilt from the leaders).
* ``old-leader`` (queue dir): partition 0's followers' nodes go, its leader takes an append that no
  follower will ever hold, then its node goes; the followers return from their disks and elect a
  new leader; the old leader returns from its disk with that entry, is fenced and cuts it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from pipeline.config import Settings  # noqa: E402
from pipeline.runtime.attach import collect, render  # noqa: E402
from pipeline.runtime.driver import Pipeline  # noqa: E402
from pipeline.runtime.names import call_once, find_brokers  # noqa: E402
from pipeline.storage.database import Database  # noqa: E402
from tests.support import assert_healthy, envelope_of  # noqa: E402

GROUP = "replicated"
PROBE_TAG = "never-acknowledged"


STARTED = time.monotonic()


def note(message: str) -> None:
    """A timestamped line on stderr (the test shows it when a scenario fails)."""
    print(f"[{time.monotonic() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def broker_node(cluster: Cluster, i: int) -> Any:
    return cluster.add_node(num_cpus=1, resources={"broker": 1, f"broker_{i}": 1})


def wait(
    what: str,
    check: Callable[[], Any],
    timeout_s: float = 60.0,
    every_s: float = 0.2,
    state: Callable[[], Any] | None = None,
) -> Any:
    """``check()`` once it is true; on the deadline a ``TimeoutError`` with ``state()`` (what the wait saw last)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = ""
            if state is not None:
                try:
                    seen = f"; last seen: {state()}"
                except Exception as exc:  # the state is for the report only
                    seen = f"; state unavailable: {exc!r}"
            raise TimeoutError(f"{what}: not within {timeout_s:.0f}s{seen}")
        time.sleep(every_s)


class Run:
    """One deployed pipeline on the cluster, and quick views of its brokers."""

    def __init__(self, cluster: Cluster, nodes: dict[int, Any], settings: Settings, db: str) -> None:
        self.cluster = cluster
        self.nodes = nodes
        self.settings = settings
        self.db = db
        self.pipeline = Pipeline(settings, Database(db))

    @property
    def namespace(self) -> str:
        return self.settings.ray.namespace

    def replication(self) -> dict[str, Any]:
        status: dict[str, Any] = self.pipeline._call("status")
        return status["replication"]

    def leaders(self) -> dict[int, int | None]:
        return {int(p): r["leader"] for p, r in self.replication()["partitions"].items()}

    def brokers(self, timeout_s: float = 1.0) -> dict[int, dict[str, Any]]:
        """Probes of the brokers that answer within ``timeout_s`` (a lost one must not slow the poll)."""
        handles = find_brokers(self.namespace, self.settings.queue.brokers)
        refs = {i: call_once(h, "probe") for i, h in enumerate(handles)}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        out = {}
        for i, ref in refs.items():
            if ref in set(ready):
                try:
                    out[i] = ray.get(ref, timeout=0)
                except ray.exceptions.RayError:
                    continue
        return out

    def led(self) -> dict[int, dict[str, Any]]:
        """Per partition, the state its current leader reports (partitions without one left out)."""
        out: dict[int, dict[str, Any]] = {}
        for b, probe in self.brokers().items():
            for p, s in probe["replicas"].items():
                if s["role"] == "leader" and (int(p) not in out or s["epoch"] > out[int(p)]["epoch"]):
                    out[int(p)] = {**s, "broker": b}
        return out

    def committed(self) -> dict[int, int]:
        """Per partition, the offset the group committed in the database."""
        with psycopg.connect(self.db) as c:
            rows = c.execute(
                "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = %s", (GROUP,)
            ).fetchall()
        return {int(p): int(o) for p, o in rows}

    def stored(self) -> int:
        with psycopg.connect(self.db) as c:
            row = c.execute("SELECT count(*) FROM telemetry").fetchone()
        return int(row[0]) if row else 0

    def remove(self, broker: int) -> None:
        note(f"removing broker {broker}'s node")
        self.cluster.remove_node(self.nodes.pop(broker), allow_graceful=False)

    def restore(self, broker: int) -> None:
        note(f"adding a node for broker {broker}")
        self.nodes[broker] = broker_node(self.cluster, broker)
        self.cluster.wait_for_nodes()

    def finish(self) -> dict[str, Any]:
        """Check every actor is healthy, stop the streamers, drain, stop; the database's exact counts."""
        p = self.pipeline
        assert_healthy(p)
        note("healthy; stopping the streamers and draining")
        p.stop_streamers()
        p.drain(timeout_s=180)
        produced = p.progress().produced
        note(f"drained: {produced} rows produced")
        p.stop()
        note("stopped")
        with psycopg.connect(self.db) as c:
            total, distinct = c.execute(
                "SELECT count(*), count(DISTINCT (gpu_key, metric_id, ts)) FROM telemetry"
            ).fetchone() or (0, 0)
            probe = c.execute(
                "SELECT count(*) FROM telemetry t JOIN gpus g USING (gpu_key) WHERE g.hostname = %s", (PROBE_TAG,)
            ).fetchone()
        return {"produced": produced, "rows": total, "distinct": distinct, "probe_rows": probe[0] if probe else 0}


def settings_for(args: argparse.Namespace, partitions: int, **queue: Any) -> Settings:
    return Settings.load(
        overrides={
            "streamer": {"csv": args.csv, "count": 1, "interval_s": 0, "batch_rows": 10_000},
            "collector": {"count": 2, "poll_timeout_s": 0.2},
            "queue": {
                "partitions": partitions,
                "brokers": 3,
                "replication_factor": 3,
                "min_insync": 2,
                "group": GROUP,
                "session_timeout_s": 5.0,
                "call_timeout_s": 30.0,
                **queue,
            },
            "ray": {"namespace": f"repl-{uuid.uuid4().hex[:8]}", "placement": True},
        },
        environ={},
    )


def streaming(run: Run, rows: int) -> None:
    wait(f"{rows} rows stored", lambda: run.stored() >= rows, 120)
    note(f"{run.stored()} rows stored")


def scenario_leader(run: Run) -> dict[str, Any]:
    streaming(run, 20_000)
    before = run.leaders()
    victim = before[0]
    assert victim is not None
    lost = sorted(p for p, b in before.items() if b == victim)
    committed0 = run.committed()
    removed = time.monotonic()
    run.remove(victim)

    def resumed() -> dict[int, float] | None:
        led = run.led()
        committed = run.committed()
        moved = {p: led[p] for p in lost if p in led and led[p]["broker"] != victim}
        if len(moved) < len(lost):
            return None
        # appends taken (beyond the new epoch's marker) and commits past where they were
        if all(
            committed.get(p, 0) > committed0.get(p, 0) and s["high_water"] > s["start_offset"] for p, s in moved.items()
        ):
            return {p: s["broker"] for p, s in moved.items()}
        return None

    new = wait("producing and consuming on new leaders", resumed, 120, 0.1)
    resumed_s = time.monotonic() - removed
    note(f"partitions {lost} resumed on {new} after {resumed_s:.1f}s")
    time.sleep(3)  # stream on a little on the new leaders
    return {"victim": victim, "lost": lost, "new_leaders": new, "resumed_s": resumed_s, **run.finish()}


def scenario_follower(run: Run) -> dict[str, Any]:
    streaming(run, 20_000)
    assert set(run.leaders().values()) == {0, 1}, run.leaders()
    stored0 = run.stored()
    removed = time.monotonic()
    run.remove(2)
    progress = []
    for _ in range(8):
        time.sleep(0.5)
        progress.append(run.stored())
    under = wait(
        "both partitions reported under-replicated", lambda: run.replication()["under_replicated"] == [0, 1], 60
    )
    under_s = time.monotonic() - removed
    status_text = render(collect(run.namespace, GROUP, sample_s=0.1))  # what `python -m pipeline status` prints
    run.restore(2)
    back = time.monotonic()
    wait("repaired", lambda: run.replication()["under_replicated"] == [], 120)
    repaired_s = time.monotonic() - back
    rebuilt = run.brokers()[2]["replicas"]
    return {
        "stored_before": stored0,
        "stored_during": progress,
        "under_replicated": under,
        "under_replicated_after_s": under_s,
        "repaired_after_s": repaired_s,
        "status_text": status_text,
        "rebuilt": {p: {k: s[k] for k in ("role", "fresh", "end_offset", "leader")} for p, s in rebuilt.items()},
        **run.finish(),
    }


def scenario_old_leader(run: Run) -> dict[str, Any]:
    streaming(run, 20_000)
    assert run.leaders()[0] == 0, run.leaders()
    run.remove(1)
    run.remove(2)
    end0 = run.brokers()[0]["replicas"][0]["end_offset"]
    # A producer's flush that partition 0's leader takes while no follower can hold it.
    old = find_brokers(run.namespace, 3)[0]
    pending = call_once(old, "append_batch", "probe-producer", 0, envelope_of(5, PROBE_TAG), [(0, 0, 5)], None)
    wait("the old leader holds an entry no follower has", lambda: run.brokers()[0]["replicas"][0]["end_offset"] > end0)
    tail = run.brokers()[0]["replicas"][0]
    run.remove(0)
    run.restore(1)
    run.restore(2)
    wait("a new leader of partition 0", lambda: run.led().get(0, {}).get("broker") in (1, 2), 120)
    new = run.led()[0]
    streaming(run, run.stored() + 20_000)
    run.restore(0)

    probe_offset = tail["end_offset"] - 1

    def fenced() -> dict[str, Any] | None:
        # The entry at probe_offset must leave the old leader's log: cut where its epoch history diverges
        # from the new leader's (counted in `truncated`), or gone with a log that now starts above it. The
        # second was seen in 2 of 7 local runs (and one CI run), following in sync with `truncated` 0 and
        # the log starting at the leader's start; which path led there is not yet known. Either way the
        # test below asserts what matters: none of its rows reach the database, the data is exact.
        s = run.brokers().get(0, {}).get("replicas", {}).get(0)
        leader = run.led().get(0)
        dropped = s is not None and (s["truncated"] >= 1 or s["start_offset"] > probe_offset)
        if s and leader and s["role"] == "follower" and s["epoch"] == leader["epoch"] and dropped:
            return dict(s)
        return None

    def replicas_of_0() -> dict[str, Any]:
        replicas = {b: v.get("replicas", {}).get(0) for b, v in run.brokers().items()}
        return {"leader": run.led().get(0), "brokers": replicas}

    back = wait("the old leader fenced, truncated and following", fenced, 120, state=replicas_of_0)
    ray.cancel(pending)
    return {"tail": tail, "new_leader": new, "old_leader_back": back, **run.finish()}


SCENARIOS = {"leader": scenario_leader, "follower": scenario_follower, "old-leader": scenario_old_leader}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--db", required=True)
    parser.add_argument("--csv", required=True, type=Path)
    parser.add_argument("--queue-dir", type=Path)
    args = parser.parse_args()
    os.environ.pop("RAY_ADDRESS", None)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 4,
            "resources": {"streamer": 2, "collector": 4},
            "include_dashboard": False,
            "dashboard_agent_listen_port": free_port(),
        },
    )
    report: dict[str, Any] = {}
    try:
        nodes = {i: broker_node(cluster, i) for i in range(3)}
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        extra: dict[str, Any] = {"replica_lag_s": 2.0}
        if args.queue_dir is not None:
            extra["dir"] = args.queue_dir
        partitions = 4 if args.scenario == "leader" else 2
        run = Run(cluster, nodes, settings_for(args, partitions, **extra), args.db)
        note("cluster up; deploying")
        run.pipeline.deploy(fresh=True)
        note("deployed")
        report = SCENARIOS[args.scenario](run)
        print(json.dumps(report, default=str), flush=True)
        return 0
    except BaseException as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}", **report}, default=str), flush=True)
        raise
    finally:
        ray.shutdown()
        cluster.shutdown()
        note("cluster shut down")


if __name__ == "__main__":
    sys.exit(main())
