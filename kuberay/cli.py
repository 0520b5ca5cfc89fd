"""``python -m kuberay render|apply|status|scale|submit|delete --env <env>``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kuberay.client import DEFAULT_NAMESPACE, KubeRayClient
from kuberay.errors import Invalid, KubeRayError, NotFound
from kuberay.render import ENVIRONMENTS, load_documents, render_text
from kuberay.status import ClusterStatus, JobStatus, ServiceStatus

__all__ = ["build_parser", "main"]

log = logging.getLogger("kuberay")

ClientFactory = Callable[[argparse.Namespace], KubeRayClient]
# Deleting these loses data or locks out other tenants: `delete --all` leaves them.
_KEEP_ON_DELETE = frozenset({"Namespace", "PersistentVolumeClaim"})


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="python -m kuberay", description="Deploy and operate the GPU telemetry pipeline on KubeRay."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env", required=True, choices=ENVIRONMENTS, help="overlay to use")
    common.add_argument(
        "--manifests",
        type=Path,
        default=None,
        help="directory with base/ and overlays/ (default: $KUBERAY_MANIFESTS or the package)",
    )
    common.add_argument("--context", default=None, help="kubeconfig context (default: current)")
    common.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    common.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    common.add_argument("-v", "--verbose", action="store_true", help="log each request")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", parents=[common], help="print the rendered overlay (offline)")
    p.add_argument("-o", "--output", type=Path, default=None, help="write to this file instead of stdout")

    p = sub.add_parser("apply", parents=[common], help="server-side apply the rendered overlay")
    p.add_argument("--dry-run", action="store_true", help="let the server validate without persisting")
    p.add_argument("--skip-jobs", action="store_true", help="do not apply RayJobs (no job is started)")
    p.add_argument("--wait", action="store_true", help="wait until the RayCluster is ready")
    p.add_argument("--timeout", type=float, default=900.0, help="overall deadline for --wait, seconds")

    p = sub.add_parser("status", parents=[common], help="status of the overlay's RayClusters, RayServices, RayJobs")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("scale", parents=[common], help="set a worker group's bounds, or remove named pods")
    p.add_argument("--cluster", default=None, help="RayCluster name (default: the overlay's)")
    p.add_argument("--group", required=True, help="worker group, e.g. collectors")
    p.add_argument("--min", dest="min_replicas", type=int, default=None, help="new minReplicas")
    p.add_argument("--max", dest="max_replicas", type=int, default=None, help="new maxReplicas")
    p.add_argument(
        "--delete-pod",
        action="append",
        default=[],
        metavar="POD",
        help="remove this worker pod (repeatable) via scaleStrategy.workersToDelete",
    )
    p.add_argument("--shrink", action="store_true", help="with --delete-pod: also lower replicas (no replacement)")

    p = sub.add_parser("submit", parents=[common], help="create a RayJob from the overlay")
    p.add_argument("--job", default=None, help="which of the overlay's RayJobs (default: the first)")
    p.add_argument("--name", default=None, help="submit under this name instead")
    p.add_argument(
        "--replace",
        action="store_true",
        help="stop and delete an existing RayJob of that name (and its submitter Job) first",
    )
    p.add_argument("--follow", action="store_true", help="follow until the job finishes (default: until it runs)")
    p.add_argument("--timeout", type=float, default=600.0, help="deadline for following, seconds")

    p = sub.add_parser("delete", parents=[common], help="stop and delete RayJobs, or the whole overlay")
    p.add_argument(
        "--job",
        action="append",
        default=[],
        metavar="NAME",
        help="RayJob to delete (repeatable; default: the overlay's RayJobs)",
    )
    p.add_argument("--all", action="store_true", help="delete every object of the overlay except namespaces and PVCs")
    p.add_argument("--yes", action="store_true", help="confirm --all")
    p.add_argument("--timeout", type=float, default=300.0, help="deadline for each RayJob to go, seconds")
    return parser


def _client_from_args(args: argparse.Namespace) -> KubeRayClient:
    if args.in_cluster:
        return KubeRayClient.in_cluster()
    return KubeRayClient.from_kubeconfig(context=args.context, config_file=args.kubeconfig)


def _objects(args: argparse.Namespace) -> list[dict[str, Any]]:
    return load_documents(render_text(args.env, root=args.manifests))


def _of_kind(objects: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind and o.get("apiVersion") == "ray.io/v1"]


def _name_ns(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("name")), str(meta.get("namespace") or DEFAULT_NAMESPACE)


def _cmd_render(args: argparse.Namespace, _: ClientFactory) -> int:
    text = render_text(args.env, root=args.manifests)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        print(f"wrote {len(load_documents(text))} objects to {args.output}")
    return 0


def _cmd_apply(args: argparse.Namespace, make_client: ClientFactory) -> int:
    objects = _objects(args)
    if args.skip_jobs:
        objects = [o for o in objects if o.get("kind") != "RayJob"]
    with make_client(args) as client:
        stored = client.apply(objects, dry_run=args.dry_run)
        verb = "validated (dry run)" if args.dry_run else "applied"
        print(f"{verb} {len(stored)} objects of overlay {args.env}")
        if args.wait and not args.dry_run:
            client.wait_ready(objects, timeout_s=args.timeout)
            print(
                "ready: "
                + ", ".join(
                    f"{o['kind']} {_name_ns(o)[0]}" for o in objects if o.get("kind") in ("RayCluster", "RayService")
                )
            )
    return 0


def _cmd_status(args: argparse.Namespace, make_client: ClientFactory) -> int:
    objects = _objects(args)
    report: list[ClusterStatus | ServiceStatus | JobStatus] = []
    missing: list[str] = []
    readers: dict[str, Callable[[KubeRayClient, str, str], ClusterStatus | ServiceStatus | JobStatus]] = {
        "RayCluster": lambda c, n, ns: c.cluster_status(n, ns),
        "RayService": lambda c, n, ns: c.service_status(n, ns),
        "RayJob": lambda c, n, ns: c.job_status(n, ns),
    }
    with make_client(args) as client:
        for kind, read in readers.items():
            for obj in _of_kind(objects, kind):
                name, namespace = _name_ns(obj)
                try:
                    report.append(read(client, name, namespace))
                except NotFound:
                    missing.append(f"{kind} {namespace}/{name}")
    if args.json:
        print(
            json.dumps(
                {
                    "objects": [{"kind": type(s).__name__, **dataclasses.asdict(s)} for s in report],
                    "missing": missing,
                },
                indent=2,
            )
        )
    else:
        for status in report:
            print("\n".join(status.lines()))
        for item in missing:
            print(f"{item}: not deployed")
    return 0


def _cmd_scale(args: argparse.Namespace, make_client: ClientFactory) -> int:
    bounds = args.min_replicas is not None or args.max_replicas is not None
    if bounds == bool(args.delete_pod):
        raise Invalid("scale: give --min and --max, or --delete-pod (not both)")
    if args.shrink and not args.delete_pod:
        raise Invalid("scale: --shrink only goes with --delete-pod")
    if args.cluster is None:
        clusters = _of_kind(_objects(args), "RayCluster")
        if len(clusters) != 1:
            raise Invalid(f"scale: overlay {args.env} has {len(clusters)} RayClusters; name one with --cluster")
        cluster, namespace = _name_ns(clusters[0])
    else:
        cluster, namespace = args.cluster, DEFAULT_NAMESPACE
    with make_client(args) as client:
        if bounds:
            if args.min_replicas is None or args.max_replicas is None:
                current = {g.name: g for g in client.cluster_status(cluster, namespace).groups}
                if args.group not in current:
                    raise NotFound(f"RayCluster {namespace}/{cluster} has no worker group {args.group!r}")
                low = current[args.group].min_replicas if args.min_replicas is None else args.min_replicas
                high = current[args.group].max_replicas if args.max_replicas is None else args.max_replicas
            else:
                low, high = args.min_replicas, args.max_replicas
            client.scale_worker_group(cluster, args.group, min_replicas=low, max_replicas=high, namespace=namespace)
            print(f"RayCluster {namespace}/{cluster} group {args.group}: replicas bounded to [{low}, {high}]")
        else:
            client.delete_workers(
                cluster, args.group, args.delete_pod, decrement_replicas=args.shrink, namespace=namespace
            )
            print(f"RayCluster {namespace}/{cluster} group {args.group}: deleting {', '.join(args.delete_pod)}")
    return 0


def _cmd_submit(args: argparse.Namespace, make_client: ClientFactory) -> int:
    jobs = _of_kind(_objects(args), "RayJob")
    if not jobs:
        raise NotFound(f"overlay {args.env} renders no RayJob")
    if args.job is not None:
        jobs = [j for j in jobs if _name_ns(j)[0] == args.job]
        if not jobs:
            raise NotFound(f"overlay {args.env} has no RayJob named {args.job!r}")
    job = jobs[0]
    name = args.name or _name_ns(job)[0]
    namespace = _name_ns(job)[1]
    with make_client(args) as client:
        if args.replace:
            try:
                # Foreground: the old submitter Job goes before the RayJob, so the new RayJob's
                # submitter (found by name) is a new Job, not the finished old one.
                client.stop_job(name, namespace=namespace, timeout_s=args.timeout, propagation="Foreground")
                print(f"stopped and deleted the previous RayJob {namespace}/{name}")
            except NotFound:
                pass  # nothing to replace: a first submission
        status = client.submit_job(job, name=name)
        print(f"submitted RayJob {namespace}/{status.name}")
        final = client.follow_job(
            name,
            namespace=namespace,
            timeout_s=args.timeout,
            until_finished=args.follow,
            on_change=lambda s: print("\n".join(s.lines()), flush=True),
        )
    return 0 if (final.succeeded or (not args.follow and final.running and not final.finished)) else 1


def _cmd_delete(args: argparse.Namespace, make_client: ClientFactory) -> int:
    objects = _objects(args)
    if args.all and not args.yes:
        raise Invalid("delete --all removes the whole overlay (except namespaces and PVCs): add --yes")
    with make_client(args) as client:
        jobs = [_name_ns(j) for j in _of_kind(objects, "RayJob")]
        if args.job:
            wanted = set(args.job)
            unknown = wanted - {n for n, _ in jobs}
            jobs = [(n, ns) for n, ns in jobs if n in wanted] + [(n, DEFAULT_NAMESPACE) for n in sorted(unknown)]
        for name, namespace in jobs:
            try:
                client.stop_job(name, namespace=namespace, timeout_s=args.timeout)
                print(f"stopped and deleted RayJob {namespace}/{name}")
            except NotFound:
                print(f"RayJob {namespace}/{name}: not deployed")
        if args.all:
            for obj in reversed(objects):
                if obj.get("kind") in _KEEP_ON_DELETE or obj.get("kind") == "RayJob":
                    continue
                try:
                    client.delete_object(obj)
                    print(f"deleted {obj['kind']} {_name_ns(obj)[1]}/{_name_ns(obj)[0]}")
                except NotFound:
                    print(f"{obj['kind']} {_name_ns(obj)[0]}: not deployed")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, ClientFactory], int]] = {
    "render": _cmd_render,
    "apply": _cmd_apply,
    "status": _cmd_status,
    "scale": _cmd_scale,
    "submit": _cmd_submit,
    "delete": _cmd_delete,
}


def main(argv: Sequence[str] | None = None, *, make_client: ClientFactory = _client_from_args) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 failed, 2 usage)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return _COMMANDS[args.command](args, make_client)
    except KubeRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
