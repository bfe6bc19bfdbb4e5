"""Issue 14 end to end: the official `openai` client against the gateway on the local stack, nothing of kubetune played.

What is real: the API emulator with RBAC on; the real operator (`kubetune operator`, a process, with the chart's
RBAC) watching the tenant namespace team-a; the local kubelet running the real trainer (pre-flight Job, then the
training Job: TRL/PEFT on the tiny model) and the shared ModelDeployment's real vLLM + adapter-sync sidecar as
processes (tools/kubetune_local); the gateway (create_app on uvicorn, its own thread and loop) as its own
ServiceAccount with exactly kubetune.gateway.rbac's rights, uploads kept on file:// storage (what the local
stack's trainer reads); the openai SDK, whose own types every response is parsed into.

What is played, because the local stack has no cluster network: cluster DNS + kube-proxy for the gateway's
upstream connections (`ServiceResolver`): `<service>.<namespace>.svc:<port>` resolves, as kube-proxy routes it, to
a ready pod selected by that Service, i.e. the local serving pod's vLLM on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes
import openai
import pytest
import uvicorn
from aiohttp.abc import AbstractResolver, ResolveResult
from openai.types import FileObject, Model
from openai.types.chat import ChatCompletion
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from kubetune.clients.kube import Kube
from kubetune.gateway import inference
from kubetune.gateway.app import create_app
from kubetune.gateway.rbac import rbac_objects
from kubetune.gateway.settings import GatewaySettings
from kubetune.gateway.tenancy import TenantLimits, key_secret, new_key
from kubetune_local.cli import default_serving_python
from kubetune_local.run import LocalRun, modeldeployment_outcome
from tests.fixtures.tiny_data import FACTS, chat_records

from ..serving.helpers import free_port
from .conftest import GATEWAY_SA, GATEWAY_USER, KEYS_NAMESPACE
from .data import bad_chat_file

TENANT_A, TENANT_B = "team-a", "team-b"
SHARED = "shared-tiny"  # the platform's shared ModelDeployment of the base model (in team-a: the operator watches it)

pytestmark = pytest.mark.slow


class ServiceResolver(AbstractResolver):
    """Cluster DNS + kube-proxy for the local stack: `<svc>.<ns>.svc` -> a ready pod its Service selects -> that
    local pod's vLLM port on 127.0.0.1 (the only container port a serving Service targets)."""

    def __init__(self, lr: LocalRun) -> None:
        self.lr = lr

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        name, namespace, *rest = host.split(".")
        assert rest[:1] == ["svc"], f"not a Service name: {host}"
        service = self.lr.emu.get("", "v1", "services", namespace, name)
        if service is None:
            raise OSError(f"no Service {namespace}/{name}")
        selector = service["spec"]["selector"]
        pods = self.lr.kubelet.serving.pods
        for pod in self.lr.emu.list("", "v1", "pods", namespace):
            labels = pod["metadata"].get("labels") or {}
            local = pods.get((namespace, pod["metadata"]["name"]))
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or [])
            if local is not None and ready and all(labels.get(k) == v for k, v in selector.items()):
                return [ResolveResult(hostname=host, host="127.0.0.1", port=local.vllm_port, family=socket.AF_INET,
                                      proto=0, flags=socket.AI_NUMERICHOST)]
        raise OSError(f"Service {namespace}/{name} has no ready endpoint")

    async def close(self) -> None:
        pass


def wait_until(what: str, check: Callable[[], Any], timeout: float, lr: LocalRun) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        assert lr.operator.poll() is None, f"the operator exited; see {lr.workdir / 'operator.log'}"
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s (logs under {lr.workdir})")


