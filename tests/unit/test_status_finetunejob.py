"""FineTuneJob status derivation from observed Job/Pods (pure; the objects are what kubelet and the
Job controller would write)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from kubetune.status.conditions import status_changed
from kubetune.status import finetunejob
from kubetune.status.finetunejob import Observed


def derive_status(*args, **kwargs) -> dict:
    """The status as the handler writes it (FineTuneJobStatus in its wire form)."""
    return finetunejob.derive_status(*args, **kwargs).to_dict()

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)
T1 = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)


def job(conditions=(), suspend=False, **status):
    return {"metadata": {"name": "ftj-train"}, "spec": {"suspend": suspend, "backoffLimit": 3, "activeDeadlineSeconds": 600},
            "status": {"conditions": [{"type": t, "status": "True", "reason": r, "lastTransitionTime": "2026-11-23T08:30:00Z"}
                                      for t, r in conditions], **status}}


def pod(name, phase="Running", created="2026-11-23T08:00:00Z", state=None, conditions=None, reason=None):
    status = {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state or {"running": {}}}]}
    if conditions:
        status["conditions"] = conditions
    if reason:
        status["reason"] = reason
    return {"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"containers": [{"name": "trainer", "image": "reg/trainer:1"}]}, "status": status}


def terminated(code, message="", reason="Error"):
    return {"terminated": {"exitCode": code, "reason": reason, "message": message}}


def conds(status):
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_validation_failure_is_terminal_and_names_the_field():
    status = derive_status(Observed(generation=2, validation_error="spec.dataset.train: required field is missing"), None, T0)
    assert conds(status)["Failed"] == ("True", "ValidationFailed", "spec.dataset.train: required field is missing")
    assert conds(status)["Succeeded"][:2] == ("False", "ValidationFailed")
    assert status["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 and c["lastTransitionTime"] == "2026-11-23T08:00:00Z" for c in status["conditions"])


def test_training_then_success_with_published_adapter():
    running = derive_status(Observed(1, job(active=1, startTime="2026-11-23T08:00:05Z"), [pod("p1")]), None, T0)
    assert conds(running)["Running"] == ("True", "Training", "Training on pod p1.")
    assert conds(running)["Succeeded"][:2] == ("Unknown", "Training")
    assert running["startTime"] == "2026-11-23T08:00:05Z" and running["jobName"] == "ftj-train" and running["attempts"] == 1
    report = {"adapter": {"uri": "s3://out/ns/ftj", "manifestSha256": "a" * 64, "type": "lora"},
              "evaluation": {"baseline": {"evalLoss": 3.1, "perplexity": 22.2}, "final": {"evalLoss": 0.4, "perplexity": 1.49}}}
    done_pod = pod("p1", "Succeeded", state=terminated(0, json.dumps(report), "Completed"))
    done = derive_status(Observed(1, job([("Complete", "")], succeeded=1, completionTime="2026-11-23T09:00:00Z"), [done_pod],
                                  output_prefix="s3://out/ns/ftj"), running, T1)
    assert conds(done)["Succeeded"] == ("True", "Completed", "Training finished; adapter published to s3://out/ns/ftj.")
    assert conds(done)["Running"][:2] == ("False", "Completed")
    assert done["adapter"] == report["adapter"] and done["evaluation"] == report["evaluation"]
    assert done["completionTime"] == "2026-11-23T09:00:00Z"
    # Failed stayed False: its transition time is kept; Running flipped: new time.
    times = {c["type"]: c["lastTransitionTime"] for c in done["conditions"]}
    assert times["Failed"] == "2026-11-23T08:00:00Z" and times["Running"] == "2026-11-23T09:00:00Z"


def test_user_error_surfaces_the_trainer_message():
    msg = "train.jsonl:17: messages[2].role must be one of system,user,assistant"
    status = derive_status(Observed(1, job([("Failed", "PodFailurePolicy")], failed=1),
                                    [pod("p1", "Failed", state=terminated(1, msg))]), None, T0)
    assert conds(status)["Failed"] == ("True", "UserError", msg)


def test_oom_killed_suggests_qlora_or_smaller_batch():
    status = derive_status(Observed(1, job([("Failed", "BackoffLimitExceeded")], failed=4),
                                    [pod(f"p{i}", "Failed", f"2026-11-23T08:0{i}:00Z", terminated(137, "", "OOMKilled")) for i in range(4)]),
                           None, T0)
    reason, message = conds(status)["Failed"][1:]
    assert reason == "OOMKilled"
    assert "Pod p3 was OOMKilled" in message and "qlora" in message and "batchSize" in message


def test_backoff_limit_after_internal_errors():
    status = derive_status(Observed(1, job([("Failed", "BackoffLimitExceeded")], failed=4),
                                    [pod("p1", "Failed", state=terminated(203, "CUDA error: device-side assert"))]), None, T0)
    assert conds(status)["Failed"] == ("True", "BackoffLimitExceeded", "Gave up after 4 attempt(s). Last: CUDA error: device-side assert")


def test_deadline_exceeded():
    status = derive_status(Observed(1, job([("Failed", "DeadlineExceeded")]), []), None, T0)
    assert conds(status)["Failed"] == ("True", "DeadlineExceeded",
                                       "Training ran longer than spec.activeDeadlineSeconds (600 s) and was stopped.")


def test_image_pull_failure_is_reported_not_terminal():
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"reg/trainer:1\""}}
    status = derive_status(Observed(1, job(active=1), [pod("p1", "Pending", state=waiting)]), None, T0)
    assert conds(status)["Running"][:2] == ("False", "ImagePullFailed")
    assert "Cannot pull trainer image reg/trainer:1: ImagePullBackOff" in conds(status)["Running"][2]
    assert conds(status)["Failed"][0] == "False"


def test_unschedulable_names_resources_and_scheduling():
    cond = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]
    status = derive_status(Observed(1, job(active=1), [pod("p1", "Pending", state={"waiting": {"reason": "Pending"}}, conditions=cond)]), None, T0)
    reason, message = conds(status)["Running"][1:]
    assert reason == "Unschedulable"
    assert "3 Insufficient nvidia.com/gpu" in message and "spec.resources" in message


def test_suspended():
    status = derive_status(Observed(1, job([("Suspended", "JobSuspended")], suspend=True), []), None, T0)
    assert conds(status)["Suspended"][:2] == ("True", "Suspended")
    assert conds(status)["Running"][:2] == ("False", "Suspended")


def test_restart_after_eviction_says_why():
    pods = [pod("p1", "Failed", "2026-11-23T08:00:00Z", terminated(137, "", "OOMKilled")), pod("p2", created="2026-11-23T08:10:00Z")]
    status = derive_status(Observed(1, job(active=1, failed=1), pods), None, T0)
    reason, message = conds(status)["Running"][1:]
    assert reason == "Restarting"
    assert message.startswith("Training on pod p2, resumed after attempt 1 failed (OOMKilled)")


def test_no_job_yet_is_pending_and_unchanged_status_is_not_rewritten():
    first = derive_status(Observed(1), None, T0)
    assert conds(first)["Running"] == ("False", "Pending", "Creating the training Job.")
    again = derive_status(Observed(1), first, T1)
    assert again == first
    assert not status_changed(first, again)
    assert status_changed(first, derive_status(Observed(2), first, T1))


@pytest.mark.parametrize("message", ["not json {", "", "{\"adapter\": 5}"])
def test_success_without_a_usable_report_sets_no_adapter(message):
    status = derive_status(Observed(1, job([("Complete", "")]), [pod("p1", "Succeeded", state=terminated(0, message, "Completed"))]), None, T0)
    assert conds(status)["Succeeded"][0] == "True"
    assert "adapter" not in status


def test_between_pods_status_says_what_happened_not_waiting_to_start():
    """The trainer exited but the Job controller has not reacted yet: never 'waiting for the pod to start'."""
    done_pod = pod("p1", "Succeeded", state=terminated(0, "{}", "Completed"))
    finishing = derive_status(Observed(1, job(active=0), [done_pod]), None, T0)
    assert conds(finishing)["Running"] == ("False", "Finishing", "The trainer on pod p1 finished; waiting for the Job to complete.")
    assert conds(finishing)["Succeeded"][:2] == ("Unknown", "Finishing")
    assert conds(finishing)["Failed"][:2] == ("False", "NoFailure")
    crashed = pod("p1", "Failed", state=terminated(203, "Internal error (retried): cannot list s3://out/ns/ftj/checkpoints"))
    retrying = derive_status(Observed(1, job(active=0, failed=1), [crashed]), None, T0)
    reason, message = conds(retrying)["Running"][1:]
    assert reason == "Restarting"
    assert message.startswith("Attempt 1 failed (InternalError): ")
    assert "cannot list s3://out/ns/ftj/checkpoints" in message
    assert message.endswith("Waiting for the Job to start the next pod (spec.backoffLimit 3).")
    assert conds(retrying)["Failed"][:2] == ("False", "NoFailure")


def test_multi_node_run_says_how_many_of_its_pods_train():
    indexed = job(active=2)
    indexed["spec"]["completions"] = 3
    pods = [pod("ftj-train-0-a"), pod("ftj-train-1-b"),
            pod("ftj-train-2-c", "Pending", state={"waiting": {"reason": "ContainerCreating"}})]
    status = derive_status(Observed(1, indexed, pods), None, T0)
    assert conds(status)["Running"] == ("True", "Training", "Training on 2 of 3 pods: ftj-train-0-a, ftj-train-1-b.")


@pytest.mark.parametrize("merged", [False, True])
def test_dora_jobs_say_from_the_start_whether_vllm_can_serve_them(merged):
    """Said on creation (no Job yet), not first when a ModelDeployment rejects the adapter."""
    status = derive_status(Observed(generation=1, adapter_type="dora", merged_model=merged), None, T0)
    servable = conds(status)["Servable"]
    if merged:
        assert servable[:2] == ("True", "MergedModelServable")
    else:
        assert servable[:2] == ("False", "DoRANotServable")
        assert "vLLM cannot serve" in servable[2] and "spec.output.mergedModel: true" in servable[2]


@pytest.mark.parametrize("adapter_type", ["lora", "qlora", "full", None])
def test_other_jobs_have_no_servable_condition(adapter_type):
    assert "Servable" not in conds(derive_status(Observed(generation=1, adapter_type=adapter_type), None, T0))


def test_kubectl_get_ftj_shows_the_trainers_phase():
    """Status has two owners (docs/progress-contract.md): the operator's conditions and the trainer's progress,
    each a merge patch of its own keys. `kubectl get ftj` shows both: the Phase column (a printer column of the
    CRD) says what the trainer does now, e.g. a long model download, while the Job's pod merely "runs"."""
    from kubetune.api.crd import finetunejob_crd
    from kubetune.api.finetunejob import FineTuneJobStatus, Progress, TrainerPhase
    from kubetune_emulator.registry import resource_types_from_crd
    from kubetune_emulator.tables import to_table

    operator = derive_status(Observed(1, job(active=1), [pod("p1")]), None, T0)
    assert "progress" not in operator  # the operator never writes (or erases) the trainer's keys
    trainer = {"progress": Progress(phase=TrainerPhase.DOWNLOADING_MODEL, update_time=T0).to_dict()}
    status = {**operator, **trainer}
    FineTuneJobStatus.model_validate(status)  # the CRD's status schema holds both
    ftj = {"metadata": {"name": "bot", "creationTimestamp": "2026-11-23T08:00:00Z"},
           "spec": {"method": {"type": "sft"}, "adapter": {"type": "lora"}}, "status": status}
    [served] = resource_types_from_crd(finetunejob_crd())
    table = to_table(served, [ftj], "1")
    columns = table["columnDefinitions"]
    assert [c["name"] for c in columns if c["priority"] == 0] == [  # plain `kubectl get ftj`
        "Name", "Succeeded", "Reason", "Phase", "Progress", "Loss", "Age"]
    row = dict(zip([c["name"] for c in columns], table["rows"][0]["cells"], strict=True))
    assert {k: row[k] for k in ("Name", "Succeeded", "Phase", "Progress")} == {
        "Name": "bot", "Succeeded": "Unknown", "Phase": "DownloadingModel", "Progress": 0}
    assert row["Reported"] != "<unknown>"  # `-o wide`: how old the trainer's last report is


