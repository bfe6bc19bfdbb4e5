"""`kubetune local --runtime podman`: the operator and every pod it creates run as containers of the built
images (make images; docs/images.md), under the security contexts the operator builds: read-only root,
uid 1000, all capabilities dropped, no privilege escalation. Nothing may write outside its volumes:
the read-only root makes such a write fail loudly, and `podman diff` of every container (recorded by the
runtime when it ends) must be empty.

Needs podman and the images: runs when tests/images does (after `make images`, or KUBETUNE_TEST_IMAGES=1,
where a missing image fails instead of skipping)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from kubetune.config import OperatorSettings
from kubetune_local import podman as podman_mod
from kubetune_local.cli import QUESTION, QUICKSTART, quickstart_claims
from kubetune_local.containers import plan_pod, podman_run_argv
from kubetune_local.models import readable
from kubetune_local.run import LocalRun, condition, finetunejob_outcome, modeldeployment_outcome

from ..images.conftest import images_selected
from .test_containers import built_pod_specs
from .test_local_run import _manifests, wait_for_checkpoint

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ("ghcr.io/kubetune/operator:0.1.0", "ghcr.io/kubetune/trainer:0.1.0", "ghcr.io/kubetune/serving:0.1.0")


def missing_images() -> list[str]:
    if not podman_mod.available():
        return ["podman", *IMAGES]
    engine = podman_mod.Podman(Path("/tmp/kubetune-podman-conf"))
    return [image for image in IMAGES if not engine.image_exists(image)]


# The same switch as tests/images (docs/images.md): run after `make images` (its stamp) or with
# KUBETUNE_TEST_IMAGES=1, where a missing image is a failure; otherwise tests/conftest.py deselects them.
SELECTED = images_selected()
MISSING = missing_images() if SELECTED else []
pytestmark = [pytest.mark.slow, pytest.mark.images]


def needs(*images: str):
    def check(fn):
        missing = [m for m in MISSING if m == "podman" or any(m.startswith(f"ghcr.io/kubetune/{i}:") for i in images)]

        def test(*args, **kwargs):
            if missing:
                pytest.fail(f"container mode needs {missing}: run `make images`")
            return fn(*args, **kwargs)
        return functools.wraps(fn)(test)
    return check


def trainer_plan():
    doc = yaml.safe_load((QUICKSTART / "finetunejob.yaml").read_text())
    spec = built_pod_specs(doc, OperatorSettings.from_env({"KUBETUNE_DEFAULT_OUTPUT_URI": "pvc://storage"}))[0]
    return plan_pod(spec)["trainer"]


def run_in_trainer_image(tmp_path: Path, script: str, **changes) -> tuple[int, str, list[str]]:
    """`script` in the trainer image under the trainer pod's own plan (with `changes`): exit code, output, diff."""
    plan = dataclasses.replace(trainer_plan(), command=["python", "-c", script], args=[], **changes)
    sources = {}
    for mount in plan.mounts:
        sources[mount.volume] = str(tmp_path / mount.volume)
        (tmp_path / mount.volume).mkdir(exist_ok=True)
        os.chown(tmp_path / mount.volume, 1000, 1000)
    (tmp_path / "termination-log").write_text("")
    argv = podman_run_argv(plan, name=f"kt-test-{os.getpid()}-{tmp_path.name}"[:60], image=IMAGES[1], env={}, sources=sources,
                           termination_file=str(tmp_path / "termination-log"))
    proc = podman_mod.Podman(tmp_path / "conf").run(argv, tmp_path / "out.log", grace=5)
    code = proc.wait(timeout=120)
    return code, (tmp_path / "out.log").read_text(), proc.diff_file.read_text().splitlines()


@needs("trainer")
def test_the_read_only_root_makes_a_write_outside_the_volumes_fail_loudly(tmp_path):
    code, out, diff = run_in_trainer_image(tmp_path, "open('/tmp/ok', 'w').write('x'); open('/work/ok', 'w').write('x'); "
                                                     "open('/opt/venv/x', 'w')")
    assert code == 1 and "Read-only file system: '/opt/venv/x'" in out, out
    assert (tmp_path / "tmp" / "ok").read_text() == "x" and (tmp_path / "work" / "ok").exists()  # volumes are writable
    assert diff == []


@needs("trainer")
def test_a_write_outside_the_volumes_is_caught_even_without_a_read_only_root(tmp_path):
    """The other half of the guard: had a pod spec lost readOnlyRootFilesystem, `podman diff` still shows the write."""
    code, out, diff = run_in_trainer_image(tmp_path, "open('/home/kubetune/stray', 'w').write('x')", read_only_root=False)
    assert code == 0, out
    assert "A /home/kubetune/stray" in diff, diff
    assert podman_mod.outside_writes(tmp_path) == {str(tmp_path / "out.diff"): diff}