@pytest.fixture
def local_gateway(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> Iterator[tuple[LocalRun, dict[str, openai.OpenAI]]]:
    serving_python = default_serving_python()
    if serving_python is None:
        pytest.skip("no .venv-serving: run serving-image/setup-venv.sh")
    model = f"file://{tiny_model_dir}"
    with LocalRun(workdir=tmp_path / "work", serving_python=serving_python, namespace=TENANT_A) as lr:
        emu = lr.emu
        for ns in (TENANT_B, KEYS_NAMESPACE):
            emu.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        # The shared ModelDeployment first: its vLLM starts while the job trains.
        lr.apply({"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": SHARED}, "spec": {
            "baseModel": {"uri": model}, "resources": {"gpus": 0},
            "vllm": {"maxLoraRank": 16, "maxModelLen": 256, "dtype": "float32", "extraArgs": ["--enforce-eager"]}}})
        emu.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": GATEWAY_SA, "namespace": KEYS_NAMESPACE}})
        for obj in rbac_objects(GATEWAY_SA, KEYS_NAMESPACE, [TENANT_A, TENANT_B], serving=[TENANT_A]):
            emu.apply(obj)
        keys = {}
        for ns in (TENANT_A, TENANT_B):
            keys[ns] = new_key()
            emu.apply(key_secret(keys[ns], ns, TenantLimits(max_concurrent_jobs=2, max_gpus_per_job=0, allowed_base_models=["tiny"]),
                                 KEYS_NAMESPACE))
        settings = GatewaySettings.model_validate({
            "keysNamespace": KEYS_NAMESPACE, "filesUri": f"file://{tmp_path / 'files'}",
            "baseModels": {"tiny": {"uri": model, "resources": {"gpus": 0}, "serving": {"namespace": TENANT_A, "name": SHARED}}},
            # what the tiny model learns in seconds (docs: TESTING.md); epochs come from the API's n_epochs
            "job": {"adapter": {"rank": 8}, "checkpointing": {"intervalSteps": 20},
                    "hyperparameters": {"batchSize": 8, "learningRate": "3e-3", "lrScheduler": "constant",
                                        "warmupRatio": "0", "maxLength": 128, "packing": False}}})
        kube = Kube(kubernetes.config.new_client_from_config(config_file=str(emu.write_kubeconfig(
            tmp_path / "gateway.kubeconfig", {"token": emu.token(KEYS_NAMESPACE, GATEWAY_SA)}, KEYS_NAMESPACE))))
        real_upstream = inference.upstream

        def upstream(app):  # the gateway's own session, with the played cluster DNS + kube-proxy
            if getattr(app.state, "upstream", None) is None:
                app.state.upstream = aiohttp.ClientSession(timeout=inference.TIMEOUT,
                                                           connector=aiohttp.TCPConnector(resolver=ServiceResolver(lr)))
            return real_upstream(app)

        monkeypatch.setattr(inference, "upstream", upstream)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings, kube), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until("the gateway", lambda: server.started, 10, lr)
        url = f"http://127.0.0.1:{port}/v1"
        try:
            yield lr, {ns: openai.OpenAI(api_key=key, base_url=url, max_retries=0, timeout=60) for ns, key in keys.items()}
        finally:
            server.should_exit = True
            thread.join(timeout=10)
        assert emu.denials(GATEWAY_USER) == [], "the gateway was denied (kubetune.gateway.rbac)"


