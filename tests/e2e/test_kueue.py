"""FineTuneJobs in a Kueue queue: the real kopf operator against the emulator and a Kueue stand-in
(tests/e2e/kueue.py plays Kueue's documented Job integration: suspend, admit by un-suspending, evict by
suspending again, deactivate with Workload spec.active=false).

The tests also play kubelet and the Job controller for the training pod (Cluster.play_*), as each says.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from .harness import Cluster, running, terminated, wait_for
from .kueue import Kueue

SPEC = {
    "baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
    "dataset": {"train": "s3://data/chat.jsonl"},
    "scheduling": {"queueName": "team-a"},
}
HOLD = "kubetune.io/user-hold"


@pytest.fixture
def kueue(emulator, cluster) -> Iterator[Kueue]:
    stand_in = Kueue(emulator).start()
    yield stand_in
    stand_in.stop()


def _queued(cluster: Cluster, kueue: Kueue, name: str = "bot") -> dict:
    """Create a queued FineTuneJob; wait until Kueue has its Workload and the status says Queued."""
    cluster.create_ftj(name, SPEC)
    wait_for(lambda: kueue.workload(f"{name}-train"), what="Kueue's Workload")
    return cluster.wait_condition(name, "Running", "False", "Queued")


def _stays_suspended(cluster: Cluster, kueue: Kueue, stops: int = 0, job: str = "bot-train", seconds: float = 1.0) -> None:
    """The Job stays suspended, and nobody un-suspended it in between: Kueue (the stand-in) suspends a Job it
    has not admitted as soon as it sees it running, so each such start shows as one more Kueue stop."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cluster.job(job)["spec"]["suspend"] is True, "the Job was started although Kueue did not admit it"
        time.sleep(0.05)
    assert kueue.actions.count(("Stopped", job)) == stops, f"the Job was un-suspended behind Kueue's back: {kueue.actions}"


def _admitted_and_training(cluster: Cluster, kueue: Kueue, pod: str = "bot-train-p1", reason: str = "Training") -> None:
    """Kueue admits and un-suspends the Job; plays the Job controller and kubelet: a running pod."""
    assert kueue.admit("bot-train")
    wait_for(lambda: cluster.job("bot-train")["spec"]["suspend"] is False, what="Kueue un-suspends the Job")
    cluster.play_job_status("bot-train", {"active": 1})
    cluster.play_pod("bot-train", pod, running())
    cluster.wait_condition("bot", "Running", "True", reason, message=pod)


def test_queued_job_reads_queued_then_trains_once_admitted(cluster, operator, kueue):
    queued = _queued(cluster, kueue)
    assert "Kueue LocalQueue team-a" in queued["message"] and "spec.suspend" not in queued["message"]
    assert cluster.condition("bot", "Suspended")["status"] == "False"
    job = cluster.job("bot-train")
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert HOLD not in job["metadata"].get("annotations", {})
    _stays_suspended(cluster, kueue)
    _admitted_and_training(cluster, kueue)


def test_evicted_job_is_queued_again_and_the_operator_does_not_restart_it(cluster, operator, kueue):
    """Plays kubelet: the evicted pod's trainer checkpoints on SIGTERM and exits 143."""
    _queued(cluster, kueue)
    _admitted_and_training(cluster, kueue)
    kueue.evict("bot-train")
    wait_for(lambda: cluster.job("bot-train")["spec"]["suspend"] is True, what="Kueue suspends the evicted Job")
    cluster.play_pod_status("bot-train-p1", terminated(143, "", "Error"))
    cluster.play_job_status("bot-train", {"active": 0, "failed": 1})
    cluster.wait_condition("bot", "Running", "False", "Queued")
    cluster.patch_ftj("bot", {"metadata": {"labels": {"touched": "yes"}}})  # any event: still no restart
    _stays_suspended(cluster, kueue, stops=1)  # Kueue's own eviction only
    assert ("Started", "bot-train") == kueue.actions[-2] and ("Stopped", "bot-train") == kueue.actions[-1]


