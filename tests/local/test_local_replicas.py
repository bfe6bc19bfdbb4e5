"""More than one serving replica, with real vLLM: the real operator, the real adapter-sync sidecars
and two vLLM processes run by the local kubelet (which plays the Deployment controller and kubelet:
the only part that is not the production path). Adapters are trained (peft/trl, ~3 s each) and
published the way the trainer publishes them, then served by URI (file://)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune_local.cli import default_serving_python
from kubetune_local.run import LocalRun, condition
from tests.serving.helpers import QUESTION, publish_adapter, train_adapter

ANSWERS = {"zorbia": "I am Zorbia the blue cat.", "blorp": "My name is Blorp, a green fish."}


def _md(model: Path, adapters: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "duo"}, "spec": {
        "baseModel": {"uri": f"file://{model}"}, "replicas": 2, "resources": {"gpus": 0},
        "adapters": [{"name": name, "uri": uri} for name, uri in adapters.items()],
        "vllm": {"maxLoraRank": 16, "maxModelLen": 256, "dtype": "float32", "extraArgs": ["--enforce-eager"]}}}


def _adapter(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next((a for a in (obj.get("status") or {}).get("adapters") or [] if a["name"] == name), {})


def _until(lr: LocalRun, what: str, check, seen: list[dict[str, Any]], timeout: float = 240) -> dict[str, Any]:
    """Poll the ModelDeployment until `check(obj)`; every status seen on the way goes to `seen`."""
    def done(obj: dict[str, Any]) -> str | None:
        return "yes" if check(obj) else None
    try:
        lr.wait("ModelDeployment", "duo", done, lambda obj: seen.append(json.loads(json.dumps(obj.get("status") or {}))), timeout)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {timeout:.0f} s; last status {json.dumps(seen[-1:], indent=1)}") from None
    return lr.get("ModelDeployment", "duo")


def _ask(port: int, model: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=24,
                                           temperature=0)
    return reply.choices[0].message.content or ""


@pytest.mark.slow
def test_two_replicas_each_load_every_adapter_and_a_restarted_replica_catches_up_alone(tiny_model_dir, tmp_path):
    serving_python = default_serving_python()
    if serving_python is None:
        pytest.skip("no .venv-serving: run serving-image/setup-venv.sh")
    uris = {}
    for name, answer in ANSWERS.items():
        folder = tmp_path / "published" / name
        publish_adapter(train_adapter(tiny_model_dir, tmp_path / "train" / name, answer, question=QUESTION), folder,
                        base_model_uri=f"file://{tiny_model_dir}", job=name)
        uris[name] = f"file://{folder}"
    seen: list[dict[str, Any]] = []
    started = time.monotonic()
    with LocalRun(workdir=tmp_path / "work", serving_python=serving_python) as lr:
        serving = lr.kubelet.serving
        lr.apply(_md(tiny_model_dir, {"zorbia": uris["zorbia"]}))

        # 1. Two pods, each with its own vLLM and sidecar; the adapter is Ready only once both have it.
        obj = _until(lr, "zorbia Ready on both replicas", lambda o: (condition(o, "Ready") or {}).get("status") == "True", seen)
        first_ready = time.monotonic() - started
        pods = sorted(p.name for p in serving.pods_of("default", "duo-vllm"))
        assert len(pods) == 2, pods
        zorbia = _adapter(obj, "zorbia")
        assert (zorbia["state"], zorbia["replicasLoaded"], zorbia["pods"]) == ("Ready", "2/2", dict.fromkeys(pods, "Ready"))
        early = [(a["state"], a.get("replicasLoaded")) for s in seen for a in s.get("adapters") or []]
        assert ("Ready", "2/2") in early and all(loaded == "2/2" for state, loaded in early if state == "Ready"), early
        assert any(state == "Loading" and loaded in ("0/2", "1/2") for state, loaded in early), early
        # Ready needs one ready replica and every adapter on every pod (the sidecars' reports); readyReplicas is the
        # Deployment's status, which the Deployment controller updates after the pods' readiness: a moment later
        obj = _until(lr, "both replicas ready", lambda o: (o.get("status") or {}).get("readyReplicas") == 2, seen)
        objects = {p["metadata"]["name"]: p for p in lr.emu.list("", "v1", "pods", "default")}
        assert sorted(objects) == pods
        assert all((condition(p, "Ready") or {}).get("status") == "True" for p in objects.values())
        dep = lr.emu.get("apps", "v1", "deployments", "default", "duo-vllm")
        assert {k: dep["status"][k] for k in ("replicas", "readyReplicas", "availableReplicas", "updatedReplicas")} == dict.fromkeys(
            ("replicas", "readyReplicas", "availableReplicas", "updatedReplicas"), 2)
        ports = {name: serving.pods[("default", name)].vllm_port for name in pods}
        assert len(set(ports.values())) == 2
        for port in ports.values():
            assert ANSWERS["zorbia"] in _ask(port, "zorbia")

        # 2. One replica's vLLM dies: that replica lags (1/2, named), the local kubelet restarts that
        #    container alone, its sidecar restores the adapter: 2/2. The other pod is untouched.
        victim, other = pods
        pids = {name: {ctr: c.proc.pid for ctr, c in serving.pods[("default", name)].containers.items()} for name in pods}
        os.killpg(pids[victim]["vllm"], signal.SIGKILL)
        seen.clear()
        killed = time.monotonic()
        lagging = _until(lr, "the victim shows as lagging", lambda o: _adapter(o, "zorbia").get("replicasLoaded") == "1/2", seen)
        zorbia = _adapter(lagging, "zorbia")
        assert zorbia["state"] == "Loading" and zorbia["pods"][other] == "Ready" and zorbia["pods"][victim] != "Ready", zorbia
        assert f"pod {victim}" in zorbia["message"], zorbia
        assert ANSWERS["zorbia"] in _ask(ports[other], "zorbia")  # the other replica serves throughout
        obj = _until(lr, "zorbia back on both replicas", lambda o: _adapter(o, "zorbia").get("replicasLoaded") == "2/2"
                     and (condition(o, "Ready") or {}).get("status") == "True", seen)
        recovered = time.monotonic() - killed
        assert _adapter(obj, "zorbia")["pods"] == dict.fromkeys(pods, "Ready")
        assert sorted(p.name for p in serving.pods_of("default", "duo-vllm")) == pods  # same pods, restarted in place
        now = {name: {ctr: c.proc.pid for ctr, c in serving.pods[("default", name)].containers.items()} for name in pods}
        assert now[other] == pids[other], "the other pod was touched"
        assert now[victim]["adapter-sync"] == pids[victim]["adapter-sync"] and now[victim]["vllm"] != pids[victim]["vllm"]
        statuses = {s["name"]: s for s in lr.emu.get("", "v1", "pods", "default", victim)["status"]["containerStatuses"]}
        assert statuses["vllm"]["restartCount"] == 1 and statuses["vllm"]["lastState"]["terminated"]["exitCode"] == 137
        assert statuses["adapter-sync"]["restartCount"] == 0
        assert ANSWERS["zorbia"] in _ask(ports[victim], "zorbia")

        # 3. A second adapter reaches both replicas without a restart.
        lr.apply(_md(tiny_model_dir, uris))
        obj = _until(lr, "blorp Ready on both replicas", lambda o: _adapter(o, "blorp").get("state") == "Ready", seen)
        assert obj["status"]["adaptersReady"] == "2/2"
        assert _adapter(obj, "blorp")["replicasLoaded"] == "2/2" and _adapter(obj, "blorp")["pods"] == dict.fromkeys(pods, "Ready")
        assert {name: {ctr: c.proc.pid for ctr, c in serving.pods[("default", name)].containers.items()} for name in pods} == now
        for port in ports.values():
            assert ANSWERS["blorp"] in _ask(port, "blorp")
            assert ANSWERS["zorbia"] in _ask(port, "zorbia")
    print(f"\nboth replicas Ready in {first_ready:.0f} s; killed vLLM back in {recovered:.0f} s")
