"""The operator side of the pre-flight (pure parts): the pre-flight Job built from the training Job, the plan that
gates the training Job on it, and the status derived from its pod's report (kubetune.api.preflight)."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from kubetune.api import memory
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.preflight import PreflightReport, RecordError, SplitReport
from kubetune.api.validation import parse
from kubetune.builders.finetunejob import build_children, desired_children, resolve_spec, spec_hash
from kubetune.builders.preflight import build_preflight_job, gpu_memory
from kubetune.config import OperatorSettings
from kubetune.plan.finetunejob import ended, plan
from kubetune.status import finetunejob as ftj_status
from kubetune.status import preflight

from .test_builders_finetunejob import BODY, OWNER, SETTINGS

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)
PLATFORM = SETTINGS.model_copy(update={"gpu_memory": {"default": "80Gi", "NVIDIA-L4": "24Gi", "nvidia.com/mig-1g.10gb": "10Gi"}})
QWEN_7B = {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "intermediate_size": 18944, "vocab_size": 152064,
           "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False}


def _resolved(body=BODY, settings=PLATFORM):
    return resolve_spec(parse(FineTuneJobSpec, body["spec"]), settings)


def _preflight(body=BODY, settings=PLATFORM) -> dict:
    resolved = _resolved(body, settings)
    return build_preflight_job(build_children(body, resolved, settings)[-1], "support-bot-preflight", resolved, settings)


def test_preflight_job_runs_the_trainer_like_the_training_job_but_on_cpu_outside_the_gpu_queue():
    resolved = _resolved()
    train = build_children(BODY, resolved, PLATFORM)[-1]
    job = _preflight()
    tpod, pod = train["spec"]["template"]["spec"], job["spec"]["template"]["spec"]
    (tctr,), (ctr,) = tpod["containers"], pod["containers"]
    labels = {"app.kubernetes.io/managed-by": "kubetune", "app.kubernetes.io/component": "preflight",
              "kubetune.io/finetunejob": "support-bot"}  # no kueue.x-k8s.io/queue-name: Kueue never admits it
    assert job["metadata"] == {"name": "support-bot-preflight", "namespace": "ml", "labels": labels, "ownerReferences": OWNER,
                               "annotations": {"kubetune.io/spec-hash": spec_hash(resolved)}}
    assert job["spec"] == {
        "backoffLimit": 1, "activeDeadlineSeconds": 1800, "completions": 1, "parallelism": 1,
        "podFailurePolicy": train["spec"]["podFailurePolicy"],
        "template": {"metadata": {"labels": labels}, "spec": pod}}
    assert "suspend" not in job["spec"]  # not queued: it starts at once
    # the same identity, security, config, credentials and volumes as the trainer; not its GPU placement
    assert pod == {**{k: tpod[k] for k in ("restartPolicy", "serviceAccountName", "automountServiceAccountToken",
                                             "enableServiceLinks", "securityContext", "terminationGracePeriodSeconds",
                                             "priorityClassName")},
                   "containers": [ctr], "volumes": [v for v in tpod["volumes"] if v["name"] != "dshm"]}
    assert "tolerations" in tpod and "tolerations" not in pod
    assert ctr == {
        **{k: tctr[k] for k in ("name", "image", "imagePullPolicy", "securityContext", "terminationMessagePath",
                                "terminationMessagePolicy")},
        "args": ["--config", "/etc/kubetune/config.json", "--preflight"],
        "env": [*(e for e in tctr["env"] if e["name"] != "KUBETUNE_STOP_GRACE_SECONDS"),
                {"name": "KUBETUNE_GPU_MEMORY", "value": "80Gi"}],
        "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"cpu": "1", "memory": "4Gi"}},
        "volumeMounts": [m for m in tctr["volumeMounts"] if m["name"] != "dshm"]}
    assert {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "platform-s3", "key": "AWS_SECRET_ACCESS_KEY"}}} \
        in ctr["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in ctr["env"]


def test_multi_node_preflight_is_one_pod_without_rendezvous():
    body = {**BODY, "spec": {**BODY["spec"], "resources": {"gpus": 8, "nodes": 4}}}
    job = _preflight(body)
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["completions"] == 1 and "subdomain" not in pod and "completionMode" not in job["spec"]
    names = {e["name"] for e in pod["containers"][0]["env"]}
    assert not names & {"MASTER_ADDR", "MASTER_PORT", "KUBETUNE_NNODES", "KUBETUNE_NODE_RANK"}
    assert "ports" not in pod["containers"][0]


@pytest.mark.parametrize(("resources", "scheduling", "expected"), [
    ({"gpus": 1, "gpuMemory": "40Gi"}, {}, "40Gi"),  # the spec wins
    ({"gpus": 1}, {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}}, "24Gi"),  # by the GPU product asked for
    ({"gpus": 1, "gpuResourceName": "nvidia.com/mig-1g.10gb"}, {}, "10Gi"),  # a MIG profile names its memory
    ({"gpus": 1}, {"nodeSelector": {"nvidia.com/gpu.product": "Unknown-GPU"}}, "80Gi"),  # the platform default
    ({"gpus": 0, "gpuMemory": "40Gi"}, {}, None),  # a CPU job: nothing to check
])
def test_gpu_memory_to_check_against(resources, scheduling, expected):
    body = {**BODY, "spec": {**BODY["spec"], "resources": resources, "scheduling": scheduling}}
    assert gpu_memory(_resolved(body), PLATFORM) == expected
    env = {e["name"]: e.get("value") for e in _preflight(body)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env.get("KUBETUNE_GPU_MEMORY") == expected
    no_default = PLATFORM.model_copy(update={"gpu_memory": {}})
    assert gpu_memory(_resolved(body, no_default), no_default) == (resources.get("gpuMemory") if resources["gpus"] else None)


def test_settings_read_the_gpu_memory_table_from_the_environment_and_refuse_a_bad_one():
    settings = OperatorSettings.from_env({"KUBETUNE_GPU_MEMORY": '{"default": "80Gi", "NVIDIA-L4": "24Gi"}',
                                          "KUBETUNE_PREFLIGHT_ENABLED": "false"})
    assert settings.gpu_memory == {"default": "80Gi", "NVIDIA-L4": "24Gi"} and settings.preflight_enabled is False
    with pytest.raises(ValueError, match="gpu_memory\\['NVIDIA-L4'\\] 'lots' is not a Kubernetes quantity"):
        OperatorSettings.from_env({"KUBETUNE_GPU_MEMORY": '{"NVIDIA-L4": "lots"}'})
    with pytest.raises(ValueError, match="KUBETUNE_GPU_MEMORY: not JSON"):
        OperatorSettings.from_env({"KUBETUNE_GPU_MEMORY": "80Gi"})


# ------------------------------------------------------------------------------------------- plan

def _pf_job(conditions=(), body=BODY, deleting=False, settings=PLATFORM, **status) -> dict:
    job = _preflight(body, settings)
    job["metadata"]["uid"] = "pf-uid"
    if deleting:
        job["metadata"]["deletionTimestamp"] = "2026-11-23T08:05:00Z"
    job["status"] = {"conditions": [{"type": t, "status": "True", "reason": r, "message": ""} for t, r in conditions], **status}
    return job


def _pod(state: dict, phase: str, name: str = "support-bot-preflight-x1", reason: str | None = None) -> dict:
    status = {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]}
    if reason:
        status["reason"] = reason
    return {"metadata": {"name": name, "creationTimestamp": "2026-11-23T08:00:00Z"},
            "spec": {"containers": [{"name": "trainer", "image": "registry.example/kubetune/trainer:1.0"}]}, "status": status}


def _ended(code: int, message: str = "", reason: str = "Error") -> dict:
    return _pod({"terminated": {"exitCode": code, "message": message, "reason": "Completed" if code == 0 else reason}},
                "Succeeded" if code == 0 else "Failed")


def _fit(config=QWEN_7B, adapter="full", budget="80Gi") -> tuple[bool, str, int, memory.MemoryEstimate]:
    shape = memory.ModelShape.from_config(config)
    training = memory.TrainingShape(adapter=adapter, batch_size=4, sequence_length=2048)
    size = {"80Gi": 80 * memory.GIB, "24Gi": 24 * memory.GIB}[budget]
    fits, message, _ = memory.fit_message(shape, training, size)
    return fits, message, size, memory.estimate(shape, training)


def _passed_report() -> PreflightReport:
    fits, message, size, estimate = _fit(adapter="lora")
    assert fits
    return PreflightReport(passed=True, message=message, method="sft", format="chatml", max_length=2048,
                           train=SplitReport(files=["chat.jsonl"], records=1000, examples=950, tokens=412_000, truncated=3),
                           validation=SplitReport(files=["chat.jsonl"], records=50, examples=50, tokens=21_000),
                           planned_steps=357, estimated_training_tokens=1_230_000, memory=estimate, gpu_memory_bytes=size, fits=True)


def _bad_data_report() -> PreflightReport:
    errors = [RecordError.parse(f"chat.jsonl:{line}: messages[1].role must be one of system, user, assistant, got 'bot'")
              for line in range(17, 17 + 15)]
    return PreflightReport(passed=False, message="chat.jsonl: 15 of 1000 records are invalid; fix them (the first: "
                           "chat.jsonl:17: messages[1].role must be one of system, user, assistant, got 'bot').",
                           errors=errors, error_count=15, train=SplitReport(records=1000, examples=985, invalid=15))


def test_the_training_job_waits_for_a_passed_preflight_of_the_current_spec():
    current = spec_hash(_resolved())
    step = lambda job=None, pods=(), status=None, body=BODY, train=None: plan(body, PLATFORM, train, status or {}, job, list(pods))  # noqa: E731
    first = step()
    assert (first.create_preflight, first.create_job, first.preflight.state) == (True, False, preflight.State.ABSENT)
    running = step(_pf_job(active=1), [_pod({"running": {}}, "Running")])
    assert (running.create_preflight, running.create_job, running.delete_preflight) == (False, False, False)
    assert running.preflight.state == preflight.State.RUNNING
    passed = step(_pf_job([("Complete", "")], succeeded=1), [_ended(0, _passed_report().text())])
    assert (passed.create_job, passed.create_preflight) == (True, False)
    failed = step(_pf_job([("Failed", "PodFailurePolicy")], failed=1), [_ended(1, _bad_data_report().text())])
    assert (failed.create_job, failed.create_preflight, failed.preflight.reason) == (False, False, "ValidationFailed")
    # a spec edit replaces the pre-flight Job: deleted once (its DELETED event runs the next pass, which creates it)
    edited = {**BODY, "spec": {**BODY["spec"], "dataset": {"train": "s3://data/chat-fixed.jsonl"}}}
    stale = step(_pf_job([("Failed", "PodFailurePolicy")], failed=1), body=edited)
    assert (stale.delete_preflight, stale.create_preflight, stale.create_job) == (True, False, False)
    assert not step(_pf_job(deleting=True), body=edited).delete_preflight
    # cancelled before training: a running pre-flight goes, nothing is created
    cancelled = step(_pf_job(active=1), body={**BODY, "spec": {**BODY["spec"], "cancel": True}})
    assert (cancelled.delete_preflight, cancelled.create_preflight, cancelled.create_job) == (True, False, False)
    # once the training Job exists the pre-flight is not touched, whatever the spec says now
    train = {"metadata": {"name": "support-bot-train", "annotations": {"kubetune.io/spec-hash": current}}}
    later = step(_pf_job([("Complete", "")], succeeded=1), body=edited, train=train)
    assert (later.create_preflight, later.delete_preflight, later.create_job, later.spec_change_ignored) == (False, False, False, True)


def test_a_failed_preflight_does_not_end_the_job_and_pre_flight_off_creates_the_training_job_at_once():
    for reason in ("ValidationFailed", "PreflightFailed"):
        assert not ended({"conditions": [{"type": "Failed", "status": "True", "reason": reason}]})
    off = SETTINGS.model_copy(update={"preflight_enabled": False})
    direct = plan(BODY, off, None, {}, None, [])
    assert (direct.create_job, direct.create_preflight, direct.preflight) == (True, False, None)
    kinds = [(c.manifest["metadata"]["name"], c.create_only) for c in desired_children(BODY, _resolved(), PLATFORM, create_job=False,
                                                                                    keep_config=False, create_preflight=True)]
    assert kinds[-1] == ("support-bot-preflight", True) and "support-bot-train" not in dict(kinds)


# ----------------------------------------------------------------------------------------- status

def _derive(job=None, pods=(), body=BODY, previous=None, train=None, settings=PLATFORM, **observed) -> dict:
    resolved = _resolved(body, settings)
    planned = plan(body, settings, train, previous or {}, job, list(pods))
    obs = ftj_status.Observed(1, job=train, output_prefix="s3://adapters/prod/ml/support-bot", preflight=planned.preflight,
                              cancel=resolved.cancel, **observed)
    return ftj_status.derive_status(obs, previous, T0).to_dict()


def _conds(status: dict) -> dict:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_while_the_preflight_runs_nothing_holds_a_gpu_and_status_says_so():
    status = _conds(_derive())
    assert status["Running"][:2] == ("False", "Validating") and status["DataValidated"][:2] == ("Unknown", "Validating")
    assert "no GPU is requested" in status["Running"][2] and status["Failed"][:2] == ("False", "NoFailure")
    running = _derive(_pf_job(active=1), [_pod({"running": {}}, "Running")])
    assert _conds(running)["Running"] == ("False", "Validating", "Pre-flight on pod support-bot-preflight-x1: validating every record, "
                                          "counting tokens and estimating GPU memory (CPU only: no GPU is requested until it passes).")
    assert running["preflightJobName"] == "support-bot-preflight" and "jobName" not in running
    stuck = _conds(_derive(_pf_job(active=1), [_pod({"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}, "Pending")]))
    assert stuck["Running"][:2] == ("False", "ImagePullFailed") and stuck["Running"][2].startswith("Pre-flight: Cannot pull trainer image")


def test_a_passed_preflight_sets_data_validated_with_the_figures():
    report = _passed_report()
    status = _derive(_pf_job([("Complete", "")], succeeded=1), [_ended(0, report.text())])
    conds = _conds(status)
    assert conds["DataValidated"][:2] == ("True", "Validated")
    peak = f"{report.memory.peak_bytes / 2**30:.1f}Gi"
    assert conds["DataValidated"][2] == (f"Pre-flight passed: 950 training examples (412000 tokens, 3 longer than maxLength 2048 are "
                                         f"truncated); 50 held-out examples; 357 steps, about 1230000 training tokens; estimated peak "
                                         f"GPU memory {peak} of 80.0Gi per GPU.")
    assert conds["Running"] == ("False", "Pending", "Pre-flight passed; creating the training Job.")
    assert status["data"] == {"format": "chatml", "maxLength": 2048,
                              "train": {"examples": 950, "tokens": 412000, "truncated": 3, "invalid": 0},
                              "validation": {"examples": 50, "tokens": 21000, "truncated": 0, "invalid": 0},
                              "plannedSteps": 357, "estimatedTrainingTokens": 1230000, "estimatedPeakGpuMemory": peak,
                              "gpuMemory": "80.0Gi", "fits": True, "errors": 0,
                              "reportUri": "s3://adapters/prod/ml/support-bot/preflight/report.json"}
    # it stays once the training Job runs (and after it ends)
    train = {"metadata": {"name": "support-bot-train", "annotations": {}}, "spec": {}, "status": {"active": 1}}
    later = _derive(_pf_job([("Complete", "")], succeeded=1), [], previous=status, train=train)
    assert _conds(later)["DataValidated"] == conds["DataValidated"]


def test_bad_records_fail_the_job_with_file_line_and_field_and_no_training_job():
    status = _derive(_pf_job([("Failed", "PodFailurePolicy")], failed=1), [_ended(1, _bad_data_report().text())])
    conds = _conds(status)
    assert conds["Failed"][:2] == ("True", "ValidationFailed") and conds["DataValidated"][:2] == ("False", "ValidationFailed")
    message = conds["Failed"][2]
    assert message.startswith("chat.jsonl: 15 of 1000 records are invalid")
    assert "chat.jsonl:18: messages[1].role must be one of system, user, assistant, got 'bot';" in message
    assert "chat.jsonl:26:" in message and "chat.jsonl:27:" not in message  # 10 quoted (the first is in the verdict)
    assert message.endswith("5 more bad record(s): all in s3://adapters/prod/ml/support-bot/preflight/report.json.")
    assert status["data"]["errors"] == 15 and "jobName" not in status
    assert conds["Succeeded"][:2] == ("False", "ValidationFailed")


def test_a_job_too_big_for_its_gpus_fails_with_the_numbers_and_the_cheapest_fix():
    fits, message, size, estimate = _fit(adapter="full", budget="24Gi")
    assert not fits
    report = PreflightReport(passed=False, message=f"Does not fit: {message}.", memory=estimate, gpu_memory_bytes=size, fits=False,
                             train=SplitReport(examples=950, tokens=412_000))
    status = _derive(_pf_job([("Failed", "PodFailurePolicy")], failed=1), [_ended(1, report.text())])
    failed = _conds(status)["Failed"]
    assert failed[:2] == ("True", "ValidationFailed")
    assert re.search(r"full fine-tune of 7\.6 B params needs ≈ \d+ GiB > 24 GiB per GPU: .*QLoRA.*or a GPU with more memory",
                     failed[2]), failed[2]
    assert status["data"]["fits"] is False and status["data"]["gpuMemory"] == "24.0Gi"


@pytest.mark.parametrize(("job_status", "pod", "text"), [
    ({"conditions": [("Failed", "DeadlineExceeded")]}, None, "The pre-flight ran longer than 1800 s and was stopped."),
    ({"conditions": [("Failed", "BackoffLimitExceeded")]}, _ended(137, reason="OOMKilled"),
     "Pre-flight pod support-bot-preflight-x1 ran out of memory (OOMKilled). The platform sets the pre-flight pod's CPU"),
    ({"conditions": [("Failed", "BackoffLimitExceeded")]}, _ended(203, "Internal error: boom"),
     "The pre-flight failed (pod support-bot-preflight-x1 exited 203): Internal error: boom. Delete Job support-bot-preflight"),
])
def test_a_preflight_that_crashed_is_preflight_failed_and_can_be_run_again(job_status, pod, text):
    status = _conds(_derive(_pf_job(job_status["conditions"], failed=1), [pod] if pod else []))
    assert status["Failed"][:2] == ("True", "PreflightFailed") and text in status["Failed"][2]
    assert status["DataValidated"][:2] == ("False", "PreflightFailed")


def test_preflight_off_says_so():
    off = PLATFORM.model_copy(update={"preflight_enabled": False})
    status = _conds(_derive(settings=off))
    assert status["DataValidated"][:2] == ("Unknown", "PreflightDisabled")
    assert status["Running"] == ("False", "Pending", "Creating the training Job.")


def test_an_invalid_spec_has_no_data_validated_condition():
    obs = ftj_status.Observed(1, validation_error="spec.dataset.train: required")
    assert "DataValidated" not in _conds(ftj_status.derive_status(obs, None, T0).to_dict())