@needs("operator", "trainer", "serving")
def test_quickstart_in_container_mode(tmp_path):
    """The quickstart's manifests: FineTuneJob -> adapter -> ModelDeployment -> an answer through the openai client;
    operator, trainer, vLLM and the sidecar all from their images; nothing written outside volumes; nobody denied."""
    from openai import OpenAI

    from kubetune_local.models import prepare_smollm2

    model = prepare_smollm2(ROOT / ".kubetune" / "models" / "smollm2-135m-instruct")
    uri_map, pvc_map = quickstart_claims(model, tmp_path)
    with LocalRun(workdir=tmp_path, uri_map=uri_map, pvc_map=pvc_map, runtime="podman") as lr:
        docs = lr.load([QUICKSTART / "finetunejob.yaml", QUICKSTART / "modeldeployment.yaml"])
        ftj, md = (next(d for d in docs if d["kind"] == kind) for kind in ("FineTuneJob", "ModelDeployment"))
        lr.apply(ftj)
        outcome = lr.wait("FineTuneJob", "kubey", finetunejob_outcome, lambda _: None, timeout=1500)
        assert outcome == "Succeeded", json.dumps(lr.get("FineTuneJob", "kubey").get("status"), indent=1)
        adapter = lr.get("FineTuneJob", "kubey")["status"]["adapter"]["uri"]
        assert adapter == "pvc://storage/default/kubey"
        lr.apply(md)
        outcome = lr.wait("ModelDeployment", "kubey-chat", modeldeployment_outcome, lambda _: None, timeout=600)
        assert outcome == "Ready", json.dumps(lr.get("ModelDeployment", "kubey-chat").get("status"), indent=1)
        port = next(iter(lr.kubelet.serving.pods.values())).vllm_port
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        answer = client.chat.completions.create(model="kubey", messages=[{"role": "user", "content": QUESTION}],
                                                max_tokens=40, temperature=0).choices[0].message.content
        assert "Kubey" in answer, answer
        assert lr.emu.denials() == [], lr.emu.denials()
    assert podman_mod.outside_writes(tmp_path / "pods") == {}
    assert sorted(p.name for p in (tmp_path / "pods").rglob("*.diff"))  # every container's diff was recorded


@needs("operator", "trainer")
def test_sigterm_checkpoint_and_resume_across_two_container_runs(tiny_model_dir, tmp_path):
    """A preemption (DisruptionTarget, then SIGTERM via podman kill): the trainer container checkpoints and exits
    143; the Job's podFailurePolicy ignores it and a second container resumes from that checkpoint."""
    ftj, _ = _manifests(tmp_path, tiny_model_dir)
    readable(shutil.copytree(tiny_model_dir, tmp_path / "claims" / "models" / "tiny"))  # safetensors writes 0600
    shutil.copy(tmp_path / "identity.jsonl", tmp_path / "claims" / "data.jsonl")
    ftj["spec"]["baseModel"]["uri"] = "pvc://models/tiny"
    ftj["spec"]["dataset"]["train"] = "pvc://data/data.jsonl"
    (tmp_path / "claims" / "data").mkdir()
    shutil.move(tmp_path / "claims" / "data.jsonl", tmp_path / "claims" / "data" / "data.jsonl")
    ftj["spec"]["backoffLimit"] = 0
    ftj["spec"]["checkpointing"] = {"intervalSteps": 10}
    ftj["spec"]["hyperparameters"]["maxSteps"] = 200
    pvc_map = {"models": tmp_path / "claims" / "models", "data": tmp_path / "claims" / "data"}
    with LocalRun(workdir=tmp_path / "work", pvc_map=pvc_map, runtime="podman") as lr:
        lr.apply(ftj)
        wait_for_checkpoint(lr, "tiny", step=10, timeout=600)
        lr.kubelet.disrupt("default", "tiny-train-0")
        outcome = lr.wait("FineTuneJob", "tiny", finetunejob_outcome, lambda _: None, timeout=600)
        obj = lr.get("FineTuneJob", "tiny")
        assert outcome == "Succeeded", json.dumps(obj.get("status"), indent=1)
        first = lr.emu.get("", "v1", "pods", "default", "tiny-train-0")
        terminated = first["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == 143, terminated
        saved = int(terminated["message"].split("checkpoint of step ")[1].split()[0])
        log = (tmp_path / "work" / "pods" / "default" / "tiny-train-1" / "trainer.log").read_text()
        assert f"resume: from checkpoint step {saved}" in log
        assert condition(obj, "Succeeded")["status"] == "True"
        assert lr.emu.denials() == [], lr.emu.denials()
    assert podman_mod.outside_writes(tmp_path / "work" / "pods") == {}
