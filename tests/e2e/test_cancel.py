"""Cancelling a FineTuneJob (spec.cancel): the real kopf operator over HTTP against the API emulator.

The tests play the Job controller and kubelet (Cluster.play_*): the training pod, its exit after SIGTERM
and the Job's status, as each says. Kueue-queued jobs: tests/e2e/test_kueue.py.
"""

from __future__ import annotations

import json
import time

from .harness import Cluster, job_condition, running, terminated, wait_for

SPEC = {
    "baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
    "dataset": {"train": "s3://data/chat.jsonl"},
}
CHECKPOINTS = [{"step": 20, "uri": "s3://adapters/test/default/bot/checkpoints/00000020"}]


def _training(cluster: Cluster) -> None:
    """Plays the Job controller and kubelet: a running trainer pod; plays the trainer: progress and a checkpoint."""
    cluster.create_ftj("bot", SPEC)
    wait_for(lambda: cluster.job("bot-train"), what="Job")
    cluster.play_job_status("bot-train", {"active": 1, "startTime": "2026-11-23T08:00:00Z"})
    cluster.play_pod("bot-train", "bot-train-p1", running())
    cluster.wait_condition("bot", "Running", "True", "Training")
    cluster.patch_ftj_status("bot", {"status": {"progress": {"step": 25, "totalSteps": 100, "percent": 25, "loss": 0.9},
                                                "checkpoints": CHECKPOINTS}})


def test_cancel_stops_after_a_checkpoint_removes_the_job_and_keeps_status(cluster, operator, kubectl):
    """Plays kubelet: on the suspend the trainer checkpoints and exits 143; the Job controller then counts no active pod."""
    _training(cluster)
    cluster.patch_ftj("bot", {"spec": {"cancel": True}})
    wait_for(lambda: cluster.job("bot-train")["spec"]["suspend"] is True, what="Job suspended: SIGTERM to the trainer")
    cancelling = cluster.wait_condition("bot", "Running", "False", "Cancelling")
    assert "checkpoints and stops" in cancelling["message"]
    time.sleep(0.5)
    assert cluster.jobs(), "the Job was removed before its trainer stopped"
    cluster.play_pod_status("bot-train-p1", terminated(143, "Stopped by SIGTERM at step 25; checkpoint 20 kept."))
    cluster.play_job_status("bot-train", {"active": 0, "failed": 1})

    wait_for(lambda: cluster.jobs() == [], what="Job removed")
    failed = cluster.wait_condition("bot", "Failed", "True", "Cancelled")
    assert "training Job was removed" in failed["message"]
    status = cluster.ftj("bot")["status"]
    assert status["checkpoints"] == CHECKPOINTS
    assert status["progress"]["step"] == 25 and status["progress"]["loss"] == 0.9
    assert status["jobName"] == "bot-train" and status["completionTime"]
    assert cluster.condition("bot", "Succeeded")["reason"] == "Cancelled"
    wait_for(lambda: [e for e in cluster.events("bot") if e["reason"] == "Cancelled" and e["type"] == "Warning"])

    table = kubectl("get", "ftj", "bot").stdout
    assert "Cancelled" in table.splitlines()[1] and "False" in table.splitlines()[1], table

    # Final: unsetting spec.cancel does not start training again.
    cluster.patch_ftj("bot", {"spec": {"cancel": False}})
    time.sleep(1.0)
    assert cluster.jobs() == []
    assert cluster.condition("bot", "Failed")["reason"] == "Cancelled"


def test_cancel_at_creation_creates_no_job(cluster, operator):
    cluster.create_ftj("bot", {**SPEC, "cancel": True})
    cluster.wait_condition("bot", "Failed", "True", "Cancelled", message="before training started")
    assert cluster.jobs() == []


def test_cancelling_a_finished_job_does_nothing_and_says_so(cluster, operator):
    """Plays the Job controller and kubelet: the trainer finished and the Job completed."""
    cluster.create_ftj("bot", SPEC)
    wait_for(lambda: cluster.job("bot-train"), what="Job")
    report = {"adapter": {"uri": "s3://adapters/test/default/bot", "manifestSha256": "d" * 64, "type": "lora"}}
    cluster.play_pod("bot-train", "bot-train-p1", terminated(0, json.dumps(report)))
    cluster.play_job_status("bot-train", {"succeeded": 1, "conditions": [job_condition("Complete")]})
    cluster.wait_condition("bot", "Succeeded", "True", "Completed")

    cluster.patch_ftj("bot", {"spec": {"cancel": True}})
    event = wait_for(lambda: [e for e in cluster.events("bot") if e["reason"] == "CancelIgnored"], what="CancelIgnored event")
    assert "already finished" in event[0]["message"]
    done = cluster.wait_condition("bot", "Succeeded", "True", "Completed", message="spec.cancel has no effect")
    assert done["message"].startswith("Training finished; adapter published")
    assert cluster.ftj("bot")["status"]["adapter"] == report["adapter"]
    assert cluster.job("bot-train")["spec"]["suspend"] is False  # untouched
    assert cluster.condition("bot", "Failed")["status"] == "False"
