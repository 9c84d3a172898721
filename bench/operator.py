"""Operator benchmark: the control-plane cost of a GisJob on a real API server.

One run, on its own dev cluster (``tests/cluster/devcluster.py``: etcd + kube-apiserver 1.20
+ kube-controller-manager + the test kubelet), state under ``--state`` and torn down at the
end. It is a benchmark, not a test: it prints tables and PASS/MISS lines, never asserts.

1. **Status size at 100,000 tiles**, no cluster: a real 100,000-tile plan (a sparse GeoTIFF
   with 16-pixel blocks, ``tileSize: 32``, so tiles can split) driven through the real
   ``JobController`` with an offline ``Kube`` that records the status patches and created
   pods. The plan is primed in the controller's memo (as once its planner pod has
   reported; decoding the planner's descriptor is timed separately). Statuses: right after
   planning, a realistic mid-run state (60 % done, holes, failures, a split in progress, 50
   pods alive), the tick that sees the last tile and starts the finalizer pod (phase
   Running, Finalizing) and the final one, after a simulated finalizer pod succeeded with
   the result record ``gisjob finalize`` leaves. Tick times at that size come for free.
   Then what the finalizer pod does with the ledger (every record read, ``LedgerView`` +
   ``gisjob_worker.ledger.manifest_entries``) at 1,000/2,000/4,000 tiles, and how it grows.
2. **A GisJob through the real operator** (``gisjob-operator run --namespace NS`` with the
   ``deploy/rbac.yaml`` ServiceAccount identity, status interval 2 s), in two variants:

   * ``real``: ``gisjob worker`` pods on 64x64 tiles (200 by default). Every tile costs a
     Python interpreter start (~0.5-1 CPU-s), so this measures the workers, on 2 cores;
   * ``noop``: 2,000 tiles whose image the test kubelet maps to a shell script: planner and
     finalizer pods run the real ``gisjob planner``/``gisjob finalize``; a worker pod writes
     what ``gisjob worker`` leaves (tile file, ledger record, result record) in plain sh and
     exits 0, so the finalizer's ledger check passes. Pods are bound, started, reported and
     deleted like any pod: this measures the control plane (operator + API server +
     kubelet), not GDAL.

   Reported per variant: tiles/min (apply to phase Succeeded, planner and finalizer pods
   included; and between 10 % and 90 % of the tiles), API requests per tile from
   the API server's ``apiserver_request_total`` (before/after, by verb/resource/code) with
   each row attributed to a client, the operator's own ``gisjob_operator_api_requests_total``,
   the final status size, the operator's peak RSS (sampled + VmHWM) and the CPU seconds of
   every component.

Attribution: kube-apiserver 1.20's ``apiserver_request_total`` has no client label, so
writes are attributed by what only one client does: pod creates, ``gisjobs/status`` and
``gisjobs`` patches belong to the operator process (the ``gisjobs`` patches are kopf's
own), ``pods/binding`` and ``pods/status`` to the test kubelet (1 binding + 2 status
patches per pod), ``leases``/``nodes`` to the kubelet's heartbeat (per second, not per
tile); pod deletes and events are split with the operator's own counter (the other pod
deletes are the kubelet's, 404s on pods already gone). The benchmark counts its own
requests (creating the job, polling it: 1.20 counts a GET of one custom object as
``LIST``) and subtracts them.

    .venv/bin/python bench/operator.py                 # everything, ~5-8 minutes
    .venv/bin/python bench/operator.py --only noop --json /tmp/op.json
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like the stdlib module ``operator``: ``bench/`` must not shadow it.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]
# the dev cluster and the operator process helper are the cluster tests' own
sys.path.insert(0, str(Path(_HERE).parent / "tests" / "cluster"))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from clusterutil import OperatorProcess  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GROUP, VERSION, PLURAL = "gisjob.dev", "v1alpha1", "gisjobs"
NOOP_IMAGE = "bench.local/gisjob-noop:0"
KIB, MIB = 1024, 1024**2
WRITE_TARGET = 4.0  # operator API writes per tile
STATUS_TARGET = 64 * KIB  # status bytes at 100,000 tiles
RSS_TARGET = 250 * 10**6  # operator peak RSS, bytes (250 MB)
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY")
COMPONENTS = ("kube-apiserver", "etcd", "kube-controller-manager", "kubelet")

Key = tuple[str, str, str, str]  # verb, resource, subresource, code


def log(msg: str) -> None:
    print(msg, flush=True)


def wire_size(status: dict[str, Any]) -> int:
    """Bytes of a status as the API server stores it (compact JSON, nulls dropped)."""
    body = {k: v for k, v in status.items() if v is not None}
    return len(json.dumps(body, separators=(",", ":")).encode())


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# ------------------------------------------------------------------------------- inputs


def write_raster(path: Path, cols: int, rows: int, block: int, sparse: bool = False) -> None:
    """A 1-band uint16 GeoTIFF of ``cols`` x ``rows`` blocks of ``block`` pixels.
    ``sparse``: no block is written (the planner reads metadata only)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = cols * block, rows * block
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint16",
        "nodata": 0,
        "crs": "EPSG:32632",
        "transform": from_origin(500_000, 5_000_000, 10, 10),
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
    }
    if sparse:
        with rasterio.open(path, "w", sparse_ok=True, **profile):
            return
    rng = np.random.default_rng(7)
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(rows):
            window = ((r * block, (r + 1) * block), (0, width))
            data = rng.integers(1, 10_000, size=(1, block, width), dtype=np.uint16)
            dst.write(data, window=window)


def job_doc(
    name: str, data: Path, parallelism: int, tile_size: int, image: str | None = None
) -> dict[str, Any]:
    worker: dict[str, Any] = {
        "volumes": [{"name": "data", "hostPath": {"path": str(data)}}],
        "volumeMounts": [{"name": "data", "mountPath": str(data)}],
    }
    if image:
        worker["image"] = image
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GisJob",
        "metadata": {"name": name},
        "spec": {
            "input": {"uri": str(data / "in.tif")},
            "operation": {
                "name": "scale",
                "params": {"scale": 0.0001, "offset": -0.1, "dtype": "float32"},
            },
            "output": {"uri": str(data / "out"), "format": "GTiff"},
            "tiling": {"tileSize": tile_size},
            "resources": {"gdalCacheMax": "4Mi"},
            "parallelism": parallelism,
            "worker": worker,
        },
    }


