"""Who holds a GPU and what it is, as the sources read it: workload and gpu_info columns, MIG identity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.records import FIELD_SEP, GPU_INFO_FIELDS, WORKLOAD_FIELDS, compact_dictionaries, split_fields, to_wire
from pipeline.sources import Shard
from pipeline.sources.attribution import gpu_identity, workload_column
from pipeline.sources.dcgm_csv import DcgmCsvSource
from pipeline.sources.prometheus import parse_exposition
from pipeline.sources.synthetic import NAMESPACES, XID_METRIC, SyntheticFleet, write_csv
from pipeline.sources.validate import parse_labels

HEADER = "timestamp,metric_name,gpu_id,device,uuid,modelName,Hostname,container,pod,namespace,value,labels_raw\n"


def workloads(column: pa.Array) -> list[tuple[str | None, ...]]:
    return [split_fields(v, len(WORKLOAD_FIELDS)) for v in column.to_pylist()]


def test_workload_reads_both_kubernetes_spellings_and_the_hpc_job_label() -> None:
    labels = parse_labels(
        pa.array(
            [
                'pod="train-0",namespace="ml",container="trainer"',
                'pod_name="old-pod",pod_namespace="kube-system",container_name="c"',
                'hpc_job="slurm-42",UUID="GPU-x"',
                'gpu="0",instance="h:9400"',
                "",
            ]
        )
    )
    assert workloads(workload_column(labels)) == [
        ("ml", "train-0", "trainer", None),
        ("kube-system", "old-pod", "c", None),
        (None, None, None, "slurm-42"),
        (None, None, None, None),
        (None, None, None, None),
    ]
    assert workload_column(labels).null_count == 2  # nobody holds those GPUs: null, not an empty tuple


def test_csv_columns_win_over_labels_and_the_separator_never_leaks_from_a_value() -> None:
    labels = parse_labels(pa.array(['pod="from-label",namespace="ns"', 'pod="p"']))
    columns = {"pod": pa.array(["from-column", ""]), "namespace": pa.array(["", f"a{FIELD_SEP}b"])}
    assert workloads(workload_column(labels, columns)) == [("ns", "from-column", None, None), ("a b", "p", None, None)]


def test_a_mig_device_is_named_after_its_parent_and_keeps_id_and_profile() -> None:
    labels = parse_labels(
        pa.array(
            [
                'GPU_I_ID="2",GPU_I_PROFILE="3g.40gb",DCGM_FI_DRIVER_VERSION="535.129.03",instance="h:9400"',
                'DCGM_FI_DRIVER_VERSION="535.129.03"',
                'GPU_I_ID="1",GPU_I_PROFILE="1g.10gb"',
            ]
        )
    )
    uuid, info = gpu_identity(pa.array(["GPU-p", "GPU-q", "GPU-r/mig-1"]), labels)
    assert uuid.to_pylist() == ["GPU-p/mig-2", "GPU-q", "GPU-r/mig-1"]  # an already named device keeps its name
    fields = [split_fields(v, len(GPU_INFO_FIELDS)) for v in info.to_pylist()]
    assert fields == [
        ("535.129.03", "h:9400", "GPU-p", "2", "3g.40gb"),
        ("535.129.03", None, None, None, None),
        (None, None, "GPU-r", "1", "1g.10gb"),
    ]


def test_the_csv_export_carries_pods_jobs_and_driver_onto_samples(tmp_path: Path) -> None:
    path = tmp_path / "pods.csv"
    line = (
        '"2025-07-18T20:42:34Z","DCGM_FI_DEV_GPU_UTIL","0","nvidia0","{u}","H100","h1",'
        + '"{c}","{p}","{n}","7","{labels}"\n'
    )
    path.write_text(
        HEADER
        + line.format(u="GPU-a", c="main", p="train-1", n="ml", labels='DCGM_FI_DRIVER_VERSION=""535""')
        + line.format(
            u="GPU-b", c="", p="", n="", labels='hpc_job=""slurm-9"",GPU_I_ID=""3"",GPU_I_PROFILE=""1g.10gb""'
        )
        + line.format(u="GPU-c", c="", p="", n="", labels="")
    )
    source = DcgmCsvSource(path)
    source.open()
    (batch,) = list(source.read_pass(Shard()))
    rows = batch.samples.to_pylist()
    assert [r["uuid"] for r in rows] == ["GPU-a", "GPU-b/mig-3", "GPU-c"]
    assert workloads(batch.samples.column("workload")) == [
        ("ml", "train-1", "main", None),
        (None, None, None, "slurm-9"),
        (None, None, None, None),
    ]
    assert split_fields(rows[0]["gpu_info"], 5)[0] == "535"
    assert split_fields(rows[1]["gpu_info"], 5)[2:] == ("GPU-b", "3", "1g.10gb")


def test_the_real_csv_still_streams_with_its_driver_and_instance(real_csv: Path) -> None:
    source = DcgmCsvSource(real_csv)
    source.open()
    batches = list(source.read_pass(Shard()))
    samples = pa.Table.from_batches([b.samples for b in batches])
    assert samples.num_rows == 2470 and all(b.rejects is None for b in batches)
    assert samples.column("workload").null_count == samples.num_rows  # no pods in that export
    drivers = {split_fields(v, 5)[:2] for v in samples.column("gpu_info").to_pylist()}
    assert ("535.129.03", "mtv5-dgx1-hgpu-031:9400") in drivers


def test_a_scrape_reads_pods_in_both_spellings_and_mig_devices() -> None:
    text = (
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",pod="p1",namespace="ns",container="c"} 5\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-b",pod_name="p2",pod_namespace="old",container_name="c2"} 6\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="2",UUID="GPU-c",GPU_I_ID="4",GPU_I_PROFILE="2g.20gb"} 7\n'
    )
    result = parse_exposition(text, "http://10.0.0.1:9400/metrics", 1_750_000_000.0)
    assert result.rejects is None
    assert result.samples.column("uuid").to_pylist() == ["GPU-a", "GPU-b", "GPU-c/mig-4"]
    assert workloads(result.samples.column("workload"))[:2] == [("ns", "p1", "c", None), ("old", "p2", "c2", None)]
    info = split_fields(result.samples.column("gpu_info")[2].as_py(), 5)
    assert info == (None, "10.0.0.1:9400", "GPU-c", "4", "2g.20gb")


def test_synthetic_workloads_come_and_go_with_idle_gaps_in_between() -> None:
    fleet = SyntheticFleet(hosts=4)
    devices = np.arange(len(fleet.uuids))
    seen = [fleet.workloads_at(k, devices).to_pylist() for k in range(0, 1200, 10)]
    per_device = list(zip(*seen, strict=True))
    assert all(len({w for w in d if w}) >= 2 for d in per_device)  # every GPU runs more than one job
    assert sum(None in d for d in per_device) >= len(devices) // 2  # and most sit idle between some
    namespaces = {split_fields(w, 4)[0] for d in per_device for w in d if w}
    assert namespaces == set(NAMESPACES)
    hpc = [split_fields(w, 4) for d in per_device for w in d if w and w.startswith("hpc")]
    assert hpc and all(f[3] and f[3].startswith("slurm-") for f in hpc)
    assert SyntheticFleet(hosts=4).workloads_at(77, devices) == fleet.workloads_at(77, devices)  # deterministic


def test_synthetic_idle_gpus_fall_idle_and_held_ones_work() -> None:
    fleet = SyntheticFleet(hosts=8)
    devices = np.arange(len(fleet.uuids))
    for k in range(30):
        _, held = fleet.allocation(k, devices)
        util = fleet.values(devices, idle=~held)[:, 0]
    assert util[~held].max() <= 10 and util[held].min() >= 1


def test_synthetic_events_bring_mig_xid_codes_and_a_gpu_that_goes_silent() -> None:
    fleet = SyntheticFleet(hosts=8, gpus_per_host=8, events=True, silent_after=3)
    passes = []
    for _ in range(6):
        passes.append(pa.Table.from_batches([b.wire for b in fleet.read_pass(Shard()) if b.wire is not None]))
    silent = fleet.uuids[fleet.silent_device or 0]
    assert [silent in set(t.column("uuid").to_pylist()) for t in passes] == [True, True, True, False, False, False]
    uuids = set(passes[0].column("uuid").to_pylist())
    mig = sorted(u for u in uuids if "/mig-" in u)
    assert len(mig) == 2 and mig[0].split("/mig-")[0] == mig[1].split("/mig-")[0]
    assert len(uuids) == 64 + 1  # the last GPU is two instances now
    xid = np.concatenate(
        [t.filter(pa.compute.equal(t.column("metric").cast(pa.string()), XID_METRIC)).column("value") for t in passes]
    )
    assert set(np.unique(xid)) >= {0.0} and len(xid) == 6 * 65 - 3
    devices = np.arange(len(fleet.uuids))
    codes = np.stack([fleet.xid_at(k, devices) for k in range(0, 800)])
    assert (codes > 0).any() and set(np.unique(codes[codes > 0])) <= {13, 31, 43, 48, 79, 94}


def test_synthetic_attribution_survives_the_wire_and_compaction() -> None:
    fleet = SyntheticFleet(hosts=2)
    (item,) = list(fleet.read_pass(Shard()))
    assert item.wire is not None
    wire = compact_dictionaries(item.wire.slice(3, 40))
    assert wire.column("workload").to_pylist() == item.samples.column("workload").slice(3, 40).to_pylist()
    assert to_wire(item.samples).column("workload").to_pylist() == item.samples.column("workload").to_pylist()


def test_a_generated_csv_carries_its_pods(tmp_path: Path) -> None:
    path = tmp_path / "fleet.csv"
    assert write_csv(path, hosts=2, scrapes=2) == 320
    source = DcgmCsvSource(path)
    source.open()
    samples = pa.Table.from_batches([b.samples for b in source.read_pass(Shard())])
    fleet = SyntheticFleet(hosts=2)
    expected = fleet.workloads_at(0, np.arange(16)).to_pylist()
    columns = (samples.column(c).to_pylist() for c in ("uuid", "workload"))
    first = dict(zip(*columns, strict=True))
    assert [first[u] for u in fleet.uuids] != [None] * 16
    assert {w for w in first.values()} <= set(expected) | set(fleet.workloads_at(1, np.arange(16)).to_pylist())
