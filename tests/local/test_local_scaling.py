"""Scaling a ModelDeployment with real vLLM: the real operator, real adapter-sync sidecars and vLLM processes run by
the local kubelet, which plays the Deployment controller (a RollingUpdate of maxSurge 1 / maxUnavailable 0: a new
pod, an old one removed once the new one is Ready) and kubelet (readiness probe on the sidecar's /readyz). The test
plays kube-proxy: each request goes to one pod, round robin, among the pods the API shows Ready and not deleted
(a Service's endpoints).

One model restart cycle (three vLLM starts in all): 1 replica Ready; a base-model change (a new revision pin) rolls
it with a request loop running, none failing (the old pod leaves the endpoints, serves through vLLM's preStop sleep,
then gets SIGTERM); `kubectl scale`-style scaling to 2 through the scale subresource, the
new pod not Ready before its sidecar reports every adapter loaded, then answering for the adapter."""

from __future__ import annotations

import itertools
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kubetune_local.cli import default_serving_python
from kubetune_local.run import LocalRun, condition
from tests.serving.helpers import QUESTION, publish_adapter, train_adapter

ANSWER = "I am Zorbia the blue cat."
MDS = "/apis/kubetune.io/v1alpha1/namespaces/default/modeldeployments"


def _md(model: Path, uri: str, revision: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "roll"}, "spec": {
        "baseModel": {"uri": f"file://{model}", **({"revision": revision} if revision else {})}, "replicas": 1,
        "resources": {"gpus": 0}, "adapters": [{"name": "zorbia", "uri": uri}],
        "vllm": {"maxLoraRank": 16, "maxModelLen": 256, "dtype": "float32", "extraArgs": ["--enforce-eager"]}}}


def _ready(lr: LocalRun) -> bool:
    return (condition(lr.get("ModelDeployment", "roll") or {}, "Ready") or {}).get("status") == "True"


def _until(check, what: str, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def _endpoints(lr: LocalRun) -> list[str]:
    """The Service's endpoints: pods the API shows Ready and not being deleted."""
    return sorted(p["metadata"]["name"] for p in lr.emu.list("", "v1", "pods", "default")
                  if not p["metadata"].get("deletionTimestamp") and (condition(p, "Ready") or {}).get("status") == "True")


def _ask(port: int, model: str, max_tokens: int = 24) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=max_tokens, temperature=0)
    return reply.choices[0].message.content or ""


class RequestLoop:
    """Plays a client behind kube-proxy: requests one after another, each to the next Ready endpoint."""

    def __init__(self, lr: LocalRun):
        self.lr, self.ok, self.failures, self.served_by = lr, 0, [], set()
        self.ports: dict[str, int] = {}  # endpoint -> its address (a pod's IP:port, as kube-proxy knows it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        turn = itertools.count()
        while not self._stop.is_set():
            endpoints = _endpoints(self.lr)
            pods = self.lr.kubelet.serving.pods
            if not endpoints:
                self.failures.append("no Ready endpoint")
                time.sleep(0.2)
                continue
            self.ports.update({n: pods[("default", n)].vllm_port for n in endpoints if ("default", n) in pods})
            name = endpoints[next(turn) % len(endpoints)]
            try:
                reply = _ask(self.ports[name], "zorbia", max_tokens=12)
                assert reply, "empty reply"
                self.ok += 1
                self.served_by.add(name)
            except Exception as exc:  # noqa: BLE001 - every failure counts
                self.failures.append(f"{name}: {type(exc).__name__}: {exc}")

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=90)


def _sidecar_loaded(port: int) -> bool:
    import json

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
            status = json.loads(response.read())
    except Exception:  # noqa: BLE001 - not up yet
        return False
    return any(a["name"] == "zorbia" and a["state"] == "Ready" for a in status.get("adapters") or [])


@pytest.mark.slow
def test_a_base_model_change_rolls_without_a_failed_request_and_a_new_replica_is_ready_only_with_every_adapter(
        tiny_model_dir, tmp_path):
    serving_python = default_serving_python()
    if serving_python is None:
        pytest.skip("no .venv-serving: run serving-image/setup-venv.sh")
    folder = tmp_path / "published" / "zorbia"
    publish_adapter(train_adapter(tiny_model_dir, tmp_path / "train", ANSWER, question=QUESTION), folder,
                    base_model_uri=f"file://{tiny_model_dir}", job="zorbia")
    uri = f"file://{folder}"
    started = time.monotonic()
    with LocalRun(workdir=tmp_path / "work", serving_python=serving_python) as lr:
        serving = lr.kubelet.serving
        lr.apply(_md(tiny_model_dir, uri))
        _until(lambda: _ready(lr), "1 replica Ready")
        first_ready = time.monotonic() - started
        (old,) = [p.name for p in serving.pods_of("default", "roll-vllm")]

        # 1. A base-model change (the revision pin moves: a new pod template) rolls the pod while a client keeps asking.
        rolled_at = time.monotonic()
        seen_pods: list[set[str]] = []
        with RequestLoop(lr) as loop:
            _until(lambda: loop.ok >= 3, "the request loop answered", 60)
            lr.apply(_md(tiny_model_dir, uri, revision="v2"))

            def rolled() -> bool:
                names = {p.name for p in serving.pods_of("default", "roll-vllm")}
                seen_pods.append(names)
                return old not in names and len(names) == 1 and _ready(lr)
            _until(rolled, "the roll finished")
            (new,) = [p.name for p in serving.pods_of("default", "roll-vllm")]
            _until(lambda: new in loop.served_by, "the new pod answered the loop", 60)
        roll_seconds = time.monotonic() - rolled_at
        assert loop.failures == [], loop.failures[:5]
        assert {old, new} <= loop.served_by and loop.ok >= 10, (loop.ok, loop.served_by)
        assert max(len(names) for names in seen_pods) == 2  # maxSurge 1: never more than one extra pod
        assert all(old in names or new in names for names in seen_pods)  # the old pod went only once the new one was there

        # 2. Scale to 2 through the scale subresource (what `kubectl scale md roll --replicas=2` sends).
        code, scale = lr.emu.http("PATCH", f"{MDS}/roll/scale", {"spec": {"replicas": 2}}, "application/merge-patch+json")
        assert code == 200 and scale["spec"]["replicas"] == 2
        added = _until(lambda: [p for p in serving.pods_of("default", "roll-vllm") if p.name != new], "a second pod")[0]
        samples = []  # (pod Ready in the API, its sidecar reports the adapter loaded)
        while True:
            pod = lr.emu.get("", "v1", "pods", "default", added.name) or {}
            ready = (condition(pod, "Ready") or {}).get("status") == "True"
            samples.append((ready, _sidecar_loaded(added.sync_port)))
            if ready:
                break
            assert time.monotonic() - rolled_at < 600, "the new pod never turned Ready"
            time.sleep(0.1)
        assert all(loaded for ready, loaded in samples if ready), samples[-5:]
        assert not samples[0][0] and not samples[0][1]  # it started not Ready, without the adapter
        assert ANSWER in _ask(added.vllm_port, "zorbia")
        obj = _until(lambda: (o := lr.get("ModelDeployment", "roll")) and o["status"].get("readyReplicas") == 2 and
                     o["status"]["replicas"] == 2 and o, "status counts 2 replicas")
        assert next(a for a in obj["status"]["adapters"] if a["name"] == "zorbia")["replicasLoaded"] == "2/2"
    print(f"\n1 replica Ready in {first_ready:.0f} s; rolled in {roll_seconds:.0f} s with {loop.ok} requests, none failed")
