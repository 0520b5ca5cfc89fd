"""A whole Ray cluster lost under a running pipeline (a head restart without GCS fault tolerance).

Run as a script by ``test_cluster_loss.py``: it starts its own local cluster, deploys, shuts the
cluster down (every process of it ends, nothing is left in any GCS), starts a new empty one and
deploys again with the same settings, as an operator resubmitting the jobs does. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import psycopg
import ray

from pipeline.config import Settings
from pipeline.runtime.driver import Pipeline
from pipeline.storage.database import Database


def start_cluster(namespace: str) -> None:
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace=namespace, log_to_driver=False)


def wait(what: str, ok: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--passes", type=int, required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--queue-dir", default=None)
    args = ap.parse_args()
    settings = Settings.load(
        overrides={
            "streamer": {
                "csv": Path(args.csv),
                "count": 2,
                "interval_s": 0.3,
                "batch_rows": 100,
                "passes": args.passes,
            },
            "collector": {"count": 2, "poll_timeout_s": 0.05},
            "ray": {"namespace": args.namespace},
            "queue": {"partitions": 4, "group": "loss", "dir": args.queue_dir},
            "scaling": {"period_s": 0.5},
        },
        environ={},
    )
    start_cluster(args.namespace)
    first = Pipeline(settings, Database(args.database_url))
    first.deploy(fresh=True)
    wait("rows before the loss", lambda: first.stored_totals()[0] > 0, 120)
    before_loss = first.stored_totals()[0]
    ray.shutdown()  # the whole cluster: GCS, raylets, every actor

    start_cluster(args.namespace)
    second = Pipeline(settings, Database(args.database_url))
    action = second.deploy()["action"]
    wait("the resumed streamers to finish", lambda: second.progress().streamers_done, 300)
    second.drain(timeout_s=120)
    progress = second.progress()
    problems = [f"{s['id']}: {s.get('error')}" for s in [*progress.streamers, *progress.collectors] if s.get("error")]
    problems += [f"{c['id']}: loop ended" for c in progress.collectors if not c.get("running")]
    second.stop()
    with psycopg.connect(args.database_url) as c:
        total, distinct = c.execute(
            "SELECT count(*), count(DISTINCT (gpu_key, metric_id, ts)) FROM telemetry"
        ).fetchone()  # type: ignore[misc]
    print(
        json.dumps(
            {"action": action, "before_loss": before_loss, "total": total, "distinct": distinct, "problems": problems}
        )
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
