"""The pre-flight end to end: the real kopf operator over HTTP against the API emulator, pre-flight on (the platform
default) with a platform GPU memory of 80Gi.

Nothing runs pods here: each test plays the Job controller and kubelet for the pre-flight Job (Cluster.play_*: its
pod from the Job's template, the pod's terminated state with the trainer's pre-flight report as its termination
message, exit 0 passed / 1 the user's to fix, then the Job's Complete or Failed condition as the Job controller
sets it under the Job's podFailurePolicy). The reports are kubetune.api.preflight.PreflightReport objects written
with its own text(), the figures of the too-big case from the estimator (kubetune.api.memory).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import kubernetes
import pytest

from kubetune.api import memory
from kubetune.api.preflight import PreflightReport, RecordError, SplitReport

from .harness import Cluster, job_condition, running, terminated, wait_for

OPERATOR_ENV = {"KUBETUNE_PREFLIGHT_ENABLED": "true", "KUBETUNE_GPU_MEMORY": json.dumps({"default": "80Gi"})}
SPEC = {
    "baseModel": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct"},
    "dataset": {"train": "s3://data/chat.jsonl"},
    "resources": {"gpus": 1},
    "scheduling": {"queueName": "gpu-team-a"},
}
QWEN_7B = {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "intermediate_size": 18944, "vocab_size": 152064,
           "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False}


@pytest.fixture
def created_jobs(cluster) -> Iterator[list[str]]:
    """Names of every Job that ever existed in the namespace, in order: a watch from the start of the test."""
    seen: list[str] = []
    watch = kubernetes.watch.Watch()

    def record() -> None:
        try:
            for event in watch.stream(cluster.batch.list_namespaced_job, cluster.ns, timeout_seconds=120):
                if event["type"] == "ADDED" and event["object"].metadata.name not in seen:
                    seen.append(event["object"].metadata.name)
        except Exception:  # the emulator stops at the end of the test, under the open watch
            pass

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    time.sleep(0.2)  # the watch is open before the test creates anything
    yield seen
    watch.stop()


def _play_preflight(cluster: Cluster, name: str, pod: str, code: int, report: PreflightReport) -> None:
    """Plays the Job controller and kubelet: the pre-flight pod runs and ends with `code` and the report; the Job
    completes (exit 0) or fails by its podFailurePolicy's FailJob rule (exit 1)."""
    job = f"{name}-preflight"
    cluster.play_job_status(job, {"active": 1, "startTime": "2026-11-23T08:00:00Z"})
    cluster.play_pod(job, pod, running())
    cluster.wait_condition(name, "Running", "False", "Validating", message=f"on pod {pod}")
    cluster.play_pod_status(pod, terminated(code, report.text()))
    if code == 0:
        cluster.play_job_status(job, {"active": 0, "succeeded": 1, "completionTime": "2026-11-23T08:01:00Z",
                                      "conditions": [job_condition("SuccessCriteriaMet"), job_condition("Complete")]})
    else:
        cluster.play_job_status(job, {"active": 0, "failed": 1, "conditions": [
            job_condition("FailureTarget", "PodFailurePolicy"), job_condition("Failed", "PodFailurePolicy")]})


def _passed() -> PreflightReport:
    shape = memory.ModelShape.from_config(QWEN_7B)
    training = memory.TrainingShape(adapter="lora", batch_size=8, sequence_length=2048)
    fits, message, _ = memory.fit_message(shape, training, 80 * memory.GIB)
    return PreflightReport(passed=True, message=message, method="sft", format="chatml", max_length=2048,
                           train=SplitReport(files=["chat.jsonl"], records=1000, examples=950, tokens=412_000, truncated=3),
                           validation=SplitReport(examples=50, tokens=21_000), planned_steps=357,
                           estimated_training_tokens=1_230_000, memory=memory.estimate(shape, training),
                           gpu_memory_bytes=80 * memory.GIB, fits=fits)


