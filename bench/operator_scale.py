"""Operator scale figures against the in-process API emulator, with `kubetune operator` as a subprocess.

Prints:
  1. apply -> Job created latency (from the moment the API server has stored the FineTuneJob to the moment
     its Job appears in a watch), p50/p99 over N FineTuneJobs, in two modes run interleaved (ABBA, after
     one discarded warm-up run of each, bench/_stats.py): "paced", one created every --spacing seconds,
     and "burst", all N created back to back (as `kubectl apply -f` of a file of them does: one create after
     the other, as fast as the API server takes them).
     Each run starts from the same cluster (the previous run's FineTuneJobs deleted and gone) and an idle
     operator (their deletion events handled). Per mode:
     each run's p50/p99, their min / median / max and spread, and each run's figure over the goal;
  2. operator RSS with --live FineTuneJobs (and their Jobs) in the cluster;
  3. API requests the operator makes per FineTuneJob lifecycle (create -> running -> succeeded ->
     deleted), counted at the emulator, against the goal 2 x children + status writes.

The bench plays the Job controller and kubelet (pod creation, pod/Job status) through the emulator's
in-process API, so only the operator's requests travel over HTTP and are counted.

The emulator's own work (schema and CEL checks, watch fan-out, in Python) shares the bench process, not
the operator's: `--py-spy FILE` records the operator subprocess during the burst runs (py-spy raw
format: one folded stack a line with its sample count; `sort -t' ' -k2 -n` or flamegraph.pl).

    python bench/operator_scale.py [--latency-jobs 200] [--runs 5] [--live 1000] [--lifecycles 10] [--py-spy FILE]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats import Goal, interleaved, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"train": "s3://data/chat.jsonl"}}
# The pre-flight Job (on by default) is a step of its own, which this bench does not play: off, the figure is the
# operator's reaction to a create (the training Job), as before pre-flight existed.
ENV = {"KUBETUNE_DEFAULT_OUTPUT_URI": "s3://adapters/bench", "KUBETUNE_STORAGE_SECRET": "s3",
       "KUBETUNE_PREFLIGHT_ENABLED": "false"}
CHILDREN = 5  # ConfigMap, ServiceAccount, Role, RoleBinding, Job
# mode -> percentile -> goal in ms (issue 12 item 7: paced < 50 ms; burst p50 < 250 ms, p99 < 1 s)
GOALS = {"paced": {"p50": 50.0, "p99": 250.0}, "burst": {"p50": 250.0, "p99": 1000.0}}


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


def store(emu: Emulator, name: str, namespace: str) -> float:
    """Create FineTuneJob `name`; returns when the API server had stored it."""
    rtype = emu.resource("kubetune.io", "v1alpha1", "finetunejobs")

    def create() -> float:
        emu.handler.store.create(rtype, namespace, ftj(name, namespace))
        return time.monotonic()

    return emu.call(create)


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of process `pid`, or of this one (the emulator and the bench)."""
    if pid is None:
        return sum(os.times()[:2])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency_run(emu: Emulator, watcher: JobWatcher, names: list[str], spacing: float,
                operator: int) -> tuple[list[float], dict[str, float]]:
    """apply -> Job latencies (ms) of FineTuneJobs `names` created one every `spacing` s (0: back to back, as
    `kubectl apply -f` of a file of them does), the seconds from the first create to the last, and the CPU
    seconds the operator and the emulator (this process) used until the last Job appeared.
    Then deletes them and waits until they are gone, so that every run starts from the same cluster."""
    created: dict[str, float] = {}
    cpu = {"operator": -cpu_seconds(operator), "emulator": -cpu_seconds(), "wall": -time.monotonic()}
    for name in names:
        created[name] = store(emu, name, "bench")
        if spacing:
            time.sleep(spacing)
    cpu["creates"] = max(created.values()) - min(created.values())
    wait(lambda: all(f"{n}-train" in watcher.seen for n in created), 300, "latency Jobs", 0.05)
    cpu.update(operator=cpu["operator"] + cpu_seconds(operator), emulator=cpu["emulator"] + cpu_seconds(),
               wall=cpu["wall"] + time.monotonic())
    latencies = [(watcher.seen[f"{n}-train"] - t) * 1000 for n, t in created.items()]
    rtype = emu.resource("kubetune.io", "v1alpha1", "finetunejobs")
    emu.call(lambda: [emu.handler.store.delete(rtype, "bench", n) for n in names])
    wait(lambda: not emu.call(lambda: [n for n in names if emu.handler.store.find(rtype, "bench", n)]),
         120, "latency FineTuneJobs deleted", 0.1)
    cpu["settle"] = settle(operator)
    return latencies, cpu