# The noop image: the kubelet runs `sh -c NOOP_SCRIPT` + the container's command, so $0 is
# `gisjob` and $1 the subcommand. Planner and finalizer pods run the real `gisjob` (the
# finalizer checks the ledger these workers leave); a worker pod writes what `gisjob worker`
# leaves behind — the tile file, its ledger record (LedgerRecord v1, writer "worker", keyed
# by the plan digest the operator gives the pod in GISJOB_PLAN_DIGEST, size and mtime of
# the tile file) and the result record (naming the ledger record) in the termination-message
# file — in plain sh with one `stat` as its only child process (no Python start per pod:
# that is the point). Records are written in place, not temp + rename: the finalizer reads
# them only after every worker pod has ended. The job name comes from the pod name
# (<job>-<tile>-<attempt>); the attempt and strategy default as in `gisjob worker`
# (GISJOB_ATTEMPT, GISJOB_STRATEGY).
NOOP_SCRIPT = """\
case "$1" in
planner | finalize) exec "$BENCH_GISJOB" "$@" ;;
worker) ;;
*) echo "bench noop image: unexpected command: $0 $*" >&2; exit 2 ;;
esac
tile=$GISJOB_TILE digest=$GISJOB_PLAN_DIGEST pod=$GISJOB_POD_NAME
if [ -z "$tile" ] || [ -z "$digest" ] || [ -z "$BENCH_OUT" ]; then
  echo "bench noop worker: GISJOB_TILE, GISJOB_PLAN_DIGEST or BENCH_OUT not set" >&2
  exit 1
fi
attempt=${GISJOB_ATTEMPT:-0} strategy=${GISJOB_STRATEGY:-initial}
job=${pod%?"$tile"-*}
rel="tiles/$tile.tif"
ledger="$BENCH_OUT/.gisjob/ledger/$digest"
if [ ! -d "$ledger" ] || [ ! -d "$BENCH_OUT/tiles" ]; then
  mkdir -p "$ledger" "$BENCH_OUT/tiles" || exit 1
fi
printf 'gisjob-noop tile %s\n' "$tile" > "$BENCH_OUT/$rel" || exit 1
st=$(stat -c '%s %.9Y' "$BENCH_OUT/$rel") || exit 1
set -- $st
size=$1 sec=${2%.*} nsec=${2#*.}
IFS=- read -r u1 u2 u3 u4 u5 < /proc/sys/kernel/random/uuid || exit 1
record="$ledger/$tile.$attempt.$u1$u2$u3$u4$u5.json"
printf '{"v":1,"job":"%s","digest":"%s","tile":"%s","attempt":%s,"strategy":"%s",\
"memory":%s,"chunkScale":%s,"exitCode":0,"oomKilled":false,"disrupted":false,\
"outcome":"succeeded","output":"%s","bytes":%s,"mtimeNs":%s%s,"peakRssBytes":104857600,\
"cgroupPeakBytes":110100480,"estimatedPeakBytes":143654912,"memoryBudgetBytes":%s,\
"chunks":1,"bytesRead":8192,"bytesWritten":%s,"seconds":0.01,"writer":"worker",\
"pod":"%s","recordedAt":%s.%s}\\n' "$job" "$digest" "$tile" "$attempt" "$strategy" \
  "$GISJOB_MEMORY" "${GISJOB_CHUNK_SCALE:-1.0}" "$rel" "$size" "$sec" "$nsec" \
  "$GISJOB_MEMORY" "$size" "$pod" "$sec" "$nsec" \
  > "$record" || exit 1
printf '{"tile":"%s","outcome":"succeeded","exitCode":0,"peakRssBytes":104857600,\
"cgroupPeakBytes":110100480,"memoryBudgetBytes":%s,"estimatedPeakBytes":143654912,\
"chunks":1,"bytesRead":8192,"bytesWritten":%s,"seconds":0.01,"output":"%s",\
"job":"%s","digest":"%s","ledgerRecord":"%s"}' "$tile" "$GISJOB_MEMORY" "$size" \
  "$BENCH_OUT/$rel" "$job" "$digest" "$record" > "$GISJOB_RESULT_PATH"
"""


# -------------------------------------------------------------- 1. status size, offline


def _offline_kube() -> Any:
    from gisjob_operator.kube import Kube

    class OfflineKube(Kube):
        """Records what the controller would send; no API server."""

        def __init__(self) -> None:
            self.patches: list[dict[str, Any]] = []
            self.created: list[str] = []
            self.bodies: dict[str, dict[str, Any]] = {}
            self.deleted: list[str] = []
            self.events: list[str] = []

        def create_pod(self, namespace: str, body: dict[str, Any]) -> bool:
            name = body["metadata"]["name"]
            self.created.append(name)
            self.bodies[name] = json.loads(json.dumps(body))
            return True

        def read_pod_log(self, namespace: str, name: str, container: str, limit: int) -> str:
            return ""  # the plan is primed: no planner pod, no log

        def create_configmap(self, namespace: str, body: dict[str, Any]) -> bool:
            return True  # the job document's ConfigMap: nothing to keep offline

        def delete_configmap(self, namespace: str, name: str) -> None:
            pass

        def delete_pod(self, namespace: str, name: str) -> None:
            self.deleted.append(name)

        def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
            self.patches.append(json.loads(json.dumps(status)))

        def delete_job(self, namespace: str, name: str, finalizers: list[str]) -> None:
            pass

        def post_event(
            self, namespace: str, job: dict[str, Any], type_: str, reason: str, message: str
        ) -> None:
            self.events.append(reason)

    return OfflineKube()