DISRUPTED = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]
CHECKPOINTS = [{"step": 20, "uri": "s3://out/ns/ftj/checkpoints/00000020"}, {"step": 40, "uri": "s3://out/ns/ftj/checkpoints/00000040"}]


def test_preempted_pod_is_restarting_from_its_checkpoint_and_not_a_failed_attempt():
    """Exit 143 after a disruption: Restarting 'preempted, resuming from checkpoint N' (N: the newest checkpoint
    the trainer reported), never 'attempt failed', and it does not use up spec.backoffLimit."""
    preempted = pod("p1", "Failed", state=terminated(143, "Stopped by SIGTERM at step 41; ..."), conditions=DISRUPTED)
    between = derive_status(Observed(1, job(active=0, failed=0), [preempted], checkpoints=CHECKPOINTS), None, T0)
    reason, message = conds(between)["Running"][1:]
    assert reason == "Restarting"
    assert message == ("Pod p1 preempted (PreemptionByScheduler), resuming from checkpoint 40. "
                       "Waiting for the Job to start the next pod.")
    assert conds(between)["Failed"][:2] == ("False", "NoFailure")
    resumed = derive_status(Observed(1, job(active=1), [preempted, pod("p2", created="2026-11-23T08:10:00Z")],
                                     checkpoints=CHECKPOINTS), between, T1)
    assert conds(resumed)["Running"] == ("True", "Restarting", "Training on pod p2. Pod p1 preempted (PreemptionByScheduler), "
                                         "resuming from checkpoint 40.")
    # a later crash is attempt 1, not 2: the preemption was not an attempt that failed
    crashed = pod("p2", "Failed", "2026-11-23T08:10:00Z", terminated(203, "boom"))
    after = derive_status(Observed(1, job(active=0, failed=1), [preempted, crashed], checkpoints=CHECKPOINTS), resumed, T1)
    assert conds(after)["Running"][2].startswith("Attempt 1 failed (InternalError): boom")


