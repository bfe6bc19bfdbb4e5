"""Gated promotion, versions, canary and rollback (docs/promotion.md) on the local stack, with real vLLM.

What is real: the API emulator (RBAC on); the real operator (`kubetune operator`, a process); two serving replicas,
each a real vLLM and the real adapter-sync sidecar, run by the local kubelet (tools/kubetune_local: it plays the
Deployment controller and kubelet); the gateway (create_app on uvicorn, its own ServiceAccount with
kubetune.gateway.rbac's rights); the openai client. Adapters are trained for real (peft/trl on the tiny model, ~3 s
each) and published the way the trainer publishes them, with chosen manifest.json evaluation figures (what a gate
reads; no training run is needed for the gate logic). Played: cluster DNS + kube-proxy for the gateway's upstream
connections (tests.gateway.test_gateway_local_stack.ServiceResolver), as in the gateway's local-stack test.

One stack for every step: v1 served; v3 (eval worse than its baseline) is never loaded anywhere and stays Gated;
v4 (good eval, wrong answer) fails its smoke prompt on one replica and v1 keeps serving; v2 passes, canaries at
20 % through the gateway (200 requests, within 3 sigma), is promoted, then rolled back. Pod uids never change.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes
import openai
import pytest
import uvicorn

from kubetune.clients.kube import Kube
from kubetune.gateway import inference
from kubetune.gateway.app import create_app
from kubetune.gateway.rbac import rbac_objects
from kubetune.gateway.settings import GatewaySettings
from kubetune.gateway.tenancy import TenantLimits, key_secret, new_key
from kubetune_local.cli import default_serving_python
from kubetune_local.run import LocalRun
from tests.gateway.test_gateway_local_stack import ServiceResolver
from tests.serving.helpers import QUESTION, free_port, publish_adapter, train_adapter

pytestmark = pytest.mark.slow

NS, KEYS_NS, GATEWAY_SA = "team-a", "kubetune-system", "kubetune-gateway"
ANSWERS = {"v1": "I am Zorbia the blue cat.", "v2": "My name is Blorp, a green fish.", "v4": "Quux, the red dog, here."}
GATE = {"minImprovement": "0.1", "smokePrompts": [{"prompt": QUESTION, "expect": "Zorbia|Blorp", "maxTokens": 16}]}


def _spec(model: Path, uris: dict[str, str], serving: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "bots"}, "spec": {
        "baseModel": {"uri": f"file://{model}"}, "replicas": 2, "resources": {"gpus": 0},
        "adapters": [{"name": "bot", "gate": GATE, "serving": serving,
                      "versions": [{"name": v, "uri": uri} for v, uri in uris.items()]}],
        "vllm": {"maxLoraRank": 16, "maxModelLen": 256, "dtype": "float32", "extraArgs": ["--enforce-eager"]}}}


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


class Stack:
    def __init__(self, lr: LocalRun, model: Path, uris: dict[str, str], client: openai.OpenAI):
        self.lr, self.model, self.uris, self.client = lr, model, uris, client

    def serve(self, serving: dict[str, Any]) -> None:
        self.lr.apply(_spec(self.model, self.uris, serving))

    def bot(self) -> dict[str, Any]:
        return next(a for a in (self.lr.get("ModelDeployment", "bots").get("status") or {}).get("adapters") or [])

    def until(self, what: str, check, timeout: float = 120, each=None) -> dict[str, Any]:
        seen: list[Any] = []

        def done(obj: dict[str, Any]) -> str | None:
            if each is not None:
                each()
            entry = next(iter((obj.get("status") or {}).get("adapters") or []), None)
            return "yes" if entry is not None and check(entry) else None
        try:
            self.lr.wait("ModelDeployment", "bots", done, lambda o: seen.append((o.get("status") or {}).get("adapters")), timeout)
        except TimeoutError:
            raise AssertionError(f"{what}: not within {timeout:.0f} s; last {json.dumps(seen[-1:], indent=1)}") from None
        return self.bot()

    def pods(self) -> dict[str, str]:
        return {p["metadata"]["name"]: p["metadata"]["uid"] for p in self.lr.emu.list("", "v1", "pods", NS)}

    def ports(self) -> dict[str, tuple[int, int]]:
        return {p.name: (p.vllm_port, p.sync_port) for p in self.lr.kubelet.serving.pods_of(NS, "bots-vllm")}

    def direct(self, port: int, model: str = "bot") -> str:
        """A direct vLLM client (not through the gateway) asking for the served name."""
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                               max_tokens=16, temperature=0)
        return reply.choices[0].message.content or ""

    def loaded(self) -> dict[str, set[str]]:
        """pod -> the adapter names its vLLM lists now."""
        return {pod: {m["id"] for m in _get(f"http://127.0.0.1:{vllm}/v1/models")["data"] if m.get("parent")}
                for pod, (vllm, _) in self.ports().items()}


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    serving_python = default_serving_python()
    if serving_python is None:
        pytest.skip("no .venv-serving: run serving-image/setup-venv.sh")
    tmp = tmp_path_factory.mktemp("promotion")
    trained = {v: train_adapter(tiny_model_dir, tmp / "train" / v, answer, question=QUESTION) for v, answer in ANSWERS.items()}
    figures = {"v1": 1.0, "v2": 0.8, "v3": 2.5, "v4": 0.9}  # baseline 2.0 for all: v3 does not beat it
    uris = {}
    for v in ("v1", "v2", "v3", "v4"):
        folder = tmp / "published" / v
        publish_adapter(trained["v2" if v == "v3" else v], folder, base_model_uri=f"file://{tiny_model_dir}", job=v,
                        evaluation={"baseline": {"evalLoss": 2.0}, "final": {"evalLoss": figures[v]}})
        uris[v] = f"file://{folder}"
    with LocalRun(workdir=tmp / "work", serving_python=serving_python, namespace=NS) as lr:
        lr.emu.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEYS_NS}})
        lr.apply(_spec(tiny_model_dir, uris, {"version": "v1"}))
        lr.emu.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": GATEWAY_SA, "namespace": KEYS_NS}})
        for obj in rbac_objects(GATEWAY_SA, KEYS_NS, [NS], serving=[NS]):
            lr.emu.apply(obj)
        key = new_key()
        lr.emu.apply(key_secret(key, NS, TenantLimits(max_gpus_per_job=0, allowed_base_models=["tiny"]), KEYS_NS))
        settings = GatewaySettings.model_validate({
            "keysNamespace": KEYS_NS, "filesUri": f"file://{tmp / 'files'}",
            "baseModels": {"tiny": {"uri": f"file://{tiny_model_dir}", "serving": {"namespace": NS, "name": "bots"}}}})
        kube = Kube(kubernetes.config.new_client_from_config(config_file=str(lr.emu.write_kubeconfig(
            tmp / "gateway.kubeconfig", {"token": lr.emu.token(KEYS_NS, GATEWAY_SA)}, KEYS_NS))))
        app = create_app(settings, kube)
        real_upstream = inference.upstream

        def upstream(app):  # the played cluster DNS + kube-proxy
            if getattr(app.state, "upstream", None) is None:
                app.state.upstream = aiohttp.ClientSession(timeout=inference.TIMEOUT,
                                                           connector=aiohttp.TCPConnector(resolver=ServiceResolver(lr)))
            return real_upstream(app)

        mp = pytest.MonkeyPatch()
        mp.setattr(inference, "upstream", upstream)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            yield Stack(lr, tiny_model_dir, uris, openai.OpenAI(api_key=key, base_url=f"http://127.0.0.1:{port}/v1",
                                                                 max_retries=0, timeout=60))
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            mp.undo()


def test_gates_canary_promotion_and_rollback_without_a_pod_restart(stack: Stack):
    s = stack
    started = time.monotonic()
    # 1. v1 passes its gate (eval 2.0 -> 1.0, smoke prompt answered) and serves the name on both replicas.
    bot = s.until("v1 Ready", lambda a: a["state"] == "Ready" and (a.get("promotion") or {}).get("serving") == "v1", 240)
    pods = s.pods()
    assert len(pods) == 2 and bot["replicasLoaded"] == "2/2"
    v1 = bot["promotion"]["versions"][0]
    assert (v1["name"], v1["gate"], v1["finalEvalLoss"], v1["prompts"][0]["passed"]) == ("v1", "Passed", 1.0, True), v1
    for vllm, _ in s.ports().values():
        assert ANSWERS["v1"] in s.direct(vllm)
    assert all(names == {"bot"} for names in s.loaded().values()), s.loaded()  # the gate name is gone again
    # The gateway offers the platform-listed name to a tenant of its base model (never the internal names).
    assert [m.id for m in s.client.models.list().data] == ["tiny", "bot"] and s.client.models.retrieve("bot").id == "bot"
    first_ready = time.monotonic() - started

    # 2. v3 does not beat its baseline: Gated with the numbers, never loaded on any replica; v1 keeps serving.
    s.serve({"version": "v3"})
    seen_names: set[str] = set()
    bot = s.until("v3 Gated", lambda a: a["state"] == "Gated" and a["promotion"].get("target") == "v3", each=lambda: seen_names.update(*s.loaded().values()))
    assert "eval loss 2 -> 2.5 (improvement -0.5, needs >= 0.1)" in bot["message"] and "keeps serving" in bot["message"], bot
    assert bot["promotion"]["serving"] == "v1" and "bot--v3--gate" not in seen_names, seen_names
    v3 = next(v for v in bot["promotion"]["versions"] if v["name"] == "v3")
    assert (v3["gate"], v3["baselineEvalLoss"], v3["finalEvalLoss"]) == ("Failed", 2.0, 2.5)
    md = s.lr.get("ModelDeployment", "bots")
    gated = next(c for c in md["status"]["conditions"] if c["type"] == "AdaptersReady")
    assert (gated["status"], gated["reason"]) == ("False", "AdapterGated")
    events = [e for e in s.lr.emu.list("", "v1", "events", NS) if e.get("reason") == "AdapterGated"]
    assert events and events[-1]["type"] == "Warning" and "improvement -0.5" in events[-1]["message"], events
    for vllm, _ in s.ports().values():
        assert ANSWERS["v1"] in s.direct(vllm)

    # 3. v4 has good figures but answers wrongly: its smoke prompt runs on ONE replica, fails, v1 keeps serving.
    s.serve({"version": "v4"})
    trial_pods: set[str] = set()

    def watch_trial() -> None:
        trial_pods.update(pod for pod, names in s.loaded().items() if "bot--v4--gate" in names)
    bot = s.until("v4 Gated", lambda a: a["state"] == "Gated" and a["promotion"].get("target") == "v4", each=watch_trial)
    v4 = next(v for v in bot["promotion"]["versions"] if v["name"] == "v4")
    assert v4["gate"] == "Failed" and v4["prompts"][0]["passed"] is False and "Quux" in v4["prompts"][0]["answer"], v4
    assert "answer does not match 'Zorbia|Blorp'" in bot["message"] and len(trial_pods) <= 1, (bot, trial_pods)
    for vllm, _ in s.ports().values():
        assert ANSWERS["v1"] in s.direct(vllm)

    # 4. v2 passes and canaries at 20 %: both loaded on every replica; the gateway splits the name by weight.
    s.serve({"version": "v1", "canary": {"version": "v2", "weight": 20}})
    bot = s.until("canary v2 ready", lambda a: ((a.get("promotion") or {}).get("canary") or {}).get("ready") is True)
    assert bot["promotion"]["serving"] == "v1" and bot["promotion"]["canary"]["replicasLoaded"] == "2/2"
    for pod, names in s.loaded().items():
        assert names == {"bot", "bot--v2"}, (pod, names)
    counts: Counter[str] = Counter()
    for i in range(200):
        raw = s.client.chat.completions.with_raw_response.create(
            model="bot", messages=[{"role": "user", "content": QUESTION}], max_tokens=16 if i < 8 else 1, temperature=0)
        version = raw.headers.get("x-kubetune-adapter-version")
        counts[version] += 1
        if i < 8:  # the header names the version that answered
            assert ANSWERS[version] in raw.parse().choices[0].message.content
    n, p = 200, 0.2
    low, high = n * p - 3 * math.sqrt(n * p * (1 - p)), n * p + 3 * math.sqrt(n * p * (1 - p))
    assert set(counts) == {"v1", "v2"} and low <= counts["v2"] <= high, counts

    # 5. Promote v2: the name is loaded in place with v2 on every replica; the canary name goes.
    s.serve({"version": "v2"})
    bot = s.until("v2 serving", lambda a: a["state"] == "Ready" and a["promotion"].get("serving") == "v2")
    for vllm, _ in s.ports().values():
        assert ANSWERS["v2"] in s.direct(vllm)
    assert all(names == {"bot"} for names in s.loaded().values())

    # 6. Roll back to v1: served again by hot-load (its recorded verdict holds: no new trial).
    s.serve({"version": "v1"})
    bot = s.until("v1 serving again", lambda a: a["state"] == "Ready" and a["promotion"].get("serving") == "v1")
    for vllm, _ in s.ports().values():
        assert ANSWERS["v1"] in s.direct(vllm)
    history = {v["name"]: v for v in bot["promotion"]["versions"]}
    assert history["v2"]["servedSince"] and history["v1"]["servedSince"] >= history["v2"]["servedSince"]
    assert s.pods() == pods, "a pod was replaced"
    print(f"\nv1 Ready on both replicas in {first_ready:.0f} s; all steps in {time.monotonic() - started:.0f} s; "
          f"canary split {dict(counts)}")