def test_preflight_runs_first_without_a_gpu_or_the_queue_then_the_training_job(cluster, operator, created_jobs, emulator):
    cluster.create_ftj("bot", SPEC)
    pre = wait_for(lambda: cluster.job("bot-preflight"), what="the pre-flight Job")
    assert [j["metadata"]["name"] for j in cluster.jobs()] == ["bot-preflight"]
    pod = pre["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    assert ctr["args"] == ["--config", "/etc/kubetune/config.json", "--preflight"]
    assert ctr["resources"] == {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"cpu": "1", "memory": "4Gi"}}
    assert {"name": "KUBETUNE_GPU_MEMORY", "value": "80Gi"} in ctr["env"]
    assert "kueue.x-k8s.io/queue-name" not in pre["metadata"]["labels"] and not pre["spec"].get("suspend")
    assert pre["metadata"]["labels"]["app.kubernetes.io/component"] == "preflight"
    assert pod["serviceAccountName"] == "bot-trainer" and pre["spec"]["activeDeadlineSeconds"] == 1800
    waiting = cluster.wait_condition("bot", "Running", "False", "Validating")
    assert "no GPU is requested" in waiting["message"]
    assert cluster.condition("bot", "DataValidated")["status"] == "Unknown"
    # One status write for the create, which already names the pre-flight Job it created; the Job's ADDED event
    # then finds nothing to write (tests/e2e/test_event_work.py counts the same for the training Job)
    assert cluster.ftj("bot")["status"]["preflightJobName"] == "bot-preflight"
    time.sleep(1.5)  # the pre-flight Job's ADDED event reaches the operator
    writes = [r for r in emulator.requests if r.method == "PATCH" and r.path.endswith("/finetunejobs/bot/status")]
    assert len(writes) == 1, [r.path for r in writes]

    _play_preflight(cluster, "bot", "bot-preflight-p1", 0, _passed())
    train = wait_for(lambda: cluster.job("bot-train"), what="the training Job, after the pre-flight passed")
    assert train["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert train["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-team-a"
    validated = cluster.wait_condition("bot", "DataValidated", "True", "Validated")
    assert validated["message"].startswith("Pre-flight passed: 950 training examples (412000 tokens, 3 longer than maxLength "
                                           "2048 are truncated); 50 held-out examples; 357 steps")
    data = cluster.ftj("bot")["status"]["data"]
    assert data["train"] == {"examples": 950, "tokens": 412000, "truncated": 3, "invalid": 0}
    assert data["plannedSteps"] == 357 and data["fits"] is True and data["gpuMemory"] == "80.0Gi"
    assert data["reportUri"] == "s3://adapters/test/default/bot/preflight/report.json"
    wait_for(lambda: [e for e in cluster.events("bot") if e["reason"] == "Validated" and e["type"] == "Normal"])
    assert created_jobs == ["bot-preflight", "bot-train"]


def test_bad_data_fails_at_preflight_with_line_numbers_and_no_training_job_ever(cluster, operator, created_jobs):
    cluster.create_ftj("bot", SPEC)
    wait_for(lambda: cluster.job("bot-preflight"), what="the pre-flight Job")
    errors = [RecordError.parse("chat.jsonl:17: messages[1].role must be one of system, user, assistant, got 'bot'"),
              RecordError.parse('chat.jsonl:42: missing field "messages"')]
    bad = PreflightReport(passed=False, message="chat.jsonl: 2 of 1000 records are invalid; fix them or remove them.",
                          errors=errors, error_count=2, train=SplitReport(records=1000, examples=998, invalid=2))
    _play_preflight(cluster, "bot", "bot-preflight-p1", 1, bad)
    failed = cluster.wait_condition("bot", "Failed", "True", "ValidationFailed")
    assert failed["message"] == ("chat.jsonl: 2 of 1000 records are invalid; fix them or remove them. chat.jsonl:17: messages[1].role "
                                 "must be one of system, user, assistant, got 'bot'; chat.jsonl:42: missing field \"messages\".")
    assert cluster.condition("bot", "DataValidated")["status"] == "False"
    event = wait_for(lambda: [e for e in cluster.events("bot") if e["reason"] == "ValidationFailed"])
    assert event[0]["type"] == "Warning" and "chat.jsonl:17" in event[0]["message"]
    time.sleep(1.5)  # a few more passes of the operator: still no training Job
    assert "bot-train" not in created_jobs
    assert [j["metadata"]["name"] for j in cluster.jobs()] == ["bot-preflight"]

    # The fix: point the job at fixed data. The pre-flight runs again (a new Job), then training starts.
    old = cluster.job("bot-preflight")["metadata"]["uid"]
    cluster.patch_ftj("bot", {"spec": {"dataset": {"train": "s3://data/chat-fixed.jsonl"}}})
    wait_for(lambda: cluster.job("bot-preflight")["metadata"]["uid"] != old, what="a new pre-flight Job for the new spec")
    cluster.wait_condition("bot", "Failed", "False")
    assert "bot-train" not in created_jobs
    _play_preflight(cluster, "bot", "bot-preflight-p2", 0, _passed())
    wait_for(lambda: cluster.job("bot-train"), what="the training Job")
    cluster.wait_condition("bot", "DataValidated", "True", "Validated")


def test_a_job_too_big_for_its_gpus_fails_with_the_numbers_and_the_cheapest_fix(cluster, operator, created_jobs):
    cluster.create_ftj("bot", {**SPEC, "adapter": {"type": "full"}, "resources": {"gpus": 1, "gpuMemory": "24Gi"}})
    pre = wait_for(lambda: cluster.job("bot-preflight"), what="the pre-flight Job")
    assert {"name": "KUBETUNE_GPU_MEMORY", "value": "24Gi"} in pre["spec"]["template"]["spec"]["containers"][0]["env"]
    shape = memory.ModelShape.from_config(QWEN_7B)
    training = memory.TrainingShape(adapter="full", batch_size=4, sequence_length=2048)
    fits, message, options = memory.fit_message(shape, training, 24 * memory.GIB)
    assert not fits
    report = PreflightReport(passed=False, message=f"The job does not fit its GPU: {message}.", memory=memory.estimate(shape, training),
                             gpu_memory_bytes=24 * memory.GIB, fits=False, alternatives=options,
                             train=SplitReport(examples=950, tokens=412_000))
    _play_preflight(cluster, "bot", "bot-preflight-p1", 1, report)
    failed = cluster.wait_condition("bot", "Failed", "True", "ValidationFailed")
    assert failed["message"] == f"The job does not fit its GPU: {message}."
    assert "GiB > 24 GiB per GPU" in message and "QLoRA" in message  # the numbers and the cheapest fix, from the estimator
    data = cluster.ftj("bot")["status"]["data"]
    assert data["fits"] is False and data["gpuMemory"] == "24.0Gi"
    time.sleep(1)
    assert "bot-train" not in created_jobs


def test_cancel_during_preflight_removes_it_and_creates_nothing(cluster, operator, created_jobs):
    cluster.create_ftj("bot", SPEC)
    wait_for(lambda: cluster.job("bot-preflight"), what="the pre-flight Job")
    cluster.patch_ftj("bot", {"spec": {"cancel": True}})
    wait_for(lambda: cluster.jobs() == [], what="the pre-flight Job deleted")
    cluster.wait_condition("bot", "Failed", "True", "Cancelled")
    time.sleep(1)
    assert cluster.jobs() == [] and created_jobs == ["bot-preflight"]