def test_operator_restart_while_queued_does_not_start_the_job(cluster, kueue, operator_process):
    operator_process.start()
    _queued(cluster, kueue)
    operator_process.kill()
    operator_process.start()  # kopf resumes every FineTuneJob: the handler runs again on this one
    wait_for(lambda: operator_process.log().count("Resuming is processed") >= 1, timeout=20, what="resume handler ran")
    _stays_suspended(cluster, kueue)
    assert cluster.condition("bot", "Running")["reason"] == "Queued"


def test_spec_edit_while_queued_does_not_start_the_job(cluster, operator, kueue):
    _queued(cluster, kueue)
    cluster.patch_ftj("bot", {"spec": {"adapter": {"rank": 64}}})
    wait_for(lambda: [e for e in cluster.events("bot") if e["reason"] == "SpecChangeIgnored"], what="SpecChangeIgnored")
    _stays_suspended(cluster, kueue)


def test_user_suspend_and_resume_of_a_queued_job(cluster, operator, kueue):
    """Plays kubelet: the suspended pod's trainer checkpoints and exits 143."""
    _queued(cluster, kueue)
    _admitted_and_training(cluster, kueue)
    cluster.patch_ftj("bot", {"spec": {"suspend": True}})
    # Suspending the Job alone would be undone by Kueue (it starts an admitted Job again): the Workload
    # is deactivated, so Kueue evicts it and does not re-queue it.
    wait_for(lambda: kueue.workload("bot-train")["spec"]["active"] is False, what="Workload deactivated")
    wait_for(lambda: cluster.job("bot-train")["spec"]["suspend"] is True, what="Job suspended")
    assert cluster.job("bot-train")["metadata"]["annotations"][HOLD] == "true"
    cluster.play_pod_status("bot-train-p1", terminated(143, "", "Error"))
    cluster.play_job_status("bot-train", {"active": 0, "failed": 1})
    held = cluster.wait_condition("bot", "Suspended", "True", "Suspended")
    assert "set spec.suspend=false" in held["message"] and "team-a" in held["message"]
    assert not kueue.admit("bot-train")  # an inactive Workload is not admitted, whatever the quota
    stops = kueue.actions.count(("Stopped", "bot-train"))  # 0 or 1: Kueue's eviction may race the operator's suspend
    _stays_suspended(cluster, kueue, stops)

    cluster.patch_ftj("bot", {"spec": {"suspend": False}})  # releases the user's hold only
    wait_for(lambda: kueue.workload("bot-train")["spec"]["active"] is True, what="Workload re-activated")
    wait_for(lambda: HOLD not in cluster.job("bot-train")["metadata"].get("annotations", {}), what="hold released")
    cluster.wait_condition("bot", "Running", "False", "Queued")
    _stays_suspended(cluster, kueue, stops)
    _admitted_and_training(cluster, kueue, pod="bot-train-p2", reason="Restarting")  # resumed after the SIGTERM


def test_queued_job_created_on_hold_keeps_its_workload_inactive(cluster, operator, kueue):
    cluster.create_ftj("bot", {**SPEC, "suspend": True})
    wait_for(lambda: (kueue.workload("bot-train") or {}).get("spec", {}).get("active") is False,
             timeout=15, what="Workload of a job created on hold deactivated")
    cluster.wait_condition("bot", "Suspended", "True", "Suspended")
    assert not kueue.admit("bot-train")
    _stays_suspended(cluster, kueue)


def test_cancelling_a_queued_job_removes_it_without_starting_it(cluster, operator, kueue):
    _queued(cluster, kueue)
    cluster.patch_ftj("bot", {"spec": {"cancel": True}})
    cancelled = cluster.wait_condition("bot", "Failed", "True", "Cancelled")
    assert "training Job was removed" in cancelled["message"]
    wait_for(lambda: cluster.jobs() == [], what="Job removed")
    assert ("Started", "bot-train") not in kueue.actions
