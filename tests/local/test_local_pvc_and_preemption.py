"""`kubetune local` with cluster semantics the operator relies on: pvc:// data read from a mounted claim,
and a preemption (DisruptionTarget, SIGTERM) that the Job's own podFailurePolicy ignores, so training
resumes from its checkpoint on a new pod. The real operator and the real trainer; the local kubelet plays
the node (claims are host folders) and the Job controller (the built Job's own policy, evaluated)."""

from __future__ import annotations

import json
import shutil

import pytest

from kubetune_local.cli import default_serving_python
from kubetune_local.run import LocalRun, condition, finetunejob_outcome, modeldeployment_outcome

from .test_local_run import ANSWER, _manifests, wait_for_checkpoint


@pytest.mark.slow
def test_local_run_reads_data_from_a_pvc_and_publishes_to_one(tiny_model_dir, tmp_path):
    """Data on claim team-data, output on claim adapters: the Job mounts both (data read-only), the trainer
    reads and writes them through its pvc:// handling, and a claim the pod does not mount is not there.
    team-data is a folder of the user's choice (`--pvc team-data=DIR`), adapters the default <workdir>/pvcs/adapters."""
    ftj, _ = _manifests(tmp_path, tiny_model_dir)
    data = tmp_path / "nfs-share" / "chat" / "identity.jsonl"
    data.parent.mkdir(parents=True)
    data.write_bytes((tmp_path / "identity.jsonl").read_bytes())
    (tmp_path / "work" / "pvcs" / "unmounted").mkdir(parents=True)
    ftj["spec"]["dataset"]["train"] = "pvc://team-data/chat/identity.jsonl"
    ftj["spec"]["output"] = {"uri": "pvc://adapters/published"}
    ftj["spec"]["hyperparameters"]["maxSteps"] = 4
    with LocalRun(workdir=tmp_path / "work", pvc_map={"team-data": tmp_path / "nfs-share"}) as lr:
        lr.apply(ftj)
        outcome = lr.wait("FineTuneJob", "tiny", finetunejob_outcome, lambda _: None, timeout=300)
        obj = lr.get("FineTuneJob", "tiny")
        assert outcome == "Succeeded", json.dumps(obj.get("status"), indent=1)
        assert obj["status"]["adapter"]["uri"] == "pvc://adapters/published/default/tiny"
        assert (tmp_path / "work" / "pvcs" / "adapters" / "published" / "default" / "tiny" / "manifest.json").exists()
        pod_root = tmp_path / "work" / "pods" / "default" / "tiny-train-0" / "pvc" / "trainer"
        assert sorted(p.name for p in pod_root.iterdir()) == ["adapters", "team-data"]


@pytest.mark.slow
def test_preempted_trainer_is_not_a_failure_and_the_next_pod_resumes_from_its_checkpoint(tiny_model_dir, tmp_path):
    """A running trainer pod is disrupted as the scheduler's preemption does it: DisruptionTarget on the pod,
    then SIGTERM. The trainer checkpoints and exits 143; the Job's podFailurePolicy ignores the pod (no
    failure counted, even with backoffLimit 0), status says it is resuming from that checkpoint, and a new
    pod resumes from it and finishes."""
    ftj, _ = _manifests(tmp_path, tiny_model_dir)
    ftj["spec"]["backoffLimit"] = 0  # a counted failure would end the Job
    ftj["spec"]["checkpointing"] = {"intervalSteps": 10}
    ftj["spec"]["hyperparameters"]["maxSteps"] = 200
    messages: list[str] = []
    with LocalRun(workdir=tmp_path / "work") as lr:
        lr.apply(ftj)
        wait_for_checkpoint(lr, "tiny", step=10)
        lr.kubelet.disrupt("default", "tiny-train-0")
        outcome = lr.wait("FineTuneJob", "tiny", finetunejob_outcome,
                          lambda obj: messages.append((condition(obj, "Running") or {}).get("message", "")), timeout=300)
        obj = lr.get("FineTuneJob", "tiny")
        assert outcome == "Succeeded", json.dumps(obj.get("status"), indent=1)
        job = lr.emu.get("batch", "v1", "jobs", "default", "tiny-train")
        assert job["status"]["failed"] == 0 and job["status"]["succeeded"] == 1
        first = lr.emu.get("", "v1", "pods", "default", "tiny-train-0")
        assert first["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143
        assert [c["type"] for c in first["status"]["conditions"]] == ["DisruptionTarget"]
        saved = int(first["status"]["containerStatuses"][0]["state"]["terminated"]["message"].split("checkpoint of step ")[1].split()[0])
        log = (tmp_path / "work" / "pods" / "default" / "tiny-train-1" / "trainer.log").read_text()
        assert f"resume: from checkpoint step {saved}" in log
    preempted = [m for m in messages if "preempted (PreemptionByScheduler), resuming from checkpoint" in m]
    assert preempted and all(f"resuming from checkpoint {saved}." in m for m in preempted), messages
    assert not [m for m in messages if "failed" in m], messages


@pytest.mark.slow
def test_a_model_and_an_adapter_on_claims_are_trained_and_served(tiny_model_dir, tmp_path):
    """The base model on claim models (trainer and vLLM read it there), the adapter published to claim
    adapters and resolved through fineTuneJobRef: the Deployment mounts the model claim in vLLM's
    container and the adapter claim (from the resolved set) in the sidecar's, and the adapter is served."""
    serving_python = default_serving_python()
    if serving_python is None:
        pytest.skip("no .venv-serving: run serving-image/setup-venv.sh")
    ftj, md = _manifests(tmp_path, tiny_model_dir)
    shutil.copytree(tiny_model_dir, tmp_path / "work" / "pvcs" / "models" / "tiny")
    for doc in (ftj, md):
        doc["spec"]["baseModel"]["uri"] = "pvc://models/tiny"
    ftj["spec"]["output"] = {"uri": "pvc://adapters/published"}
    with LocalRun(workdir=tmp_path / "work", serving_python=serving_python) as lr:
        lr.apply(ftj)
        assert lr.wait("FineTuneJob", "tiny", finetunejob_outcome, lambda _: None, timeout=300) == "Succeeded"
        lr.apply(md)
        outcome = lr.wait("ModelDeployment", "tiny-chat", modeldeployment_outcome, lambda _: None, timeout=300)
        served = lr.get("ModelDeployment", "tiny-chat")
        assert outcome == "Ready", json.dumps(served.get("status"), indent=1)
        assert served["status"]["adapters"][0]["uri"] == "pvc://adapters/published/default/tiny"
        pod = next(iter(lr.kubelet.serving.pods.values()))
        roots = {ctr: sorted(p.name for p in (tmp_path / "work" / "pods" / "default" / pod.name / "pvc" / ctr).iterdir())
                 for ctr in ("vllm", "adapter-sync")}
        assert roots == {"vllm": ["models"], "adapter-sync": ["adapters"]}

        from openai import OpenAI

        reply = OpenAI(base_url=f"http://127.0.0.1:{pod.vllm_port}/v1", api_key="none").chat.completions.create(
            model="kubey", messages=[{"role": "user", "content": "who are you?"}], max_tokens=24, temperature=0)
        assert ANSWER in reply.choices[0].message.content
