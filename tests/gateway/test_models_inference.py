"""Models and inference through the gateway: the official `openai` client -> the gateway -> real vLLM (CPU) serving
the tiny model and LoRA adapters trained on it.

What is real: the gateway (uvicorn, its own thread and loop, as its ServiceAccount with exactly
kubetune.gateway.rbac's rights in the API emulator with RBAC on), vLLM (one start for the module, tiny model,
runtime LoRA loading), the adapters (trained with PEFT/TRL, tests/serving/conftest.py), the openai SDK.

What is played, by the documented behaviour of the part it stands for:
- the operator + the adapter-sync sidecar of the shared ModelDeployment (`play_serving`): when an entry appears in
  its spec.adapters, load that folder into vLLM (POST /v1/load_lora_adapter, as the sidecar does) and then write
  status.adapters[name].state=Ready (as the operator does once every replica reports it); when an entry goes,
  unload it and drop it from status. status.endpoint/readyReplicas say where vLLM listens (the Service URL);
- the operator's status of the two FineTuneJobs: Succeeded=True with status.adapter (the published folder), as
  derive_status writes it after a training Job completes; the jobs carry what kubetune.gateway.jobs sets when it
  creates one (label kubetune.io/api=openai, the kubetune.io/openai annotation).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import openai
import pytest
import uvicorn

from kubetune.clients.kube import Kube
from kubetune.gateway import jobview
from kubetune.gateway.app import create_app
from kubetune.gateway.rbac import rbac_objects
from kubetune.gateway.routing import adapter_name
from kubetune.gateway.settings import GatewaySettings
from kubetune.gateway.tenancy import TenantLimits
from tests.serving.conftest import ANSWERS, trained_adapters  # noqa: F401  (fixture)
from tests.serving.helpers import QUESTION, free_port, http_get, serving_venv_missing, start_vllm, wait_vllm

from .conftest import GATEWAY_SA, GATEWAY_USER, KEYS_NAMESPACE, add_key

pytestmark = pytest.mark.skipif(serving_venv_missing() is not None, reason=serving_venv_missing() or "")

ROOT = Path(__file__).resolve().parents[2]
SERVING_NS = "kubetune-serving"
SHARED = "shared-tiny"  # the shared ModelDeployment; vLLM serves the base model under its name
MD_PATH = f"/apis/kubetune.io/v1alpha1/namespaces/{SERVING_NS}/modeldeployments/{SHARED}"
JOBS = {"team-a": ("ftjob-" + "a" * 24, "zorbia", "a"), "team-b": ("ftjob-" + "b" * 24, "blorp", "b")}


@pytest.fixture(scope="module")
def vllm(tiny_model_dir: Path, tmp_path_factory) -> Iterator[str]:
    """Real vLLM on CPU, no adapters at start (they are hot-loaded as the sidecar does). Yields its /v1 URL."""
    port = free_port()
    proc = start_vllm(tiny_model_dir, port, tmp_path_factory.mktemp("vllm") / "vllm.log", served_name=SHARED)
    try:
        wait_vllm(proc, port)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.stop()


def _post(url: str, body: dict) -> int:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def play_serving(emulator, vllm: str, stop: threading.Event) -> None:
    """The operator and the sidecar of the shared ModelDeployment (see the module docstring)."""
    loaded: dict[str, str] = {}
    base = vllm.removesuffix("/v1")
    while not stop.wait(0.05):
        code, md = emulator.http("GET", MD_PATH)
        if code != 200:
            continue
        want = {a["name"]: a["uri"] for a in md["spec"].get("adapters") or []}
        changed = False
        for name in set(loaded) - set(want):
            assert _post(f"{base}/v1/unload_lora_adapter", {"lora_name": name}) == 200
            del loaded[name]
            changed = True
        for name, uri in want.items():
            if loaded.get(name) != uri:
                assert _post(f"{base}/v1/load_lora_adapter", {"lora_name": name, "lora_path": uri.removeprefix("file://"),
                                                                     "load_inplace": True}) == 200
                loaded[name] = uri
                changed = True
        if changed or len(md.get("status", {}).get("adapters") or []) != len(loaded):
            adapters = [{"name": n, "source": u, "uri": u, "state": "Ready", "replicasLoaded": "1/1"} for n, u in sorted(loaded.items())]
            emulator.http("PATCH", MD_PATH + "/status", {"status": {"adapters": adapters}}, "application/merge-patch+json")


def _ftj(namespace: str, job: str, suffix: str, adapter_dir: Path) -> dict:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": job, "namespace": namespace, "labels": {jobview.LABEL_API: "openai"},
                         "annotations": {jobview.ANNOTATION: json.dumps({"model": "tiny", "suffix": suffix})}},
            "spec": {"baseModel": {"uri": "s3://models/tiny"}, "dataset": {"train": "s3://files/train.jsonl"}}}


@pytest.fixture
def gateway(emulator, kubectl, tmp_path, vllm, trained_adapters) -> Iterator[dict]:  # noqa: F811
    kubectl("apply", "-f", str(ROOT / "crds"))
    for ns in ("team-a", "team-b", KEYS_NAMESPACE, SERVING_NS):
        emulator.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    emulator.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": GATEWAY_SA, "namespace": KEYS_NAMESPACE}})
    for obj in rbac_objects(GATEWAY_SA, KEYS_NAMESPACE, ["team-a", "team-b"], serving=[SERVING_NS]):
        emulator.apply(obj)
    keys = {ns: add_key(emulator, ns, TenantLimits(allowed_base_models=["tiny"])) for ns in ("team-a", "team-b")}
    emulator.apply({"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": SHARED, "namespace": SERVING_NS},
                    "spec": {"baseModel": {"uri": "s3://models/tiny"}}})
    assert emulator.http("PATCH", MD_PATH + "/status", {"status": {"endpoint": vllm, "readyReplicas": 1, "replicas": 1}},
                         "application/merge-patch+json")[0] == 200
    for ns, (job, suffix, which) in JOBS.items():
        emulator.apply(_ftj(ns, job, suffix, trained_adapters[which].path))
        status = {"conditions": [{"type": "Succeeded", "status": "True", "reason": "Completed", "message": "Training finished.",
                                  "lastTransitionTime": "2026-12-01T10:00:00Z"}],
                  "completionTime": "2026-12-01T10:00:00Z", "gpuSeconds": 120, "progress": {"trainedTokens": 7578},
                  "adapter": {"uri": f"file://{trained_adapters[which].path}", "manifestSha256": "0" * 64}}
        path = f"/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs/{job}/status"
        assert emulator.http("PATCH", path, {"status": status}, "application/merge-patch+json")[0] == 200
    settings = GatewaySettings.model_validate({
        "keysNamespace": KEYS_NAMESPACE, "filesUri": f"file://{tmp_path}/files",
        "baseModels": {"tiny": {"uri": "s3://models/tiny", "serving": {"namespace": SERVING_NS, "name": SHARED}},
                       "untuned": {"uri": "s3://models/other"}}})
    kube = Kube(kubernetes.config.new_client_from_config(
        config_file=str(emulator.write_kubeconfig(tmp_path / "gw.kubeconfig", {"token": emulator.token(KEYS_NAMESPACE, GATEWAY_SA)},
                                                  KEYS_NAMESPACE))))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, kube), host="127.0.0.1", port=port, log_level="warning"))
    threads = [threading.Thread(target=server.run, daemon=True)]
    stop = threading.Event()
    threads.append(threading.Thread(target=play_serving, args=(emulator, vllm, stop), daemon=True))
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    try:
        yield {"url": url, "settings": settings,
               "clients": {ns: openai.OpenAI(api_key=key, base_url=url + "/v1", max_retries=0, timeout=60)
                           for ns, key in keys.items()}}
    finally:
        stop.set()
        server.should_exit = True
        for thread in threads:
            thread.join(timeout=10)
    assert emulator.denials(GATEWAY_USER) == [], "the gateway was denied (kubetune.gateway.rbac)"


def ft(ns: str) -> str:
    job, suffix, _ = JOBS[ns]
    return jobview.fine_tuned_model("tiny", ns, suffix, job)


def tokens(url: str) -> dict[tuple[str, str, str], float]:
    from kubetune.gateway.usage import tokens_from_exposition

    return tokens_from_exposition(http_get(url + "/metrics")[1], None)


def test_models_chat_completions_streams_usage_and_tenancy(gateway, vllm):
    a, b = gateway["clients"]["team-a"], gateway["clients"]["team-b"]
    # The counters are per process: other tests in this session (the local-stack test, also team-a on "tiny")
    # may have counted already, so this test checks what it adds.
    before = tokens(gateway["url"])
    assert [m.id for m in a.models.list().data] == ["tiny", ft("team-a")]  # not team-b's; "untuned" is not allowed to it
    assert a.models.retrieve(ft("team-a")).owned_by == "team-a"

    ask = [{"role": "user", "content": QUESTION}]
    reply = a.chat.completions.create(model=ft("team-a"), messages=ask, temperature=0, max_tokens=16)
    assert (reply.choices[0].message.content, reply.model) == (ANSWERS["a"], ft("team-a"))
    assert adapter_name("team-a", JOBS["team-a"][0]) in [m["id"] for m in http_get(f"{vllm}/models")[1]["data"]]
    assert b.chat.completions.create(model=ft("team-b"), messages=ask, temperature=0, max_tokens=16).choices[0].message.content == ANSWERS["b"]

    # Streaming: the text as it comes, the model renamed in every chunk, no usage chunk unless asked for.
    chunks = list(a.chat.completions.create(model=ft("team-a"), messages=ask, temperature=0, max_tokens=16, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWERS["a"]
    assert all(c.model == ft("team-a") and c.choices and c.usage is None for c in chunks)
    asked = list(a.chat.completions.create(model=ft("team-a"), messages=ask, temperature=0, max_tokens=16, stream=True,
                                           stream_options={"include_usage": True}))
    assert asked[-1].choices == [] and asked[-1].usage.completion_tokens > 0

    plain = a.completions.create(model="tiny", prompt="Who", max_tokens=5, temperature=0)
    assert plain.model == "tiny" and plain.usage.completion_tokens == 5
    streamed = list(a.completions.create(model="tiny", prompt="Who", max_tokens=5, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text

    # Usage counted per tenant and model, from the responses' usage (the stream's hidden usage chunk included).
    after = tokens(gateway["url"])
    counted = {key: value - before.get(key, 0.0) for key, value in after.items()}
    # Three requests to team-a's model (one plain, two streamed): all the same greedy answer.
    assert asked[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert counted[("team-a", ft("team-a"), "completion")] == 3 * reply.usage.completion_tokens
    assert counted[("team-a", ft("team-a"), "prompt")] == 3 * reply.usage.prompt_tokens
    assert counted[("team-a", "tiny", "completion")] == 10 and counted[("team-b", ft("team-b"), "completion")] > 0

    # Tenancy: another tenant's model and an unknown one are the same 404; a base model not allowed to it too.
    for client, model in ((b, ft("team-a")), (a, "ft:tiny:team-a::ftjob-" + "c" * 24), (a, "gpt-4o"), (b, "untuned")):
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model=model, messages=ask, max_tokens=4)
        assert err.value.body["code"] == "model_not_found" and model in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        b.models.retrieve(ft("team-a"))


def test_delete_model_stops_serving_it(gateway, emulator, vllm):
    a, b = gateway["clients"]["team-a"], gateway["clients"]["team-b"]
    ask = [{"role": "user", "content": QUESTION}]
    assert a.chat.completions.create(model=ft("team-a"), messages=ask, temperature=0, max_tokens=16).choices[0].message.content == ANSWERS["a"]
    assert b.chat.completions.create(model=ft("team-b"), messages=ask, temperature=0, max_tokens=16).choices[0].message.content == ANSWERS["b"]
    with pytest.raises(openai.NotFoundError):
        b.models.delete(ft("team-a"))  # not its model
    assert a.models.delete(ft("team-a")).deleted is True
    adapters = [x["name"] for x in emulator.http("GET", MD_PATH)[1]["spec"].get("adapters") or []]
    assert adapters == [adapter_name("team-b", JOBS["team-b"][0])]  # only its own entry went
    assert [m.id for m in a.models.list().data] == ["tiny"]
    with pytest.raises(openai.NotFoundError):
        a.chat.completions.create(model=ft("team-a"), messages=ask, max_tokens=4)
    with pytest.raises(openai.PermissionDeniedError):
        a.models.delete("tiny")
    assert b.chat.completions.create(model=ft("team-b"), messages=ask, temperature=0, max_tokens=16).choices[0].message.content == ANSWERS["b"]


def waiting(url: str) -> float:
    """kubetune_gateway_requests_waiting for the shared ModelDeployment, from the gateway's /metrics (what the KEDA
    ScaledObject's wake trigger reads through Prometheus)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(http_get(url + "/metrics")[1]):
        for sample in family.samples:
            if sample.name == "kubetune_gateway_requests_waiting" and sample.labels == {
                    "deployment_namespace": SERVING_NS, "modeldeployment": SHARED}:
                return sample.value
    return 0.0