def settle(pid: int, interval: float = 0.25, idle: float = 0.02, timeout: float = 120) -> float:
    """Wait until process `pid` is idle: under `idle` CPU seconds in each of two `interval`s in a row; returns the
    seconds waited. After a run's deletions the operator still has their watch events to handle (each FineTuneJob's
    and its 5 children's DELETED events); a run started before that would measure them too."""
    start = time.monotonic()
    deadline, quiet, last = start + timeout, 0, cpu_seconds(pid)
    while quiet < 2:
        if time.monotonic() > deadline:
            raise SystemExit(f"process {pid} did not go idle within {timeout:.0f} s")
        time.sleep(interval)
        now = cpu_seconds(pid)
        quiet, last = (quiet + 1 if now - last < idle else 0), now
    return time.monotonic() - start


class PySpy:
    """py-spy recording the operator, only while in use (the burst runs)."""

    def __init__(self, pid: int, out: str | None):
        self.pid, self.out, self.proc = pid, out, None

    def __enter__(self) -> PySpy:
        if self.out:
            command = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(self.pid), "--format", "raw",
                       "--rate", "250", "--nonblocking", "-o", self.out]  # nonblocking: the operator is not paused
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attached
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(2)  # SIGINT: py-spy writes its file and exits
            self.proc.wait(timeout=60)


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
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each latency mode, interleaved ABBA")
    parser.add_argument("--live", type=int, default=1000)
    parser.add_argument("--lifecycles", type=int, default=10)
    parser.add_argument("--spacing", type=float, default=0.1, help="seconds between creates in the paced latency phase")
    parser.add_argument("--py-spy", metavar="FILE", help="record the operator with py-spy during the burst runs")
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

            spacing = {"paced": args.spacing, "burst": 0.0}
            for mode in spacing:  # warm-up runs, discarded
                latency_run(emu, watcher, [f"warm{mode}-{i:04d}" for i in range(args.latency_jobs // 4)], spacing[mode],
                            proc.pid)
            runs: dict[str, list[dict[str, float]]] = {"paced": [], "burst": []}
            for r, mode in interleaved(list(spacing), args.runs):
                names = [f"{mode}{r}-{i:04d}" for i in range(args.latency_jobs)]
                with PySpy(proc.pid, args.py_spy if mode == "burst" else None):
                    values, cpu = latency_run(emu, watcher, names, spacing[mode], proc.pid)
                runs[mode].append({"p50": statistics.median(values), "p99": percentile(values, 0.99), "max": max(values)})
                print(f"run {r + 1} {mode}: p50 {runs[mode][-1]['p50']:.1f} ms, p99 {runs[mode][-1]['p99']:.1f} ms, "
                      f"max {runs[mode][-1]['max']:.1f} ms; creates took {cpu['creates']:.1f} s; until the last Job "
                      f"({cpu['wall']:.1f} s) CPU: operator "
                      f"{cpu['operator']:.1f} s, emulator {cpu['emulator']:.1f} s; operator idle {cpu['settle']:.1f} s after the "
                      "deletions", flush=True)

            jobs = emu.resource("batch", "v1", "jobs")
            count = lambda: emu.call(lambda: len(emu.handler.store.list(jobs, "bench")))  # noqa: E731
            for i in range(count(), args.live):
                emu.create(ftj(f"live-{i:04d}", "bench"))
            wait(lambda: count() >= args.live, 600, f"{args.live} Jobs", 0.5)
            live = count()
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
    print(f"operator_scale on {os.cpu_count()} cores, emulator in-process, operator as a subprocess; "
          f"{args.runs} runs of each latency mode interleaved ABBA after 1 warm-up run of each")
    for mode, per_run in runs.items():
        how = f"one every {args.spacing * 1000:.0f} ms" if mode == "paced" else "back to back"
        for q in ("p50", "p99"):
            values = sorted(run[q] for run in per_run)
            goal = GOALS[mode][q]
            print(f"apply -> Job created latency, {args.latency_jobs} FineTuneJobs created {how}, {q}: median "
                  f"{statistics.median(values):.1f} ms; per-run min {values[0]:.1f} / max {values[-1]:.1f} ms, spread "
                  f"{values[-1] - values[0]:.1f} ms over {len(values)} runs   (goal < {goal:.0f} ms)")
            report(f"  {mode} {q} / goal {goal:.0f} ms", [goal] * len(values), [run[q] for run in per_run],
                   Goal(1.0, at_most=True), ".2f")
    print(f"operator RSS with {live} FineTuneJobs and their Jobs live: {rss:.0f} MB   "
          f"(goal < 300 MB)")
    print(f"API requests per lifecycle (create->running->succeeded->deleted) over {len(counts)} lifecycles: "
          f"median {statistics.median(counts):.0f}, max {max(counts)}; status writes median {statistics.median(writes):.0f}; "
          f"goal <= 2 x {CHILDREN} children + status writes = {statistics.median(budget):.0f}; "
          f"ratio to goal {statistics.median(counts) / statistics.median(budget):.2f}")
    print("breakdown of one lifecycle: " + ", ".join(f"{k}: {v}" for k, v in sorted(results[-1][2].items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
