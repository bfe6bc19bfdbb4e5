"""The local Deployment controller + kubelet (`kubetune_local.serving`) on the emulator, with stand-in
containers (a sleeping "vLLM" process and a "sidecar" whose /readyz answers 200 unless its pod folder
holds a file named `unready`): replicas, per-pod readiness, a dead container restarted alone,
scaling both ways, and a template change rolled within maxSurge 1 / maxUnavailable 0. The real-vLLM
version of this is tests/local/test_local_replicas.py."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.validation import parse
from kubetune.builders.modeldeployment import build_children, desired_set, resolve_spec
from kubetune.config import OperatorSettings
from kubetune_local.kubelet import _terminate, spawn
from kubetune_local.serving import LocalServing

SIDECAR = """
import http.server, os, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503 if os.path.exists("unready") else 200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def _fake_spawn(argv: list[str], env: dict[str, str], cwd: Path, logname: str):
    if logname == "adapter-sync":
        return spawn([sys.executable, "-c", SIDECAR, argv[argv.index("--port") + 1]], env, cwd, logname)
    return spawn([sys.executable, "-c", "import time; time.sleep(600)"], env, cwd, logname)


def _deployment(replicas: int, model: str = "hf://Qwen/Qwen2.5-0.5B-Instruct") -> dict:
    body = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": "default", "uid": "u-1", "generation": 1}}
    spec = resolve_spec(parse(ModelDeploymentSpec, {"baseModel": {"uri": model}, "replicas": replicas, "resources": {"gpus": 0}}),
                        OperatorSettings(serving_image="local/serving"))
    dep = build_children(body, spec, OperatorSettings(serving_image="local/serving"), desired_set(1, []))[-1]
    for ctr in dep["spec"]["template"]["spec"]["containers"]:
        if "readinessProbe" in ctr:
            ctr["readinessProbe"]["periodSeconds"] = 0.3  # the test's own probe period: fewer seconds to wait
    return dep


@pytest.fixture
def serving(emulator, tmp_path):
    local = LocalServing(emulator, tmp_path, sys.executable, lambda *_: {"PATH": os.environ["PATH"]}, _fake_spawn, _terminate)
    yield local
    local.stop()


def _settle(serving: LocalServing, check, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        serving.sync_once()
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("did not settle")


def _pods(emu) -> dict[str, dict]:
    return {p["metadata"]["name"]: p for p in emu.list("", "v1", "pods", "default")}


def _ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])


def _dep_status(emu) -> dict:
    status = emu.get("apps", "v1", "deployments", "default", "chat-vllm")["status"]
    return {k: status.get(k) for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")}


def test_replicas_readiness_restart_scaling_and_rollout(emulator, serving):
    emulator.create(_deployment(2))
    _settle(serving, lambda: len(_pods(emulator)) == 2 and all(_ready(p) for p in _pods(emulator).values()))
    first = sorted(_pods(emulator))
    local = {name: serving.pods[("default", name)] for name in first}
    assert len({p.vllm_port for p in local.values()} | {p.sync_port for p in local.values()}) == 4  # each pod its own ports
    assert all(name.startswith("chat-vllm-") for name in first)
    _settle(serving, lambda: _dep_status(emulator) == {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2})

    # One pod's readiness probe fails: that pod alone goes not Ready, and the Deployment counts it.
    victim, other = first
    (local[victim].poddir / "unready").touch()
    _settle(serving, lambda: not _ready(_pods(emulator)[victim]) and _dep_status(emulator)["readyReplicas"] == 1)
    assert _ready(_pods(emulator)[other])
    (local[victim].poddir / "unready").unlink()
    _settle(serving, lambda: _ready(_pods(emulator)[victim]))

    # A dead container is started again, alone: same pod, same sidecar, the other pod untouched.
    pids = {name: {ctr: c.proc.pid for ctr, c in pod.containers.items()} for name, pod in local.items()}
    os.killpg(pids[victim]["vllm"], signal.SIGKILL)
    _settle(serving, lambda: {s["name"]: s for s in _pods(emulator)[victim]["status"]["containerStatuses"]}["vllm"]["restartCount"] == 1)
    statuses = {s["name"]: s for s in _pods(emulator)[victim]["status"]["containerStatuses"]}
    assert statuses["vllm"]["lastState"]["terminated"]["exitCode"] == 137 and statuses["adapter-sync"]["restartCount"] == 0
    now = {name: {ctr: c.proc.pid for ctr, c in pod.containers.items()} for name, pod in local.items()}
    assert now[other] == pids[other] and now[victim]["adapter-sync"] == pids[victim]["adapter-sync"]
    assert now[victim]["vllm"] != pids[victim]["vllm"] and sorted(_pods(emulator)) == first

    # Scale up to 3, then down to 1: pod objects and processes follow; the oldest pod stays.
    oldest, second = (p.name for p in serving.pods_of("default", "chat-vllm"))
    emulator.patch("apps", "v1", "deployments", "default", "chat-vllm", {"spec": {"replicas": 3}})
    _settle(serving, lambda: _dep_status(emulator)["readyReplicas"] == 3 and len(_pods(emulator)) == 3)
    third = next(name for name in _pods(emulator) if name not in first)
    gone = [serving.pods[("default", second)], serving.pods[("default", third)]]
    assert {pod.drain_seconds for pod in gone} == {10.0}  # vLLM's preStop sleep, from the pod spec
    for pod in gone:
        pod.drain_seconds = 1.0  # (shortened here)
    emulator.patch("apps", "v1", "deployments", "default", "chat-vllm", {"spec": {"replicas": 1}})
    _settle(serving, lambda: len(_pods(emulator)) == 1 and _dep_status(emulator)["replicas"] == 1)
    assert list(_pods(emulator)) == [oldest] and list(serving.pods) == [("default", oldest)]
    assert all(proc.poll() is None for pod in gone for proc in pod.procs)  # out of the API, still serving: preStop
    _settle(serving, lambda: all(proc.poll() is not None for pod in gone for proc in pod.procs))  # then SIGTERM

    # A new pod template rolls the pod: the new one first (maxSurge 1), the old one removed once it is Ready (maxUnavailable 0).
    rolled = _deployment(1, model="hf://Qwen/Qwen2.5-1.5B-Instruct")
    emulator.patch("apps", "v1", "deployments", "default", "chat-vllm", {"spec": {"template": rolled["spec"]["template"]}})
    seen_ready = []
    _settle(serving, lambda: seen_ready.append(_dep_status(emulator)["readyReplicas"]) or
            (len(_pods(emulator)) == 1 and oldest not in _pods(emulator) and _dep_status(emulator)["readyReplicas"] == 1))
    assert min(seen_ready) >= 1, seen_ready  # never below the one replica asked for
    assert serving.pods_of("default", "chat-vllm")[0].template_hash != local[oldest].template_hash