def test_a_deployment_scaled_to_zero_is_woken_by_the_requests_waiting_for_it(gateway, emulator):
    """Scale to zero and back (docs/scaling.md). Played, besides the fixture's parts: KEDA with the Deployment
    controller and kubelet. KEDA polls the wake trigger's query (builders.scaling.wake_trigger: the sum of the
    gateway's kubetune_gateway_requests_waiting for this ModelDeployment) and, above its activationThreshold 0,
    scales the workload from 0 to 1; the pod turns Ready and the operator writes status.readyReplicas 1. Here:
    once the gateway's /metrics shows the held request, status.readyReplicas becomes 1."""
    a = gateway["clients"]["team-a"]
    ask = [{"role": "user", "content": QUESTION}]
    scaled = {"status": {"readyReplicas": 0, "replicas": 0}}
    assert emulator.http("PATCH", MD_PATH + "/status", scaled, "application/merge-patch+json")[0] == 200
    # nobody wakes it: after coldStartSeconds a 503 that says why, and nothing is left counted
    gateway["settings"].cold_start_seconds = 1
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as err:
        a.chat.completions.create(model=ft("team-a"), messages=ask, max_tokens=4)
    assert err.value.status_code == 503 and "has no ready replica" in err.value.body["message"]
    assert 1.0 <= time.monotonic() - started < 10 and waiting(gateway["url"]) == 0

    gateway["settings"].cold_start_seconds = 60
    answers: list[str] = []
    held = threading.Thread(target=lambda: answers.append(a.chat.completions.create(
        model=ft("team-a"), messages=ask, temperature=0, max_tokens=16).choices[0].message.content))
    held.start()
    deadline = time.monotonic() + 20
    while waiting(gateway["url"]) != 1.0:
        assert time.monotonic() < deadline, "the held request never showed in kubetune_gateway_requests_waiting"
        time.sleep(0.1)
    time.sleep(1.5)
    assert held.is_alive() and not answers  # held, not refused
    woken = {"status": {"readyReplicas": 1, "replicas": 1}}
    assert emulator.http("PATCH", MD_PATH + "/status", woken, "application/merge-patch+json")[0] == 200
    held.join(timeout=30)
    assert answers == [ANSWERS["a"]] and waiting(gateway["url"]) == 0
