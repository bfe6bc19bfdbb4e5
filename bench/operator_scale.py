"""Operator scale figures against the in-process API emulator, with `kubetune operator` as a subprocess.

Prints:
  1. apply -> Job created latency, p50/p99 over N FineTuneJobs created one after another (from the
     moment the API server has stored the object to the moment the Job appears in a watch);
  2. operator RSS with --live FineTuneJobs (and their Jobs) in the cluster;
  3. API requests the operator makes per FineTuneJob lifecycle (create -> running -> succeeded ->
     deleted), counted at the emulator, against the goal 2 x children + status writes.

The bench plays the Job controller and kubelet (pod creation, pod/Job status) through the emulator's
in-process API, so only the operator's requests travel over HTTP and are counted.

    python bench/operator_scale.py [--latency-jobs 200] [--live 1000] [--lifecycles 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from kubetune_emulator import Emulator

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"train": "s3://data/chat.jsonl"}}
ENV = {"KUBETUNE_DEFAULT_OUTPUT_URI": "s3://adapters/bench", "KUBETUNE_STORAGE_SECRET": "s3"}
CHILDREN = 5  # ConfigMap, ServiceAccount, Role, RoleBinding, Job


def ftj(name: str, namespace: str) -> dict:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": namespace}, "spec": SPEC}


def wait(check, timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


class JobWatcher(threading.Thread):
    """Records when each Job is first seen, from one HTTP watch stream."""

    def __init__(self, url: str, namespace: str):
        super().__init__(daemon=True)
        self.url = f"{url}/apis/batch/v1/namespaces/{namespace}/jobs?watch=true&timeoutSeconds=3600"
        self.seen: dict[str, float] = {}

    def run(self) -> None:
        with urllib.request.urlopen(self.url, timeout=3600) as stream:
            for line in stream:
                event = json.loads(line)
                if event.get("type") == "ADDED":
                    self.seen.setdefault(event["object"]["metadata"]["name"], time.monotonic())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def lifecycle(emu: Emulator, name: str, namespace: str) -> tuple[int, int, dict]:
    """One FineTuneJob from create to deletion; returns (operator requests, status writes, breakdown)."""
    emu.reset_requests()
    emu.create(ftj(name, namespace))
    job = wait(lambda: emu.get("batch", "v1", "jobs", namespace, f"{name}-train"), 10, "lifecycle Job")
    template = job["spec"]["template"]
    emu.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-pod", "namespace": namespace,
                "labels": template["metadata"]["labels"]}, "spec": template["spec"]})
    emu.patch("", "v1", "pods", namespace, f"{name}-pod", {"status": {"phase": "Running", "containerStatuses": [
        {"name": "trainer", "state": {"running": {"startedAt": "2026-11-23T08:00:00Z"}}}]}}, subresource="status")
    emu.patch("batch", "v1", "jobs", namespace, f"{name}-train", {"status": {"active": 1}}, subresource="status")
    condition = lambda type_, status: lambda: any(  # noqa: E731
        c["type"] == type_ and c["status"] == status
        for c in ((emu.get("kubetune.io", "v1alpha1", "finetunejobs", namespace, name) or {}).get("status") or {}).get("conditions", []))
    wait(condition("Running", "True"), 10, "Running")
    report = {"adapter": {"uri": f"s3://adapters/bench/{namespace}/{name}", "manifestSha256": "0" * 64, "type": "lora"}}
    emu.patch("", "v1", "pods", namespace, f"{name}-pod", {"status": {"phase": "Succeeded", "containerStatuses": [
        {"name": "trainer", "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": json.dumps(report)}}}]}},
        subresource="status")
    emu.patch("batch", "v1", "jobs", namespace, f"{name}-train", {"status": {"active": 0, "succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-23T08:10:00Z"}]}}, subresource="status")
    wait(condition("Succeeded", "True"), 10, "Succeeded")
    emu.delete("kubetune.io", "v1alpha1", "finetunejobs", namespace, name)
    wait(lambda: not emu.list("batch", "v1", "jobs", namespace), 10, "children collected")
    time.sleep(1.0)  # let late events settle
    requests = [r for r in emu.requests if r.verb not in ("watch", None)]
    status_writes = sum(1 for r in requests if r.subresource == "status" and r.verb == "patch")
    breakdown: dict[str, int] = {}
    for r in requests:
        key = f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}"
        breakdown[key] = breakdown.get(key, 0) + 1
    return len(requests), status_writes, breakdown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--live", type=int, default=1000)
    parser.add_argument("--lifecycles", type=int, default=10)
    parser.add_argument("--spacing", type=float, default=0.1, help="seconds between creates in the paced latency phase")
    args = parser.parse_args()

    with Emulator() as emu:
        emu.apply_file(ROOT / "crds" / "kubetune.io_finetunejobs.yaml")
        emu.apply_file(ROOT / "crds" / "kubetune.io_modeldeployments.yaml")
        for ns in ("bench", "lifecycle"):
            emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        log = open(ROOT / "bench" / ".operator_scale.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "kubetune", "operator"], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "KUBECONFIG": emu.kubeconfig, **ENV})
        try:
            watcher = JobWatcher(emu.url, "bench")
            watcher.start()
            emu.create(ftj("warmup", "bench"))
            wait(lambda: "warmup-train" in watcher.seen, 60, "operator start-up", 0.1)

            latencies = {}
            for mode, spacing in (("paced", args.spacing), ("burst", 0.0)):
                created: dict[str, float] = {}
                for i in range(args.latency_jobs):
                    name = f"{mode}-{i:04d}"
                    emu.create(ftj(name, "bench"))
                    # from the moment the object is stored (kubectl apply returns): the emulator's own
                    # schema + CEL checks run in Python here, where a real API server takes microseconds
                    created[name] = time.monotonic()
                    time.sleep(spacing)
                wait(lambda: all(f"{n}-train" in watcher.seen for n in created), 300, "latency Jobs", 0.1)
                latencies[mode] = [(watcher.seen[f"{n}-train"] - t) * 1000 for n, t in created.items()]

            for i in range(len(watcher.seen), args.live):
                emu.create(ftj(f"live-{i:04d}", "bench"))
            wait(lambda: len(watcher.seen) >= args.live, 600, f"{args.live} Jobs", 0.5)
            time.sleep(5)
            rss = rss_mb(proc.pid)

            results = [lifecycle(emu, f"life-{i}", "lifecycle") for i in range(args.lifecycles)]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()

    counts = [r[0] for r in results]
    writes = [r[1] for r in results]
    budget = [2 * CHILDREN + w for w in writes]
    print(f"operator_scale on {os.cpu_count()} cores, emulator in-process, operator as a subprocess")
    for mode, values in latencies.items():
        how = f"one every {args.spacing * 1000:.0f} ms" if mode == "paced" else "all at once"
        print(f"apply -> Job created latency, {len(values)} FineTuneJobs created {how}: p50 {statistics.median(values):.1f} ms, "
              f"p99 {percentile(values, 0.99):.1f} ms, max {max(values):.1f} ms   (goal p50 < 50 ms, p99 < 250 ms)")
    print(f"operator RSS with {len(watcher.seen)} FineTuneJobs and their Jobs live: {rss:.0f} MB   (goal < 300 MB)")
    print(f"API requests per lifecycle (create->running->succeeded->deleted) over {len(counts)} lifecycles: "
          f"median {statistics.median(counts):.0f}, max {max(counts)}; status writes median {statistics.median(writes):.0f}; "
          f"goal <= 2 x {CHILDREN} children + status writes = {statistics.median(budget):.0f}; "
          f"ratio to goal {statistics.median(counts) / statistics.median(budget):.2f}")
    print("breakdown of one lifecycle: " + ", ".join(f"{k}: {v}" for k, v in sorted(results[-1][2].items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
