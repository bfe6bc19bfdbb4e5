"""`kubetune local`: cancelling a real trainer (spec.cancel). The real operator and trainer; the local
kubelet plays the node and the Job controller (suspend = SIGTERM to the trainer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_local.run import LocalRun, condition, finetunejob_outcome

from .test_local_run import _manifests, wait_for_checkpoint


@pytest.mark.slow
def test_cancel_stops_the_trainer_after_a_checkpoint_and_keeps_it(tiny_model_dir, tmp_path):
    """Once a checkpoint exists, spec.cancel: the trainer gets SIGTERM, saves a checkpoint and exits 143;
    the operator then removes the Job, and the FineTuneJob ends Failed/Cancelled with its checkpoints
    listed in status and still in storage."""
    ftj, _ = _manifests(tmp_path, tiny_model_dir)
    ftj["spec"]["checkpointing"] = {"intervalSteps": 10}
    ftj["spec"]["hyperparameters"]["maxSteps"] = 400
    with LocalRun(workdir=tmp_path / "work") as lr:
        lr.apply(ftj)
        wait_for_checkpoint(lr, "tiny", step=10)
        lr.emu.patch("kubetune.io", "v1alpha1", "finetunejobs", "default", "tiny", {"spec": {"cancel": True}})
        outcome = lr.wait("FineTuneJob", "tiny", finetunejob_outcome, lambda _: None, timeout=120)
        obj = lr.get("FineTuneJob", "tiny")
        assert outcome == "Failed", json.dumps(obj.get("status"), indent=1)
        failed = condition(obj, "Failed")
        assert failed["reason"] == "Cancelled", failed
        assert lr.emu.get("batch", "v1", "jobs", "default", "tiny-train") is None  # removed by the operator
        status = obj["status"]
        assert status["progress"]["step"] < 400 and status["jobName"] == "tiny-train"
        pod_dir = tmp_path / "work" / "pods" / "default" / "tiny-train-0"
        said = (pod_dir / "termination-log").read_text()  # the trainer's last word before exit 143
        assert said.startswith("Stopped by SIGTERM at step "), said
        saved = int(said.split("checkpoint of step ")[1].split()[0])
        assert "SIGTERM: saving a checkpoint" in (pod_dir / "trainer.log").read_text()
        newest = status["checkpoints"][-1]
        assert newest["step"] == saved >= 10  # the checkpoint taken on SIGTERM is in status...
        assert any(Path(newest["uri"][len("file://"):]).iterdir())  # ...and in storage