def test_openai_client_end_to_end_on_the_local_stack(local_gateway):
    lr, clients = local_gateway
    a, b = clients[TENANT_A], clients[TENANT_B]
    started = time.monotonic()

    # Files: a good one kept, a bad one refused at upload with its line numbers, in OpenAI's error shape.
    train = "".join(json.dumps(r) + "\n" for r in chat_records(64)).encode()
    file = a.files.create(file=("facts.jsonl", train), purpose="fine-tune")
    assert isinstance(file, FileObject) and file.status == "processed" and file.bytes == len(train)
    with pytest.raises(openai.BadRequestError) as err:
        a.files.create(file=("bad.jsonl", bad_chat_file()), purpose="fine-tune")
    assert (err.value.body["type"], err.value.body["param"], err.value.body["code"]) == \
        ("invalid_request_error", "file", "invalid_file_format")
    assert "bad.jsonl:3: messages[1].role" in err.value.body["message"] and "bad.jsonl:5: not valid JSON" in err.value.body["message"]
    assert [f.id for f in a.files.list().data] == [file.id]

    # A job trains for real (pre-flight Job, then the training Job) and succeeds.
    job = a.fine_tuning.jobs.create(model="tiny", training_file=file.id, suffix="facts", hyperparameters={"n_epochs": 5})
    assert isinstance(job, FineTuningJob) and job.status == "validating_files"
    seen: list[str] = []

    def finished() -> FineTuningJob | None:
        now = a.fine_tuning.jobs.retrieve(job.id)
        if not seen or seen[-1] != now.status:
            seen.append(now.status)
        return now if now.status in ("succeeded", "failed", "cancelled") else None

    done = wait_until(f"job {job.id}", finished, 150, lr)
    assert done.status == "succeeded", (done.error, seen)
    assert "running" in seen and done.fine_tuned_model == f"ft:tiny:{TENANT_A}:facts:{job.id}"
    assert done.trained_tokens > 0 and done.finished_at is not None
    trained = time.monotonic() - started

    # kopf posts the operator's Events from a queue of its own, a moment after the status that caused them: wait for it
    def completed_events() -> list[FineTuningJobEvent] | None:
        events = a.fine_tuning.jobs.list_events(job.id, limit=100).data
        return events if any(e.message.startswith("Completed:") for e in events) else None

    events = wait_until(f"job {job.id}'s Completed event", completed_events, 30, lr)
    assert events and all(isinstance(e, FineTuningJobEvent) for e in events)
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)  # newest first
    assert events[-1].message == f"Created fine-tuning job: {job.id}"
    assert any(e.message.startswith("Completed:") for e in events), [e.message for e in events]
    checkpoints = a.fine_tuning.jobs.checkpoints.list(job.id).data
    assert all(isinstance(c, FineTuningJobCheckpoint) for c in checkpoints)
    assert [c.step_number for c in checkpoints] == [40, 20]  # newest first, as OpenAI lists them
    assert checkpoints[0].metrics.train_loss is not None and checkpoints[0].fine_tuning_job_id == job.id

    # Its model: listed, and answering with what it learned through the shared deployment's real vLLM.
    models = a.models.list().data
    assert all(isinstance(m, Model) for m in models) and [m.id for m in models] == ["tiny", done.fine_tuned_model]
    question, answer = FACTS[3]

    def ask() -> ChatCompletion | None:
        try:
            return a.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": question}],
                                             max_tokens=24, temperature=0)
        except openai.InternalServerError as exc:  # 503 + Retry-After while the adapter loads
            assert exc.status_code == 503, exc
            return None

    reply = wait_until("the fine-tuned model answering", ask, 120, lr)
    assert isinstance(reply, ChatCompletion) and reply.model == done.fine_tuned_model
    assert reply.choices[0].message.content == answer and reply.usage.completion_tokens > 0
    base = a.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0)
    assert base.choices[0].message.content != answer  # the base model never learned it
    served = time.monotonic() - started

    # A second job, cancelled while it trains: cancelled, and no training pod left running.
    second = a.fine_tuning.jobs.create(model="tiny", training_file=file.id, hyperparameters={"n_epochs": 100})
    wait_until(f"job {second.id} running", lambda: a.fine_tuning.jobs.retrieve(second.id).status == "running", 90, lr)
    assert a.fine_tuning.jobs.cancel(second.id).status == "cancelled"
    wait_until(f"job {second.id} ended", lambda: lr.emu.get("batch", "v1", "jobs", TENANT_A, f"{second.id}-train") is None, 60, lr)
    # The Job's deletion comes first; the final status (Cancelled, finished_at) follows on its DELETED event, and the
    # pods go with the garbage collector: each is waited for, not read once.
    cancelled = wait_until(f"job {second.id} cancelled and finished",
                           lambda: j if (j := a.fine_tuning.jobs.retrieve(second.id)).finished_at is not None else None, 60, lr)
    assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
    assert (lr.workdir / "pods" / TENANT_A / f"{second.id}-train-0" / "trainer.log").exists()  # its trainer did run
    wait_until(f"no pod of job {second.id} running", lambda: not [name for ns, name in lr.kubelet.runs if name.startswith(second.id)]
               and not [p["metadata"]["name"] for p in lr.emu.list("", "v1", "pods", TENANT_A)
                        if p["metadata"]["name"].startswith(second.id) and (p.get("status") or {}).get("phase") == "Running"],
               60, lr)
    assert [m.id for m in a.models.list().data] == ["tiny", done.fine_tuned_model]

    # An unknown model is a 404 in OpenAI's shape.
    with pytest.raises(openai.NotFoundError) as err:
        a.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": question}], max_tokens=4)
    assert err.value.body["code"] == "model_not_found"

    # Tenant B sees nothing of tenant A.
    assert b.files.list().data == [] and b.fine_tuning.jobs.list().data == []
    assert [m.id for m in b.models.list().data] == ["tiny"]
    for call in (lambda: b.files.retrieve(file.id), lambda: b.fine_tuning.jobs.retrieve(job.id),
                 lambda: b.fine_tuning.jobs.list_events(job.id), lambda: b.models.retrieve(done.fine_tuned_model),
                 lambda: b.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": question}],
                                                   max_tokens=4)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert modeldeployment_outcome(lr.get("ModelDeployment", SHARED)) == "Ready"
    print(f"trained in {trained:.1f} s, answered through the gateway at {served:.1f} s, all done at "
          f"{time.monotonic() - started:.1f} s")