def status_at_scale(work: Path, cols: int = 400, rows: int = 250) -> dict[str, Any]:
    """Status bytes of a real ``cols x rows``-tile plan, through the real controller."""
    from prometheus_client import CollectorRegistry

    from gisjob_operator.admission import DEFAULT_ALLOWED_VOLUME_TYPES, PodPolicy
    from gisjob_operator.controller import Context, JobController, JobMemo
    from gisjob_operator.metrics import OperatorMetrics
    from gisjob_operator.pods import (
        LABEL_ROLE,
        ROLE_FINALIZER,
        PodLaunch,
        build_worker_pod,
        spec_hash,
    )
    from gisjob_operator.progress import Progress
    from gisjob_operator.reconcile import TileTree, now_iso
    from gisjob_operator.settings import OperatorSettings
    from gisjob_operator.status import progress_status
    from gisjob_worker import plandesc
    from gisjob_worker.planner import build_plan
    from gisjob_worker.result import ResultRecord
    from gisjob_worker.spec import parse_job

    data = work / "status100k"
    write_raster(data / "in.tif", cols * 2, rows * 2, 16, sparse=True)  # tiles: 2x2 blocks
    doc = job_doc("big", data, 50, 32)
    doc["metadata"].update(namespace="bench", uid="0000-big", generation=1)
    job = parse_job({k: doc[k] for k in ("apiVersion", "kind", "metadata", "spec")})
    t0 = time.perf_counter()
    plan = build_plan(job)
    plan_s = time.perf_counter() - t0
    n = len(plan.tiles)
    # what the operator does with a planner pod's result: decode the compact descriptor and
    # lay the same tiles again (the planner pod itself is not simulated: the memo is primed)
    text, sha = plandesc.encode(
        plandesc.descriptor(plan, job.spec.tiling.tile_size, job.spec.tiling.features_per_tile)
    )
    t0 = time.perf_counter()
    again = plandesc.from_descriptor(plandesc.decode(text, sha))
    descriptor_s = time.perf_counter() - t0
    assert again.digest == plan.digest and len(again.tiles) == n
    kube = _offline_kube()
    # the bench's jobs mount their data with hostPath (one machine): allowed here as the
    # cluster variants allow it through GISJOB_ALLOWED_VOLUME_TYPES
    policy = PodPolicy(allowed_volume_types=(*DEFAULT_ALLOWED_VOLUME_TYPES, "hostPath"))
    ctx = Context(
        settings=OperatorSettings(pod_policy=policy),
        kube=kube,
        metrics=OperatorMetrics(CollectorRegistry()),
    )
    ctx.jobs["0000-big"] = JobMemo(spec_key=spec_hash(job), plan=plan)
    out: dict[str, Any] = {
        "tiles": n,
        "plan_seconds": round(plan_s, 2),
        "descriptor_bytes": len(text),
        "descriptor_to_plan_seconds": round(descriptor_s, 3),
    }

    def body(status: dict[str, Any]) -> dict[str, Any]:
        return {**json.loads(json.dumps(doc)), "status": status}

    tree = TileTree(plan)

    def pod(tile: str, phase: str, finished: float | None = None) -> dict[str, Any]:
        tile_obj = tree.tile(tile)
        if tile_obj is None:  # a sub-tile: make it known through its parent
            parent = tree.tile(tile.rsplit("-", 1)[0])
            assert parent is not None
            tile_obj = next(k for k in tree.children(parent) if k.id == tile)
        launch = PodLaunch(tile, 0, tile_obj.memory_request_bytes, 1.0, "initial")
        p = build_worker_pod(job, "0000-big", "bench", launch, plan.digest)
        p["metadata"]["uid"] = f"pod-{tile}"
        status: dict[str, Any] = {"phase": phase}
        if phase == "Succeeded":
            rec = ResultRecord(
                tile=tile,
                outcome="succeeded",
                exitCode=0,
                peakRssBytes=121 * MIB,
                cgroupPeakBytes=130 * MIB,
                memoryBudgetBytes=launch.memory,
                estimatedPeakBytes=tile_obj.estimated_peak_bytes,
                chunks=1,
                bytesRead=2048,
                bytesWritten=4096,
                seconds=0.4,
                output=str(data / "out" / "tiles" / f"{tile}.tif"),
            ).to_json()
            term = {"exitCode": 0, "reason": "Completed", "message": rec}
            term["finishedAt"] = now_iso(finished)
            status["containerStatuses"] = [{"name": "worker", "state": {"terminated": term}}]
        elif phase == "Running":
            status["containerStatuses"] = [
                {"name": "worker", "state": {"running": {"startedAt": now_iso()}}}
            ]
        p["status"] = status
        return p

    def tick(
        status: dict[str, Any], pods: list[dict[str, Any]], write: bool = True
    ) -> tuple[dict[str, Any], float]:
        """One reconcile tick of the job as it is stored; the plan stays in the memo (as in
        the operator once its planner pod has reported). ``write=False``: within the status
        interval (pods are only counted)."""
        memo = ctx.jobs["0000-big"]
        memo.status, memo.seq, memo.created = None, 0, {}
        memo.last_write = time.time() if not write else 0.0
        c = JobController(ctx, body(status), pods)
        started = time.perf_counter()
        c.tick()
        return c.status, time.perf_counter() - started

    # just planned: the first write (the plan from the memo)
    planned, planned_s = tick({}, [])
    assert not kube.created, f"the primed plan should start no pod: {kube.created}"
    out["planned_bytes"] = wire_size(planned)

    # mid-run: 60 % complete in plan order, every other of the next 200 done (parallel
    # pods finish out of order), 4 failed, one tile split with 2 quadrants done, 1 failed,
    # 1 running; 50 pods alive, 4 of them just finished (processed by this tick)
    cut = int(n * 0.6)
    completed = set(range(cut)) | set(range(cut, cut + 200, 2))
    failed = {cut + 1, cut + 3, cut + 99, cut + 151}
    split_i = cut + 7
    parent = plan.tiles[split_i].id
    kids = [f"{parent}-q{i}" for i in range(4)]
    p = Progress(
        completed=completed,
        failed=failed,
        split={parent},
        sub_done={kids[0], kids[1]},
        sub_failed={kids[2]},
        memory_retries=17,
        other_retries=9,
        peak_observed=311 * MIB,
    )
    persisted = {
        **planned,
        **{k: v for k, v in progress_status(plan, p, None).items() if v is not None},
        "phase": "Running",
    }
    holes = [i for i in range(cut, cut + 400) if i not in completed | failed | {split_i}]
    now = time.time()
    pods = [pod(kids[3], "Running")]
    pods += [pod(plan.tiles[i].id, "Running") for i in holes[:45]]
    pods += [pod(plan.tiles[i].id, "Succeeded", now - 1) for i in holes[45:49]]
    mid, mid_s = tick(persisted, pods)
    out["mid_run_bytes"] = wire_size(mid)
    out["mid_run_completed_chars"] = len(mid.get("completedTiles") or "")
    # the steady per-tick cost at this size: ticks that only count pods (no write)
    steady = [tick(mid, pods[:46], write=False)[1] for _ in range(5)]

    # everything complete: the last tile's pod finishes, the tick starts the finalizer pod
    # (phase stays Running, reason Finalizing); the finalizer pod succeeds (simulated: the
    # result record `gisjob finalize` leaves) and the next tick finishes the job
    last = n - 1
    done_p = Progress(completed=set(range(last)), memory_retries=17, other_retries=9)
    done_p.peak_observed = 311 * MIB
    persisted = {
        **planned,
        **{k: v for k, v in progress_status(plan, done_p, None).items() if v is not None},
        "phase": "Running",
    }
    made = len(kube.created)
    finalizing, finalizing_s = tick(persisted, [pod(plan.tiles[last].id, "Succeeded", now - 1)])
    started = [
        kube.bodies[name]
        for name in kube.created[made:]
        if kube.bodies[name]["metadata"]["labels"].get(LABEL_ROLE) == ROLE_FINALIZER
    ]
    out["finalizing_phase"] = finalizing.get("phase")
    out["finalizing_bytes"] = wire_size(finalizing)
    out["finalizer_pods"] = len(started)
    out["finalizer_command"] = " ".join(started[0]["spec"]["containers"][0]["command"])[:200]
    fin = started[0]
    fin["metadata"]["uid"] = "pod-finalizer"
    manifest = str(data / "out" / "manifest.json")
    result = {
        "exitCode": 0,
        "outcome": "succeeded",
        "manifest": manifest,
        "digest": plan.digest,
        "tiles": {"planned": n, "succeeded": n, "failed": 0, "pending": 0, "split": 0},
        "seconds": 4.2,
    }
    term = {
        "exitCode": 0,
        "reason": "Completed",
        "message": json.dumps(result, separators=(",", ":")),
        "finishedAt": now_iso(now),
    }
    fin["status"] = {
        "phase": "Succeeded",
        "containerStatuses": [{"name": ROLE_FINALIZER, "state": {"terminated": term}}],
    }
    final, final_s = tick(finalizing, [fin])
    out["final_bytes"] = wire_size(final)
    out["final_phase"] = final.get("phase")
    out["final_outputs"] = final.get("outputs")

    # fragmentation: 10 % of the tiles failed at random (bitmap form past 4 KiB of ranges)
    rng = random.Random(42)
    bad = {i for i in range(n) if rng.random() < 0.1}
    frag = {**final, **progress_status(plan, Progress(set(range(n)) - bad, bad), None)}
    out["scattered_10pct_failed_bytes"] = wire_size(frag)
    out["tick_seconds"] = {
        "planned_first_write": round(planned_s, 3),
        "mid_run_write": round(mid_s, 3),
        "mid_run_no_write_median": round(sorted(steady)[len(steady) // 2], 3),
        "last_tile_to_finalizer_pod": round(finalizing_s, 3),
        "finalizer_result_to_final": round(final_s, 3),
    }
    shutil.rmtree(data, ignore_errors=True)
    return out


def finish_scaling(
    work: Path, sizes: tuple[int, ...] = (1000, 2000, 4000), repeat: int = 3
) -> dict[int, dict[str, float]]:
    """What the finalizer pod (``gisjob finalize``) does with the ledger of an N-tile job
    whose every tile has one succeeded record, in seconds: ``read`` (every record file of
    the output location, parsed), ``entries`` (``LedgerView.of`` over the records with the
    store's output check — a stat per tile — then ``ledger.manifest_entries`` with the
    operator's view, every tile completed); the best of ``repeat`` runs."""
    from gisjob_worker.ledger import LedgerRecord, LedgerView, manifest_entries, operator_resolver
    from gisjob_worker.ledgerstore import LocalLedgerStore, list_all
    from gisjob_worker.planner import build_plan
    from gisjob_worker.spec import parse_job

    out: dict[int, dict[str, float]] = {}
    for n in sizes:
        data = work / f"finish{n}"
        cols, rows = shape(n)
        write_raster(data / "in.tif", cols, rows, 16, sparse=True)
        doc = job_doc(f"f{n}", data, 50, 16)
        plan = build_plan(parse_job(doc))
        out_dir = data / "out"
        (out_dir / "tiles").mkdir(parents=True)
        store = LocalLedgerStore(out_dir)
        for t in plan.tiles:  # what each worker pod leaves: its tile file and its record
            tile_file = out_dir / "tiles" / f"{t.id}.tif"
            tile_file.write_bytes(b"tile")
            st = tile_file.stat()
            record = LedgerRecord(
                job=f"f{n}",
                digest=plan.digest,
                tile=t.id,
                attempt=0,
                outcome="succeeded",
                writer="worker",
                memory=t.memory_request_bytes,
                exit_code=0,
                output=f"tiles/{t.id}.tif",
                bytes=st.st_size,
                mtime_ns=st.st_mtime_ns,
                peak_rss_bytes=100 * MIB,
                recorded_at=time.time(),
            )
            path = out_dir / store.record_key(record)  # written plainly: setup, not measured
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(record.dumps() + "\n")
        everything = set(range(len(plan.tiles)))
        best = {"read": math.inf, "entries": math.inf}
        for _ in range(repeat):  # the best of a few: the machine is shared
            t0 = time.perf_counter()
            records = list_all(store)
            t1 = time.perf_counter()
            view = LedgerView.of(plan.digest, records, store.output_ok)
            entries = manifest_entries(plan, view, operator_resolver(everything, set()))
            t2 = time.perf_counter()
            ok = sum(1 for _, e in entries if e.outcome == "succeeded")
            assert ok == len(plan.tiles), f"{ok} of {len(plan.tiles)} entries succeeded"
            best = {"read": min(best["read"], t1 - t0), "entries": min(best["entries"], t2 - t1)}
        out[len(plan.tiles)] = best
        shutil.rmtree(data, ignore_errors=True)
    return out


# ------------------------------------------------------------------------- metrics


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one metric in Prometheus text format."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = _LINE.match(line)
        if m is None or m.group(1) != name:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        out.append((labels, float(m.group(4))))
    return out


def apiserver_requests(api: Any) -> Counter[Key]:
    """``apiserver_request_total`` by verb, resource, subresource and code (admin client)."""
    if hasattr(api, "param_serialize"):  # kubernetes client >= 33
        resp = api.call_api(*api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"]))
        resp.read()
    else:
        resp = api.call_api(
            "/metrics",
            "GET",
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
        )
    text = resp.data.decode()
    counts: Counter[Key] = Counter()
    for labels, value in samples(text, "apiserver_request_total"):
        if not labels.get("resource"):
            continue  # /metrics, /healthz, discovery
        key = (
            labels.get("verb", ""),
            labels["resource"],
            labels.get("subresource", ""),
            labels.get("code", ""),
        )
        counts[key] += int(value)
    return counts


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def operator_metrics(port: int) -> dict[str, Any]:
    text = http_text(f"http://127.0.0.1:{port}/metrics")
    api = {
        f"{lab['verb']} {lab['resource']}": int(v)
        for lab, v in samples(text, "gisjob_operator_api_requests_total")
    }
    errors = {
        f"{lab['verb']} {lab['resource']} {lab['code']}": int(v)
        for lab, v in samples(text, "gisjob_operator_api_errors_total")
    }
    ticks = {lab["result"]: int(v) for lab, v in samples(text, "gisjob_operator_reconciles_total")}
    dsum = sum(v for _, v in samples(text, "gisjob_operator_reconcile_duration_seconds_sum"))
    dcount = sum(v for _, v in samples(text, "gisjob_operator_reconcile_duration_seconds_count"))
    return {
        "api": api,
        "errors": errors,
        "ticks": ticks,
        "tick_seconds_sum": dsum,
        "tick_count": int(dcount),
    }


def owner(verb: str, resource: str, sub: str) -> str:
    """Which client makes this kind of request (see the module docstring)."""
    if verb not in WRITE_VERBS:
        return "reads"
    if resource == "pods" and sub in ("binding", "status"):
        return "kubelet"
    if resource in ("leases", "nodes"):
        return "heartbeat"
    if resource == "pods" and not sub and verb == "DELETE":
        return "pod deletes"  # the operator's, and the kubelet's re-deletes (split below)
    if resource == "pods" and not sub:
        return "operator"
    if resource == "gisjobs":
        return "operator" if sub == "status" else "operator (kopf)"
    if resource == "events":
        return "events"
    return "other"


# ------------------------------------------------------------------------ processes


def cpu_seconds(pid: int | None) -> tuple[float, float]:
    """(own, waited-for children) CPU seconds of a process."""
    import psutil

    if pid is None:
        return 0.0, 0.0
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0, 0.0
    return t.user + t.system, t.children_user + t.children_system


def vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * KIB
    except OSError:
        pass
    return 0


class SampledOperator(OperatorProcess):
    """``gisjob-operator run`` as the RBAC identity (the operator's default backoff), ready
    when its probe and metrics answer, its RSS sampled in a thread."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, interval: float) -> None:
        super().__init__(
            kubeconfig,
            namespace,
            log,
            status_interval=interval,
            backoff_base=None,
            # the stand-in worker image of the noop variant (a cluster admin allows images)
            extra_env={"GISJOB_ALLOWED_IMAGES": f"gisjob:,{NOOP_IMAGE}"},
        )
        self.peak_rss = 0
        self.rss_samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> None:
        super().start()
        assert self.proc is not None
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited:\n{self.tail()}")
            try:
                http_text(f"http://127.0.0.1:{self.liveness_port}/healthz")
                http_text(f"http://127.0.0.1:{self.metrics_port}/metrics")
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not become ready:\n{self.tail()}")
            time.sleep(0.2)

    def _sample(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
            while not self._stop.wait(0.2):
                self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
                self.rss_samples += 1
        except psutil.Error:
            return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        super().stop()


@dataclass
class Variant:
    name: str  # real | noop
    tiles: int
    cols: int
    rows: int
    parallelism: int
    image: str | None
    timeout: float


@dataclass
class Own:
    """The benchmark's own API requests, subtracted from the API server's counts."""

    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def add(self, verb: str, resource: str, sub: str = "") -> None:
        self.counts[(verb, resource, sub)] += 1


def shape(tiles: int) -> tuple[int, int]:
    """cols x rows of 64-pixel tiles, as square as divides ``tiles``."""
    rows = int(tiles**0.5)
    while tiles % rows:
        rows -= 1
    return tiles // rows, rows


class ClusterBench:
    def __init__(self, args: argparse.Namespace, state: Path) -> None:
        self.args = args
        self.state = state
        self.dev: Any = None
        self.api: Any = None
        self.identity: Path | None = None

    # ---------------------------------------------------------------- cluster

    def kubectl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(self.dev.kubeconfig), *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def up(self) -> None:

        from devcluster import DevCluster, find_binaries
        from kubernetes import config as k8s_config

        images = self.state / "images.json"
        self.state.mkdir(parents=True, exist_ok=True)
        # the script inline (`sh -c SCRIPT gisjob worker`: $0 gisjob, $1 the subcommand): a
        # script *path* in argv would be rewritten by the kubelet's path translation if it
        # lay under a mount path
        rule = {
            "match": NOOP_IMAGE,
            "commandPrefix": ["/bin/sh", "-c", NOOP_SCRIPT],
            "env": {
                "BENCH_GISJOB": str(BIN / "gisjob"),
                "BENCH_OUT": str(self.state / "noop" / "out"),
            },
        }
        images.write_text(json.dumps({"images": [rule]}))
        t0 = time.monotonic()
        bin_dir = find_binaries(build=os.environ.get("GISJOB_NO_BUILD") != "1")
        self.dev = DevCluster(
            self.state / "cluster", bin_dir=bin_dir, kubelet_args=[f"--image-config={images}"]
        )
        self.dev.down()  # leftovers of an interrupted run of this benchmark
        self.dev.up()
        log(f"dev cluster up in {time.monotonic() - t0:.1f} s ({bin_dir})")
        for f in ("crd.yaml", "namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
            out = self.kubectl("apply", "-f", str(REPO / "deploy" / f))
            if out.returncode != 0:
                raise RuntimeError(f"kubectl apply {f}: {out.stderr}")
        deadline = time.monotonic() + 30
        while "GisJob" not in self.kubectl("api-resources", "--api-group", GROUP).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("the GisJob CRD is not served")
            time.sleep(0.3)
        self.identity = Path(
            self.dev.service_account_kubeconfig("gisjob-system", "gisjob-operator", 7200)
        )
        self.api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.dev.kubeconfig)
        )

    def down(self) -> None:
        if self.dev is not None:
            self.dev.down(keep_state=self.args.keep)

    def pids(self) -> dict[str, int | None]:
        return {name: st.pid for name, st in self.dev.status().items()}

    # ---------------------------------------------------------------- one variant

    def run(self, v: Variant) -> dict[str, Any]:
        from kubernetes import client as k8s

        # plain dicts in and out: the client's model annotations do not apply
        core: Any = k8s.CoreV1Api(self.api)
        custom: Any = k8s.CustomObjectsApi(self.api)
        ns = f"bench-{v.name}"
        data = self.state / v.name
        shutil.rmtree(data, ignore_errors=True)
        write_raster(data / "in.tif", v.cols, v.rows, 64)
        (data / "out").mkdir(parents=True)
        core.create_namespace({"metadata": {"name": ns}})
        assert self.identity is not None
        op = SampledOperator(
            self.identity, ns, self.state / f"operator-{v.name}.log", self.args.status_interval
        )
        try:
            op.start()
            time.sleep(2.0)  # kopf's initial lists and watches happen before the window
            own = Own()
            pids = self.pids()
            cpu0 = {n: cpu_seconds(pids.get(n)) for n in COMPONENTS}
            cpu0["operator"] = cpu_seconds(op.pid)
            before = apiserver_requests(self.api)
            op_before = operator_metrics(op.metrics_port)
            doc = job_doc(v.name, data, v.parallelism, 64, v.image)
            t0 = time.monotonic()
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, doc)
            own.add("POST", "gisjobs")
            timeline: list[tuple[float, int]] = []
            status: dict[str, Any] = {}
            phase = None
            first_pod = planned = finalizing = None
            while time.monotonic() - t0 < v.timeout:
                time.sleep(0.5)
                obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, v.name)
                own.add("GET", "gisjobs")
                status = obj.get("status") or {}
                done = int((status.get("tiles") or {}).get("succeeded") or 0)
                running = int((status.get("tiles") or {}).get("running") or 0)
                if planned is None and status.get("plan"):  # the planner pod has reported
                    planned = time.monotonic() - t0
                if first_pod is None and (running or done):
                    first_pod = time.monotonic() - t0
                if finalizing is None and any(  # every tile resolved: the finalizer pod runs
                    c.get("reason") == "Finalizing" for c in status.get("conditions") or []
                ):
                    finalizing = time.monotonic() - t0
                timeline.append((time.monotonic() - t0, done))
                phase = status.get("phase")
                if phase in ("Succeeded", "Failed"):
                    break
            wall = time.monotonic() - t0
            # the operator deletes the last pods right after the final write: wait for them
            deadline = time.monotonic() + 30
            left = -1
            while time.monotonic() < deadline:
                left = len(core.list_namespaced_pod(ns).items)
                own.add("LIST", "pods")
                if left == 0:
                    break
                time.sleep(0.5)
            time.sleep(2.5)  # a couple more ticks: anything the operator still does after the end
            after = apiserver_requests(self.api)
            op_after = operator_metrics(op.metrics_port)
            cpu1 = {n: cpu_seconds(pids.get(n)) for n in COMPONENTS}
            cpu1["operator"] = cpu_seconds(op.pid)
            hwm = vm_hwm(op.pid)
            op_tail = "" if phase == "Succeeded" else op.tail(6000)
        finally:
            op.stop()
        manifest: dict[str, Any] = {}
        try:
            manifest = json.loads((data / "out" / "manifest.json").read_text())
        except (OSError, ValueError):
            pass
        delta: Counter[Key] = Counter()
        for k in set(before) | set(after):
            d = after.get(k, 0) - before.get(k, 0)
            if d:
                delta[k] = d
        for (verb, res, sub), n in own.counts.items():  # the benchmark's own requests
            left_over = n
            # kube-apiserver 1.20 counts a GET of one custom object under verb LIST
            verbs = (verb, "LIST") if verb == "GET" else (verb,)
            for k in [(vb, res, sub, code) for vb in verbs for code in ("200", "201")]:
                take = min(left_over, delta.get(k, 0))
                delta[k] -= take
                left_over -= take
        delta = Counter({k: n for k, n in delta.items() if n > 0})
        return {
            "variant": v.name,
            "tiles": v.tiles,
            "parallelism": v.parallelism,
            "phase": phase,
            "wall_seconds": round(wall, 2),
            "planned_seconds": planned,
            "first_pod_seconds": first_pod,
            "finalizing_seconds": finalizing,
            "operator_log_tail": op_tail,
            "timeline": timeline,
            "pods_left": left,
            "status": status,
            "status_bytes": wire_size(status),
            "apiserver": delta,
            "own": {" ".join(k).strip(): n for k, n in own.counts.items()},
            "operator": diff_metrics(op_before, op_after),
            "peak_rss": op.peak_rss,
            "vm_hwm": hwm,
            "rss_samples": op.rss_samples,
            "cpu": {
                n: (cpu1[n][0] - cpu0[n][0], cpu1[n][1] - cpu0[n][1])
                for n in (*COMPONENTS, "operator")
            },
            "manifest_outcome": manifest.get("outcome"),
            "manifest_tiles": len(manifest.get("tiles") or []),
        }


def diff_metrics(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    def sub(x: dict[str, int], y: dict[str, int]) -> dict[str, int]:
        return {k: y.get(k, 0) - x.get(k, 0) for k in set(x) | set(y) if y.get(k, 0) - x.get(k, 0)}

    return {
        "api": sub(a["api"], b["api"]),
        "errors": sub(a["errors"], b["errors"]),
        "ticks": sub(a["ticks"], b["ticks"]),
        "tick_seconds_sum": b["tick_seconds_sum"] - a["tick_seconds_sum"],
        "tick_count": b["tick_count"] - a["tick_count"],
    }


# -------------------------------------------------------------------------- report


def steady_rate(timeline: list[tuple[float, int]], tiles: int) -> float | None:
    """Tiles per minute between 10 % and 90 % of the job."""
    lo = next((t for t, d in timeline if d >= tiles * 0.1), None)
    hi = next((t for t, d in timeline if d >= tiles * 0.9), None)
    if lo is None or hi is None or hi <= lo:
        return None
    return (int(tiles * 0.9) - int(tiles * 0.1)) * 60 / (hi - lo)


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    tiles = r["tiles"]
    delta: Counter[Key] = r["apiserver"]
    by_owner: Counter[str] = Counter()
    for (verb, res, sub, _code), n in delta.items():
        by_owner[owner(verb, res, sub)] += n
    op_api: dict[str, int] = r["operator"]["api"]
    op_writes = sum(n for k, n in op_api.items() if not k.startswith(("get", "list")))
    op_events = op_api.get("create events", 0)
    events = by_owner.pop("events", 0)
    by_owner["operator"] += min(events, op_events)
    if events > op_events:
        by_owner["other"] += events - op_events
    # the operator counts every pod delete it sends (404s included); the rest are the
    # kubelet's: it deletes a pod it sees with a deletionTimestamp (gracePeriodSeconds=0),
    # which for a finished pod the API server has already removed (404)
    op_deletes = op_api.get("delete pods", 0)
    deletes = by_owner.pop("pod deletes", 0)
    by_owner["operator"] += min(deletes, op_deletes)
    by_owner["kubelet"] += max(0, deletes - op_deletes)
    writes = sum(n for k, n in delta.items() if k[0] in WRITE_VERBS)
    total = sum(delta.values())
    op_process = by_owner["operator"] + by_owner["operator (kopf)"]
    redundant = {
        f"{verb} {res} {code}": n
        for (verb, res, sub, code), n in delta.items()
        if res == "pods" and not sub and code in ("404", "409")
    }
    return {
        "tiles_per_min": tiles * 60 / r["wall_seconds"] if r["phase"] == "Succeeded" else 0.0,
        "steady_tiles_per_min": steady_rate(r["timeline"], tiles),
        "requests_per_tile": total / tiles,
        "writes_per_tile": writes / tiles,
        "operator_process_writes_per_tile": op_process / tiles,
        "operator_metric_writes_per_tile": op_writes / tiles,
        "kubelet_writes_per_tile": by_owner["kubelet"] / tiles,
        "by_owner": dict(by_owner),
        "redundant_pod_requests": redundant,
        "status_writes": op_api.get("patch gisjobs/status", 0),
        "pod_deletes": {"operator": min(deletes, op_deletes), "kubelet": deletes - op_deletes},
    }


def print_variant(r: dict[str, Any], s: dict[str, Any], interval: float) -> None:
    tiles, wall = r["tiles"], r["wall_seconds"]
    log(
        f"\n== {r['variant']}: {tiles} tiles of 64x64, parallelism {r['parallelism']}, "
        f"status interval {interval:g} s"
    )
    steady = s["steady_tiles_per_min"]

    def at(key: str) -> str:
        value = r.get(key)
        return "never" if value is None else f"{value:.1f} s"

    log(
        f"phase {r['phase']} after {wall:.1f} s (plan in the status after {at('planned_seconds')}"
        f", first pod seen running after {at('first_pod_seconds')}, finalizer pod running "
        f"after {at('finalizing_seconds')}): {s['tiles_per_min']:.0f} tiles/min overall, "
        + (f"{steady:.0f} tiles/min between 10 % and 90 %" if steady else "steady rate n/a")
    )
    log(
        f"manifest (the finalizer pod's): outcome {r['manifest_outcome']}, "
        f"{r['manifest_tiles']} tiles; pods left after the end: {r['pods_left']}"
    )
    log(f"final status: {r['status_bytes']} bytes ({r['status'].get('progress')})")
    if r["phase"] != "Succeeded":
        log(f"status message: {r['status'].get('message')}")
        log(f"conditions: {json.dumps(r['status'].get('conditions'))}")
        log("operator log tail:\n" + r["operator_log_tail"])
    op = r["operator"]
    ticks = op["tick_count"]
    mean_ms = 1000 * op["tick_seconds_sum"] / ticks if ticks else 0.0
    log(
        f"operator: peak RSS {r['peak_rss'] / MIB:.1f} MiB sampled ({r['rss_samples']} samples), "
        f"VmHWM {r['vm_hwm'] / MIB:.1f} MiB; {ticks} reconcile ticks, mean {mean_ms:.1f} ms; "
        f"{s['status_writes']} status writes ({s['status_writes'] / wall:.2f}/s, "
        f"at most {1 / interval:.2f}/s by design)"
    )
    cpu = r["cpu"]
    parts = [f"{n} {cpu[n][0]:.1f}" for n in ("operator", *COMPONENTS)]
    log(
        "CPU seconds: "
        + ", ".join(parts)
        + f"; pods (kubelet's children) {cpu['kubelet'][1]:.1f}"
        + f"; per tile: operator {1000 * cpu['operator'][0] / tiles:.1f} ms, "
        f"API server {1000 * cpu['kube-apiserver'][0] / tiles:.1f} ms, "
        f"kubelet {1000 * cpu['kubelet'][0] / tiles:.1f} ms"
    )
    log(f"\nAPI server requests during the job (benchmark's own {sum(r['own'].values())} removed):")
    log(f"  {'verb':<7} {'resource':<24} {'code':>4} {'count':>7} {'/tile':>7}  client")
    delta: Counter[Key] = r["apiserver"]
    for (verb, res, sub, code), n in sorted(delta.items(), key=lambda kv: (-kv[1], kv[0])):
        name = f"{res}/{sub}" if sub else res
        who = owner(verb, res, sub)
        log(f"  {verb:<7} {name:<24} {code:>4} {n:>7} {n / tiles:>7.3f}  {who}")
    total = sum(delta.values())
    log(
        f"  total {total} requests = {s['requests_per_tile']:.2f}/tile; writes "
        f"{s['writes_per_tile']:.2f}/tile"
    )
    log(
        "  requests by client: "
        + ", ".join(f"{k} {v} ({v / tiles:.2f}/tile)" for k, v in sorted(s["by_owner"].items()))
    )
    log(
        "operator's own gisjob_operator_api_requests_total: "
        + ", ".join(f"{k} {v}" for k, v in sorted(op["api"].items()))
        + (f"; errors {op['errors']}" if op["errors"] else "")
        + f"  -> {s['operator_metric_writes_per_tile']:.2f} writes/tile"
    )
    if s["redundant_pod_requests"]:
        pd = s["pod_deletes"]
        log(
            f"pod requests answered 404/409: {s['redundant_pod_requests']}; pod deletes: "
            f"operator {pd['operator']} for {tiles} pods, kubelet {pd['kubelet']} (after the "
            "operator's delete, on the watch event that shows the deletionTimestamp)"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--state", type=Path, default=Path("/var/tmp/gisjob-bench-operator"))
    ap.add_argument("--tiles", type=int, default=2000, help="noop variant tiles")
    ap.add_argument("--parallelism", type=int, default=50, help="noop variant parallelism")
    ap.add_argument("--real-tiles", type=int, default=200)
    ap.add_argument("--real-parallelism", type=int, default=8)
    ap.add_argument("--status-interval", type=float, default=2.0)
    ap.add_argument("--status-tiles", type=int, default=100_000, help="offline status plan")
    ap.add_argument("--only", choices=("status", "real", "noop"), action="append")
    ap.add_argument("--timeout", type=float, default=420.0, help="per variant, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the cluster state and logs")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    only = set(args.only or ("status", "real", "noop"))
    state: Path = args.state.resolve()
    started = time.monotonic()
    log(
        f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
        f"python {sys.version.split()[0]}, state {state}"
    )
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    targets: list[tuple[str, bool | None, str]] = []

    if "status" in only:
        cols = 400
        rows = max(1, args.status_tiles // cols)
        log(f"\n== status size of a {cols * rows:,}-tile plan (no cluster, real controller)")
        st = status_at_scale(state / "offline", cols, rows)
        results["status_at_scale"] = st
        log(
            f"plan built in {st['plan_seconds']} s (by the planner pod's code; the operator "
            f"lays it again from a {st['descriptor_bytes']}-byte descriptor in "
            f"{st['descriptor_to_plan_seconds']} s); status bytes: just planned "
            f"{st['planned_bytes']}, mid-run {st['mid_run_bytes']} (completedTiles "
            f"{st['mid_run_completed_chars']} chars), all complete and finalizing "
            f"{st['finalizing_bytes']} (phase {st['finalizing_phase']}, "
            f"{st['finalizer_pods']} finalizer pod), final {st['final_bytes']} "
            f"(phase {st['final_phase']}); 10 % scattered failures "
            f"{st['scattered_10pct_failed_bytes']}"
        )
        ts = st["tick_seconds"]
        log(
            f"tick time at this size: first (primed plan + write) {ts['planned_first_write']} s, "
            f"mid-run with a write {ts['mid_run_write']} s, mid-run without "
            f"{ts['mid_run_no_write_median']} s (the operator ticks every job every second), "
            f"last tile -> finalizer pod {ts['last_tile_to_finalizer_pod']} s, "
            f"finalizer result -> final status {ts['finalizer_result_to_final']} s"
        )
        fin = finish_scaling(state / "offline")
        results["finish_scaling"] = fin
        sizes = sorted(fin)
        n0, n1 = sizes[0], sizes[-1]
        guesses: dict[str, float] = {}
        parts = []
        for what in ("read", "entries"):
            s0, s1 = fin[n0][what], fin[n1][what]
            exponent = math.log(s1 / s0) / math.log(n1 / n0) if s0 > 0 and s1 > 0 else 0.0
            order = 2 if exponent > 1.5 else 1  # quadratic (tiles x records), or linear
            guesses[what] = s1 * (st["tiles"] / n1) ** order
            parts.append(
                f"{what}: "
                + ", ".join(f"{n:,} tiles {fin[n][what]:.3f} s" for n in sizes)
                + f" -> grows as N^{exponent:.1f}, N^{order} extrapolation to "
                f"{st['tiles']:,} tiles about {guesses[what]:,.1f} s"
            )
        log(
            "finalizer pod, manifest entries from the ledger (one record per tile): "
            + "; ".join(parts)
        )
        results["finish_extrapolated_seconds"] = guesses
        worst = max(st["mid_run_bytes"], st["final_bytes"])
        targets.append(
            (f"status < 64 KiB at {st['tiles']:,} tiles", worst < STATUS_TARGET, f"{worst} B")
        )

    variants = []
    if "real" in only:
        c, n = shape(args.real_tiles)
        variants.append(Variant("real", c * n, c, n, args.real_parallelism, None, args.timeout))
    if "noop" in only:
        c, n = shape(args.tiles)
        variants.append(Variant("noop", c * n, c, n, args.parallelism, NOOP_IMAGE, args.timeout))
    if variants:
        bench = ClusterBench(args, state)
        try:
            bench.up()
            for v in variants:
                log(f"\nrunning {v.name} ({v.tiles} tiles, parallelism {v.parallelism}) ...")
                r = bench.run(v)
                s = summarize(r)
                print_variant(r, s, args.status_interval)
                results[v.name] = {
                    **{k: val for k, val in r.items() if k not in ("apiserver", "timeline")},
                    "apiserver": {"|".join(k): n for k, n in r["apiserver"].items()},
                    "summary": s,
                }
                ok = r["phase"] == "Succeeded"
                tag = f"{v.name}, {v.tiles} tiles"
                targets.append(
                    (
                        f"<= {WRITE_TARGET:g} operator API writes/tile ({tag})",
                        s["operator_process_writes_per_tile"] <= WRITE_TARGET and ok,
                        f"{s['operator_process_writes_per_tile']:.2f} (operator process, API "
                        f"server); own metric {s['operator_metric_writes_per_tile']:.2f}; "
                        f"all clients {s['writes_per_tile']:.2f}, of which kubelet "
                        f"{s['kubelet_writes_per_tile']:.2f}",
                    )
                )
                rss = max(r["peak_rss"], r["vm_hwm"])
                targets.append(
                    (
                        f"operator RSS < 250 MB ({tag})",
                        rss < RSS_TARGET,
                        f"{rss / 10**6:.0f} MB ({rss / MIB:.0f} MiB)",
                    )
                )
                targets.append(
                    (
                        f"job succeeded ({tag})",
                        ok,
                        f"{s['tiles_per_min']:.0f} tiles/min",
                    )
                )
        finally:
            bench.down()
            if not args.keep:
                shutil.rmtree(state, ignore_errors=True)
    elif not args.keep:
        shutil.rmtree(state, ignore_errors=True)

    log("\n== targets")
    for what, ok, value in targets:
        log(f"{mark(bool(ok)):<4}  {what}: {value}")
    log(f"\ntotal {time.monotonic() - started:.0f} s; load now {os.getloadavg()[0]:.2f}")
    if args.json:
        results["targets"] = [{"target": w, "pass": ok, "value": v} for w, ok, v in targets]
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
