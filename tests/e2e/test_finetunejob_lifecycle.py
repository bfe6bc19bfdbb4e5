"""FineTuneJob end to end: the real kopf operator over HTTP against the API emulator.

Nothing runs pods here: tests that need a pod or a Job status play the Job controller and kubelet
themselves (Cluster.play_*), as their docstrings say.
"""

from __future__ import annotations

import json
import time

import pytest
from kubernetes.client.exceptions import ApiException

from .harness import Cluster, job_condition, running, terminated, wait_for
from .rbac import report_as_trainer

SPEC = {
    "baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
    "dataset": {"train": "s3://data/chat.jsonl"},
    "hyperparameters": {"learningRate": "2e-4"},
}


def _job(cluster: Cluster, name: str = "bot") -> dict:
    return wait_for(lambda: cluster.job(f"{name}-train"), what=f"Job {name}-train")


def test_happy_path_to_succeeded(cluster, operator, emulator, tmp_path):
    """Plays the Job controller and kubelet: creates the pod, marks it running, then succeeded."""
    cluster.create_ftj("bot", SPEC)
    job = _job(cluster)
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("FineTuneJob", "bot", True)
    assert owner["uid"] == cluster.ftj("bot")["metadata"]["uid"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/kubetune/trainer:test"
    for path in ("/api/v1/namespaces/default/configmaps/bot-trainer-config", "/api/v1/namespaces/default/serviceaccounts/bot-trainer",
                 "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/bot-trainer",
                 "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/bot-trainer"):
        assert cluster.raw("GET", path)["metadata"]["ownerReferences"][0]["name"] == "bot"

    pending = cluster.wait_condition("bot", "Running", "False", "Pending")
    assert pending["message"] == "Waiting for the training pod to start."
    assert cluster.ftj("bot")["status"]["jobName"] == "bot-train"

    cluster.play_job_status("bot-train", {"active": 1, "startTime": "2026-11-23T08:00:00Z"})
    cluster.play_pod("bot-train", "bot-train-abcde", running())
    cond = cluster.wait_condition("bot", "Running", "True", "Training")
    assert cond["message"] == "Training on pod bot-train-abcde."

    # The trainer reports progress into status with its own ServiceAccount's token (its Role allows exactly
    # that, for this one FineTuneJob); the operator keeps it.
    progress = {"status": {"progress": {"step": 5, "totalSteps": 10, "percent": 50, "loss": 1.25}}}
    assert report_as_trainer(emulator, job, "bot", progress, tmp_path), emulator.denials()
    assert not emulator.denials()

    report = {"adapter": {"uri": "s3://adapters/test/default/bot", "manifestSha256": "b" * 64, "type": "lora", "step": 40,
                          "reason": "best eval_loss 0.5 at step 40 of 70; stopped early after 3 evaluations without improvement"},
              "evaluation": {"baseline": {"evalLoss": 3.0, "perplexity": 20.1}, "final": {"evalLoss": 0.5, "perplexity": 1.6}}}
    cluster.play_pod_status("bot-train-abcde", terminated(0, json.dumps(report)))
    cluster.play_job_status("bot-train", {"active": 0, "succeeded": 1, "completionTime": "2026-11-23T08:10:00Z",
                                          "conditions": [job_condition("SuccessCriteriaMet"), job_condition("Complete")]})
    done = cluster.wait_condition("bot", "Succeeded", "True", "Completed")
    assert done["message"] == "Training finished; adapter published to s3://adapters/test/default/bot."
    status = cluster.ftj("bot")["status"]
    assert status["adapter"] == report["adapter"]
    assert status["evaluation"] == report["evaluation"]
    assert status["progress"]["step"] == 5 and status["progress"]["loss"] == 1.25
    assert status["completionTime"] == "2026-11-23T08:10:00Z"
    assert status["observedGeneration"] == 1
    reasons = wait_for(lambda: {e["reason"] for e in cluster.events("bot")} >= {"Training", "Completed"} and
                       {e["reason"] for e in cluster.events("bot")})
    assert "Completed" in reasons
    assert len(cluster.jobs()) == 1


FAILURES = [
    # (pod status, job conditions, expected reason, text in message)
    (terminated(1, "train.jsonl:17: messages[2].role must be one of system,user,assistant"),
     [job_condition("Failed", "PodFailurePolicy")], "UserError", "train.jsonl:17: messages[2].role"),
    (terminated(137, "", "OOMKilled"), [job_condition("Failed", "BackoffLimitExceeded")], "OOMKilled", "qlora"),
    (terminated(203, "NCCL timeout"), [job_condition("Failed", "BackoffLimitExceeded")], "BackoffLimitExceeded",
     "Gave up after 4 attempt(s). Last: NCCL timeout"),
    (running(), [job_condition("Failed", "DeadlineExceeded")], "DeadlineExceeded", "activeDeadlineSeconds"),
]


@pytest.mark.parametrize(("pod_status", "conditions", "reason", "text"), FAILURES, ids=[f[2] for f in FAILURES])
def test_terminal_failures(cluster, operator, pod_status, conditions, reason, text):
    """Plays the Job controller and kubelet: a failed pod, then the Job's Failed condition."""
    cluster.create_ftj("bot", {**SPEC, "activeDeadlineSeconds": 3600})
    _job(cluster)
    cluster.play_pod("bot-train", "bot-train-x1", pod_status)
    cluster.play_job_status("bot-train", {"failed": 1, "conditions": conditions})
    failed = cluster.wait_condition("bot", "Failed", "True", reason, message=text)
    assert text in failed["message"]
    assert cluster.condition("bot", "Succeeded")["status"] == "False"
    assert cluster.condition("bot", "Running")["status"] == "False"
    wait_for(lambda: [e for e in cluster.events("bot") if e["type"] == "Warning" and e["reason"] == reason])


@pytest.mark.parametrize(("pod_status", "reason", "text"), [
    ({"phase": "Pending", "containerStatuses": [{"name": "trainer", "ready": False, "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}, "ImagePullFailed",
     "Cannot pull trainer image registry.example/kubetune/trainer:test"),
    ({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                          "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]},
     "Unschedulable", "4 Insufficient nvidia.com/gpu"),
])
def test_stuck_pods_are_reported(cluster, operator, pod_status, reason, text):
    """Plays kubelet/scheduler: a pending pod that cannot pull its image or be scheduled."""
    cluster.create_ftj("bot", SPEC)
    _job(cluster)
    cluster.play_job_status("bot-train", {"active": 1})
    cluster.play_pod("bot-train", "bot-train-x1", pod_status)
    cond = cluster.wait_condition("bot", "Running", "False", reason)
    assert text in cond["message"]
    assert cluster.condition("bot", "Failed")["status"] == "False"
    wait_for(lambda: [e for e in cluster.events("bot") if e["type"] == "Warning" and e["reason"] == reason])


@pytest.mark.parametrize(("spec", "field"), [
    # Each passes the CRD's OpenAPI schema (so the API server stores it) but not the operator's checks.
    ({**SPEC, "hyperparameters": {"learningRate": "5"}}, "spec.hyperparameters.learningRate: must be in (0, 1], got 5"),
    ({**SPEC, "dataset": {"train": "s3://data/x.jsonl", "validationSplit": "0.7"}}, "spec.dataset.validationSplit: must be between 0 and 0.5"),
    # A CEL rule: the API server (and the emulator) rejects it at apply; stored anyway below, as an API
    # server without CEL support would, to show that the operator still catches it.
    ({**SPEC, "resources": {"nodes": 2, "gpus": 0}}, "resources.nodes > 1 needs resources.gpus > 0"),
    ({**SPEC, "dataset": {"train": "s3://data/../secrets.jsonl"}}, "spec.dataset.train: must not contain '..' path segments"),
    # file:// passes the CRD (kubetune local uses it) but on a cluster it is a folder inside one pod.
    ({**SPEC, "output": {"uri": "file:///tmp/adapters"}}, "spec.output.uri: 'file:///tmp/adapters': file:// URIs are for `kubetune local` only"),
])
def test_invalid_spec_fails_once_without_job(cluster, operator, emulator, spec, field):
    """What the API server stores but the operator's own validation rejects: Failed, once, no Job."""
    try:
        cluster.create_ftj("bad", spec)
    except ApiException as exc:  # the CEL rule at apply, with the rule's message at its field
        assert exc.status == 422 and field in exc.body
        emulator.check_schemas = False  # an API server that does not run CEL
        try:
            cluster.create_ftj("bad", spec)
        finally:
            emulator.check_schemas = True
    failed = cluster.wait_condition("bad", "Failed", "True", "ValidationFailed")
    assert field in failed["message"]
    events = wait_for(lambda: [e for e in cluster.events("bad") if e["reason"] == "ValidationFailed"])
    assert events[0]["type"] == "Warning" and field in events[0]["message"]
    # No retry loop: nothing more is written about it.
    time.sleep(1.5)
    writes = [r for r in emulator.requests if r.method in ("POST", "PATCH", "PUT") and "/bad" in r.path]
    time.sleep(1.5)
    assert [r for r in emulator.requests if r.method in ("POST", "PATCH", "PUT") and "/bad" in r.path] == writes
    assert cluster.jobs() == []
    assert len([e for e in cluster.events("bad") if e["reason"] == "ValidationFailed"]) == 1


def test_suspend_and_resume(cluster, operator):
    """Plays the Job controller: sets the Job's Suspended condition once spec.suspend is true."""
    cluster.create_ftj("bot", SPEC)
    assert _job(cluster)["spec"]["suspend"] is False
    cluster.patch_ftj("bot", {"spec": {"suspend": True}})
    wait_for(lambda: cluster.job("bot-train")["spec"]["suspend"] is True, what="Job suspended")
    cluster.play_job_status("bot-train", {"conditions": [job_condition("Suspended", "JobSuspended")]})
    cond = cluster.wait_condition("bot", "Suspended", "True", "Suspended")
    assert "set spec.suspend=false to resume" in cond["message"]
    assert cluster.ftj("bot")["status"]["observedGeneration"] == 2
    cluster.patch_ftj("bot", {"spec": {"suspend": False}})
    wait_for(lambda: cluster.job("bot-train")["spec"]["suspend"] is False, what="Job resumed")
    cluster.play_job_status("bot-train", {"conditions": [{**job_condition("Suspended", "JobResumed"), "status": "False"}]})
    cluster.wait_condition("bot", "Suspended", "False")
    assert len(cluster.jobs()) == 1


def test_spec_change_after_start_is_ignored_with_a_warning(cluster, operator):
    cluster.create_ftj("bot", SPEC)
    before = _job(cluster)
    cluster.patch_ftj("bot", {"spec": {"adapter": {"rank": 64}}})
    event = wait_for(lambda: [e for e in cluster.events("bot") if e["reason"] == "SpecChangeIgnored"])
    assert "Delete and re-create" in event[0]["message"]
    assert cluster.job("bot-train")["metadata"]["uid"] == before["metadata"]["uid"]


def test_a_dora_job_warns_at_creation_that_vllm_cannot_serve_it(cluster, operator):
    cluster.create_ftj("bot", {**SPEC, "adapter": {"type": "dora"}})
    cond = cluster.wait_condition("bot", "Servable", "False", "DoRANotServable")
    assert "spec.output.mergedModel: true" in cond["message"]
    event = wait_for(lambda: [e for e in cluster.events("bot") if e["reason"] == "DoRANotServable"])
    assert event[0]["type"] == "Warning"


def test_delete_cleans_up_children(cluster, operator):
    cluster.create_ftj("bot", SPEC)
    _job(cluster)
    cluster.delete_ftj("bot")
    wait_for(lambda: cluster.jobs() == [], what="Job garbage-collected")
    assert cluster.list("/api/v1/namespaces/default/configmaps") == [] or all(
        cm["metadata"]["name"] != "bot-trainer-config" for cm in cluster.list("/api/v1/namespaces/default/configmaps"))
    assert all(r["metadata"]["name"] != "bot-trainer"
               for r in cluster.list("/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles"))


@pytest.mark.parametrize(("spec", "field"), [
    ({**SPEC, "dataset": {"train": "ftp://data/chat.jsonl"}}, "spec.dataset.train"),
    ({**SPEC, "hyperparameters": {"learningRate": 0.0002}}, "spec.hyperparameters.learningRate"),
    ({**SPEC, "adapter": {"rank": 0}}, "spec.adapter.rank"),
])
def test_schema_invalid_manifest_is_rejected_at_apply_naming_the_field(cluster, kubectl, tmp_path, spec, field):
    """The CRD's OpenAPI schema (served by the emulator like an API server) rejects it before the operator sees it."""
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(json.dumps({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                                    "metadata": {"name": "bad"}, "spec": spec}))
    result = kubectl("apply", "-f", str(manifest), check=False)
    assert result.returncode != 0
    assert field in result.stderr