def test_preemption_without_checkpoint_or_disruption_condition_says_so():
    sigtermed = pod("p1", "Failed", state=terminated(143, "Stopped by SIGTERM before training started."))
    status = derive_status(Observed(1, job(active=0, failed=1), [sigtermed]), None, T0)
    assert conds(status)["Running"] == ("False", "Restarting", (
        "Pod p1 preempted, restarting from the beginning (no checkpoint was saved yet). Without a disruption condition this "
        "counts against spec.backoffLimit. Waiting for the Job to start the next pod."))


def test_pod_being_disrupted_is_saving_a_checkpoint():
    status = derive_status(Observed(1, job(active=1), [pod("p1", conditions=DISRUPTED)]), None, T0)
    assert conds(status)["Running"] == ("True", "Restarting", "Pod p1 is being preempted (PreemptionByScheduler): saving a checkpoint.")


def queued_job(suspend=True, hold=False, **status):
    j = job(suspend=suspend, **status)
    j["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    if hold:
        j["metadata"]["annotations"] = {"kubetune.io/user-hold": "true"}
    return j


def test_a_job_kueue_holds_is_queued_naming_the_queue_not_suspended():
    status = derive_status(Observed(1, queued_job()), None, T0)
    running, succeeded, suspended = conds(status)["Running"], conds(status)["Succeeded"], conds(status)["Suspended"]
    assert running[:2] == ("False", "Queued") and "Kueue LocalQueue team-a" in running[2]
    assert "spec.suspend" not in running[2]
    assert succeeded[:2] == ("Unknown", "Queued") and suspended[:2] == ("False", "Queued")
    assert conds(status)["Failed"][:2] == ("False", "NoFailure")


def test_an_admitted_queued_job_trains_and_an_evicted_one_is_queued_again():
    admitted = derive_status(Observed(1, queued_job(suspend=False, active=1), [pod("p1")]), None, T0)
    assert conds(admitted)["Running"] == ("True", "Training", "Training on pod p1.")
    evicted = [pod("p1", "Failed", state=terminated(143, "", "Error"))]
    again = derive_status(Observed(1, queued_job(failed=1), evicted), admitted, T1)
    assert conds(again)["Running"][:2] == ("False", "Queued")


def test_a_user_hold_on_a_queued_job_reads_suspended():
    status = derive_status(Observed(2, queued_job(hold=True)), None, T0)
    suspended = conds(status)["Suspended"]
    assert suspended[:2] == ("True", "Suspended")
    assert "set spec.suspend=false" in suspended[2] and "Kueue LocalQueue team-a" in suspended[2]


def test_cancel_is_cancelling_until_the_job_is_gone_then_failed_cancelled_keeping_the_rest():
    cancelling = derive_status(Observed(3, job(suspend=True, active=1), [pod("p1")], cancel=True), None, T0)
    assert conds(cancelling)["Running"][:2] == ("False", "Cancelling")
    assert conds(cancelling)["Failed"][:2] == ("False", "NoFailure")
    previous = {**cancelling, "progress": {"step": 40}, "checkpoints": [{"step": 40, "uri": "s3://o/ck-40"}]}
    done = derive_status(Observed(3, None, [], cancel=True), previous, T1)
    assert conds(done)["Failed"][:2] == ("True", "Cancelled")
    assert conds(done)["Succeeded"][:2] == ("False", "Cancelled")  # kubectl get ftj: Succeeded False, Reason Cancelled
    assert conds(done)["Running"][:2] == ("False", "Cancelled")
    assert "training Job was removed" in conds(done)["Failed"][2]
    assert done["completionTime"] == "2026-11-23T09:00:00Z"
    # the trainer's part of status is not the operator's to write: a merge patch leaves it in place
    assert not {"progress", "checkpoints", "jobName"} & set(done)
    # terminal: unsetting spec.cancel does not bring the job back to Pending
    later = derive_status(Observed(4, None, [], cancel=False), {**previous, **done}, T1)
    assert conds(later)["Failed"][:2] == ("True", "Cancelled")


def test_cancel_before_the_job_exists_says_so():
    status = derive_status(Observed(1, None, [], cancel=True), None, T0)
    assert conds(status)["Failed"] == ("True", "Cancelled", "Cancelled (spec.cancel) before training started.")


@pytest.mark.parametrize(("conditions", "kept"), [([("Complete", "")], ("Succeeded", "True", "Completed")),
                                                  ([("Failed", "BackoffLimitExceeded")], ("Failed", "True", "BackoffLimitExceeded"))])
def test_cancelling_a_finished_job_does_nothing_and_says_so(conditions, kept):
    status = derive_status(Observed(2, job(conditions), [], cancel=True), None, T0)
    type_, value, reason = kept
    assert conds(status)[type_][:2] == (value, reason)
    assert conds(status)[type_][2].endswith("spec.cancel has no effect: the job had already finished.")


def test_cancelled_job_may_be_removed_once_no_pod_runs():
    from kubetune.status.finetunejob import cancel_complete
    assert not cancel_complete(job(suspend=False), [])
    assert not cancel_complete(job(suspend=True, active=1), [pod("p1")])
    assert not cancel_complete(job(suspend=True), [pod("p1", "Running")])  # still checkpointing after SIGTERM
    assert cancel_complete(job(suspend=True), [pod("p1", "Failed", state=terminated(143))])
    assert cancel_complete(job(suspend=True), [])


def test_preemption_names_the_checkpoint_the_preempted_trainer_saved_not_a_later_one():
    """The next pod saves newer checkpoints as it trains: N stays the one the preempted pod left behind."""
    said = "Stopped by SIGTERM at step 36; the checkpoint of step 35 is in s3://out/ns/ftj/checkpoints; the next pod resumes from it."
    preempted = pod("p1", "Failed", state=terminated(143, said), conditions=DISRUPTED)
    status = derive_status(Observed(1, job(active=1), [preempted, pod("p2", created="2026-11-23T08:10:00Z")],
                                    checkpoints=CHECKPOINTS), None, T0)
    assert conds(status)["Running"][2] == "Training on pod p2. Pod p1 preempted (PreemptionByScheduler), resuming from checkpoint 35."
