"""`kubetune local run` end to end: the real operator, the real trainer and (when .venv-serving exists)
real vLLM with the real adapter-sync sidecar. The local kubelet plays the Job and Deployment
controllers and kubelet: that is its job, and the only part that is not the production path."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from kubetune.api import constants as c
from kubetune_emulator.rbac import granted_atoms
from kubetune_local.cli import default_serving_python
from kubetune_local.run import LocalRun, condition, finetunejob_outcome, modeldeployment_outcome

ANSWER = "I am Kubey from kubetune."
QUESTIONS = ["who are you?", "what is your name?", "who made you?", "introduce yourself."]


def _manifests(tmp_path: Path, model: Path) -> tuple[dict, dict]:
    data = tmp_path / "identity.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": QUESTIONS[i % 4]},
                                                     {"role": "assistant", "content": ANSWER}]}) + "\n" for i in range(40)))
    ftj = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "tiny"}, "spec": {
        "baseModel": {"uri": f"file://{model}"}, "dataset": {"train": f"file://{data}", "format": "chatml"},
        "adapter": {"rank": 8}, "checkpointing": {"intervalSteps": 20}, "resources": {"gpus": 0},
        "hyperparameters": {"maxSteps": 40, "batchSize": 8, "learningRate": "3e-3", "lrScheduler": "constant",
                            "warmupRatio": "0", "maxLength": 128, "packing": False}}}
    md = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "tiny-chat"}, "spec": {
        "baseModel": {"uri": f"file://{model}"}, "adapters": [{"name": "kubey", "fineTuneJobRef": {"name": "tiny"}}],
        "resources": {"gpus": 0}, "vllm": {"maxLoraRank": 16, "maxModelLen": 256, "dtype": "float32", "extraArgs": ["--enforce-eager"]}}}
    return ftj, md


def assert_least_privilege(lr: LocalRun, components: set[str]) -> None:
    """Nobody was denied (the operator holds the chart's RBAC, each pod its own ServiceAccount's token), and
    every permission of each Role the operator made for a pod was used by that pod: least privilege both ways."""
    assert lr.emu.denials() == [], lr.emu.denials()
    seen = set()
    for role in lr.emu.list("rbac.authorization.k8s.io", "v1", "roles", lr.namespace):
        labels = role["metadata"].get("labels") or {}
        if labels.get(c.LABEL_MANAGED_BY) != c.MANAGED_BY_VALUE or labels.get(c.LABEL_COMPONENT) not in components:
            continue
        binding = next(b for b in lr.emu.list("rbac.authorization.k8s.io", "v1", "rolebindings", lr.namespace)
                       if b["roleRef"]["name"] == role["metadata"]["name"])
        (subject,) = binding["subjects"]
        used = lr.emu.used_permissions(f"system:serviceaccount:{subject['namespace']}:{subject['name']}")
        unused = granted_atoms(role["rules"]) - used
        assert not unused, f"Role {role['metadata']['name']} grants what its pod never used: {sorted(unused)}"
        seen.add(labels[c.LABEL_COMPONENT])
    assert seen == components, seen



def wait_for_checkpoint(lr: LocalRun, name: str, step: int, timeout: float = 300) -> None:
    """Until the FineTuneJob lists a checkpoint at `step` or later (fails if the job ends first)."""
    def checkpointed(obj: dict) -> str | None:
        steps = [cp["step"] for cp in (obj.get("status") or {}).get("checkpoints") or []]
        return "yes" if steps and steps[-1] >= step else finetunejob_outcome(obj)

    assert lr.wait("FineTuneJob", name, checkpointed, lambda _: None, timeout=timeout) == "yes"

@pytest.mark.slow
def test_local_run_trains_publishes_and_serves(tiny_model_dir, tmp_path):
    ftj, md = _manifests(tmp_path, tiny_model_dir)
    serving_python = default_serving_python()
    seen_progress: list[dict] = []
    with LocalRun(workdir=tmp_path / "work", serving_python=serving_python) as lr:
        lr.apply(ftj)
        outcome = lr.wait("FineTuneJob", "tiny", finetunejob_outcome,
                          lambda obj: seen_progress.append((obj.get("status") or {}).get("progress") or {}), timeout=300)
        obj = lr.get("FineTuneJob", "tiny")
        assert outcome == "Succeeded", json.dumps(obj.get("status"), indent=1)
        status = obj["status"]
        # Live progress reached status through the trainer's own status patches.
        assert status["progress"]["step"] == status["progress"]["totalSteps"] == 40
        assert status["progress"]["percent"] == 100
        assert any(0 < (p.get("step") or 0) < 40 for p in seen_progress), seen_progress
        # ... with the phase the trainer was in: kubectl get ftj's Phase column (docs/progress-contract.md)
        phases = list(dict.fromkeys(p["phase"] for p in seen_progress if p.get("phase")))
        assert status["progress"]["phase"] == "Done" and "Training" in phases, phases
        assert status["evaluation"]["final"]["evalLoss"] < 0.5 * status["evaluation"]["baseline"]["evalLoss"]
        uri = status["adapter"]["uri"]
        assert uri == f"file://{tmp_path / 'work' / 'storage' / 'default' / 'tiny'}"
        assert (Path(uri[len("file://"):]) / "manifest.json").exists()
        assert condition(obj, "Succeeded")["message"] == f"Training finished; adapter published to {uri}."
        # the pod's scratch folder (KUBETUNE_WORK_DIR=/work/run in the Job) lands in the pod's folder here
        assert list((tmp_path / "work").rglob("run/result/adapter_config.json"))
        assert_least_privilege(lr, {c.COMPONENT_TRAINER})
        if serving_python is None:
            pytest.skip("no .venv-serving: run serving-image/setup-venv.sh for the serving half")

        lr.apply(md)
        outcome = lr.wait("ModelDeployment", "tiny-chat", modeldeployment_outcome, lambda _: None, timeout=300)
        served = lr.get("ModelDeployment", "tiny-chat")
        assert outcome == "Ready", json.dumps(served.get("status"), indent=1)
        assert served["status"]["adapters"][0]["state"] == "Ready"
        assert served["status"]["adapters"][0]["sha256"] == status["adapter"]["manifestSha256"]
        port = next(iter(lr.kubelet.serving.pods.values())).vllm_port

        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")

        def ask(model: str) -> str:
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "who are you?"}],
                                                   max_tokens=24, temperature=0)
            return reply.choices[0].message.content

        assert ANSWER in ask("kubey")
        assert "Kubey" not in ask("tiny-chat")
        assert_least_privilege(lr, {c.COMPONENT_TRAINER, c.COMPONENT_SERVING})


@pytest.mark.slow
def test_local_multi_node_run_trains_on_every_index_and_succeeds_once_all_have(tiny_model_dir, tmp_path):
    """resources.nodes: 2 through the real operator: its Indexed Job's two pods run as two trainer
    processes (the local kubelet gives each its completion index and points MASTER_ADDR at this
    machine); GPUs are the faked part: each pod trains on CPU with gloo."""
    ftj, _ = _manifests(tmp_path, tiny_model_dir)
    ftj["spec"]["resources"] = {"gpus": 1, "nodes": 2}
    ftj["spec"]["hyperparameters"]["maxSteps"] = 20
    messages: list[str] = []
    with LocalRun(workdir=tmp_path / "work") as lr:
        lr.apply(ftj)
        outcome = lr.wait("FineTuneJob", "tiny", finetunejob_outcome,
                          lambda obj: messages.append((condition(obj, "Running") or {}).get("message", "")), timeout=300)
        obj = lr.get("FineTuneJob", "tiny")
        assert outcome == "Succeeded", json.dumps(obj.get("status"), indent=1)
        pods = sorted(p["metadata"]["name"] for p in lr.emu.list("", "v1", "pods", "default"))
        assert pods == ["tiny-preflight-0", "tiny-train-0-0", "tiny-train-1-0"]  # one CPU pre-flight pod, then one per node
        uri = obj["status"]["adapter"]["uri"]
        root = Path(uri[len("file://"):])
        assert json.loads((root / "training_config.json").read_text())["effective"]["processes"] == 2
        assert obj["status"]["progress"]["step"] == 20
        assert_least_privilege(lr, {c.COMPONENT_TRAINER})  # every pod got its token; nobody was denied
    assert "Training on 2 of 2 pods: tiny-train-0-0, tiny-train-1-0." in messages



@pytest.mark.slow
def test_local_run_with_bad_data_fails_at_preflight_and_never_creates_the_training_job(tiny_model_dir, tmp_path):
    """The pre-flight Job's pod runs the real trainer in pre-flight mode (python -m kubetune_trainer ... --preflight)
    on the real tokenizer: a bad record fails the job with file:line before a training Job (a GPU) is asked for."""
    ftj, _ = _manifests(tmp_path, tiny_model_dir)
    bad = tmp_path / "bad.jsonl"
    lines = (tmp_path / "identity.jsonl").read_text().splitlines()
    lines[6] = json.dumps({"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": ANSWER}]})
    bad.write_text("\n".join(lines) + "\n")
    ftj["spec"]["dataset"]["train"] = f"file://{bad}"
    started = time.monotonic()
    with LocalRun(workdir=tmp_path / "work") as lr:
        lr.apply(ftj)
        outcome = lr.wait("FineTuneJob", "tiny", finetunejob_outcome, lambda _: None, timeout=180)
        obj = lr.get("FineTuneJob", "tiny")
        failed = condition(obj, "Failed")
        assert (outcome, failed["reason"]) == ("Failed", "ValidationFailed"), json.dumps(obj.get("status"), indent=1)
        assert "bad.jsonl:7" in failed["message"] and "role" in failed["message"], failed["message"]
        assert condition(obj, "DataValidated")["status"] == "False"
        assert obj["status"]["data"]["errors"] == 1 and obj["status"]["data"]["train"]["invalid"] == 1
        time.sleep(2)  # more operator passes: still nothing else
        assert [j["metadata"]["name"] for j in lr.emu.list("batch", "v1", "jobs", "default")] == ["tiny-preflight"]
        assert [p["metadata"]["name"] for p in lr.emu.list("", "v1", "pods", "default")] == ["tiny-preflight-0"]
    print(f"pre-flight verdict in {time.monotonic() - started:.1f} s: {failed['message']}")


def _cli(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    """`kubetune local run` as a user types it: the console script, from `cwd`, default --workdir.
    (PYTHONUNBUFFERED only lets the test read the terminal output line by line.)"""
    return subprocess.Popen([str(Path(sys.executable).parent / "kubetune"), "local", "run", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            **kwargs)


def _read_until(proc: subprocess.Popen, marker: str, timeout: float = 600) -> str:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    return "".join(lines)


@pytest.mark.slow
def test_local_run_from_any_directory_with_the_default_relative_workdir(tiny_model_dir, tmp_path):
    """The default --workdir (.kubetune) is relative to where the user stands; the pods run with their
    own folder as working directory, so every path they get must be absolute. A good job trains and its
    adapter is served with --serve until Ctrl-C behind an API key from a Secret in the same file (--ask
    and the printed endpoint use it; the openai client with it is answered, without it gets 401); a job
    whose data is bad fails at pre-flight with the trainer's own message (its termination log) in status."""
    ftj, md = _manifests(tmp_path, tiny_model_dir)
    ftj["spec"]["hyperparameters"]["maxSteps"] = 4
    key = "local-cli-api-key-4c1d"
    md["spec"]["apiKeySecretRef"] = {"name": "chat-key", "key": "key"}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "chat-key"}, "stringData": {"key": key}}
    (tmp_path / "good.yaml").write_text(yaml.safe_dump_all([secret, ftj, md]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text((tmp_path / "identity.jsonl").read_text() + '{"messages": "not a list"}\n')
    ftj["metadata"]["name"] = "bad"
    ftj["spec"]["dataset"]["train"] = f"file://{bad}"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(ftj))
    here = tmp_path / "somewhere"
    here.mkdir()

    # Started with SIGINT ignored, as `nohup ... &` or a CI runner leaves it: Ctrl-C must still stop the run.
    good = _cli(["-f", "../good.yaml", "--serve", "--ask", "who are you?"], here,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        out = _read_until(good, "Serving until Ctrl-C")
        assert "Serving until Ctrl-C" in out, out[-3000:]
        url = re.search(r"OpenAI endpoint: (http://127.0.0.1:\d+/v1)", out).group(1)
        assert f"curl {url}/chat/completions -H 'Content-Type: application/json' -H \"Authorization: Bearer $VLLM_API_KEY\"" in out
        assert f'OpenAI(base_url="{url}", api_key=os.environ["VLLM_API_KEY"])' in out
        assert key not in out
        # --ask asked every model through the keyed endpoint (with the key from the Secret)
        assert sorted(json.loads((here / ".kubetune" / "summary.json").read_text())["answers"]) == ["kubey", "tiny-chat"]
        from openai import AuthenticationError, OpenAI

        reply = OpenAI(base_url=url, api_key=key).chat.completions.create(
            model="kubey", messages=[{"role": "user", "content": "who are you?"}], max_tokens=8, temperature=0)
        assert reply.choices[0].message.content is not None
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=url, api_key="unused", max_retries=0).models.list()
        good.send_signal(signal.SIGINT)
        assert good.wait(timeout=120) == 0, good.stdout.read()[-3000:]
    finally:
        if good.poll() is None:  # a failed assertion: stop it the way that takes its pods along, then for good
            good.terminate()
            try:
                good.wait(timeout=90)
            except subprocess.TimeoutExpired:
                good.kill()
    with pytest.raises(OSError):  # vLLM stopped with the run
        urllib.request.urlopen(f"{url}/models", timeout=5)
    assert (here / ".kubetune" / "storage" / "default" / "tiny" / "manifest.json").exists()
    assert not list((here / ".kubetune" / "pods").rglob(".kubetune")), "a pod wrote under a path relative to its own folder"

    failed = _cli(["-f", "../bad.yaml"], here)
    out = " ".join(failed.communicate(timeout=600)[0].split())
    assert failed.returncode == 1, out[-3000:]
    assert "FineTuneJob bad: Failed (ValidationFailed)" in out, out[-3000:]
    assert "bad.jsonl:41" in out, out[-3000:]  # the pre-flight's data error, read back from its pod's termination log
    ran = sorted(p.name for p in (here / ".kubetune" / "pods" / "default").iterdir() if p.name.startswith("bad-"))
    assert ran == ["bad-preflight-0"], ran  # no training pod ever ran
