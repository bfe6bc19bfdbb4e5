"""Argo CD health checks (charts/kubetune/files/argocd/*.lua) executed by real Lua 5.1 (Argo CD's
gopher-lua speaks 5.1) against objects whose status comes from the operator's own status functions."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import pytest

from kubetune.api.conditions import FineTuneJobReason as Reason
from kubetune.api.sidecar import AdapterReport, SidecarStatus
from kubetune.api.finetunejob import FineTuneJobStatus
from kubetune.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from kubetune.api.validation import parse
from kubetune.api.preflight import PreflightReport, RecordError, SplitReport
from kubetune.status import finetunejob as ftj_status
from kubetune.status import preflight
from kubetune.status import modeldeployment as md_status

from .helm import CHART, ROOT

lua51 = pytest.importorskip("lupa.lua51", reason="pip install lupa (the dev extra)")

SCRIPTS = CHART / "files" / "argocd"
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)
SHA = "a" * 64


def health(script: str, obj: dict) -> dict:
    """Run a health script the way Argo CD does: global `obj`, the chunk returns {status, message}."""
    lua = lua51.LuaRuntime()
    for unsafe in ("os", "io", "require", "dofile", "loadfile"):  # not available in Argo CD's sandbox
        lua.execute(f"{unsafe} = nil")
    lua.globals().obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    result = lua.execute((SCRIPTS / script).read_text())
    out = dict(result)
    assert set(out) == {"status", "message"} and out["status"] in {"Healthy", "Progressing", "Degraded", "Suspended"}
    return out


# ------------------------------------------------------------------------------------ FineTuneJob


def ftj(status: dict | None, generation: int = 1) -> dict:
    if status is not None:
        FineTuneJobStatus.model_validate(status)  # the samples are real statuses
    obj = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
           "metadata": {"name": "support-bot", "namespace": "team-a", "generation": generation}, "spec": {}}
    return obj if status is None else {**obj, "status": status}


def job(conditions=(), suspend=False, **status):
    return {"metadata": {"name": "support-bot-train"}, "spec": {"suspend": suspend, "backoffLimit": 3},
            "status": {"conditions": [{"type": t, "status": "True", "reason": r, "lastTransitionTime": "2026-11-23T08:30:00Z"}
                                      for t, r in conditions], **status}}


def pod(state, phase="Running", reason=None):
    status = {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]}
    if reason:
        status["reason"] = reason
    return {"metadata": {"name": "support-bot-train-p1", "creationTimestamp": "2026-11-23T08:00:00Z"},
            "spec": {"containers": [{"name": "trainer", "image": "ghcr.io/kubetune/trainer:0.1.0"}]}, "status": status}


def derived(observed) -> dict:
    return ftj_status.derive_status(observed, None, T0).to_dict()


Observed = ftj_status.Observed
PASSED = PreflightReport(passed=True, train=SplitReport(examples=950, tokens=412_000)).text()
BAD_DATA = PreflightReport(passed=False, message="train.jsonl: 1 bad record.", error_count=1, errors=[
    RecordError.parse("train.jsonl:17: messages[2].role must be one of system, user, assistant")]).text()


def preflight_outcome(conditions=(), pods=()) -> preflight.Outcome:
    """Where a pre-flight Job with these Job conditions and pods stands (status.preflight reads it)."""
    pre = job(conditions)
    pre["metadata"] = {"name": "support-bot-preflight", "annotations": {"kubetune.io/spec-hash": "h"}}
    return preflight.outcome(pre, list(pods), "h", "s3://models/adapters/team-a/support-bot")
REPORT = json.dumps({"adapter": {"uri": "s3://models/adapters/team-a/support-bot", "manifestSha256": SHA, "type": "lora"}})
FTJ_CASES = {
    "not reconciled yet": (None, 1, "Progressing", "Waiting for the kubetune operator"),
    "job being created": (derived(Observed(1)), 1, "Progressing", "Pending: Creating the training Job."),
    "image pull stuck": (derived(Observed(1, job(active=1), [pod({"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}, "Pending")])),
                         1, "Progressing", "ImagePullFailed: Cannot pull trainer image ghcr.io/kubetune/trainer:0.1.0"),
    "training": ({**derived(Observed(1, job(active=1), [pod({"running": {}})])),
                  "progress": {"step": 120, "totalSteps": 400, "percent": 30}},
                 1, "Progressing", "Training on pod support-bot-train-p1. (30%, step 120)"),
    "suspended": (derived(Observed(1, job(suspend=True))), 1, "Suspended", "Suspended: training pods are stopped"),
    "succeeded": (derived(Observed(1, job([("Complete", "")], succeeded=1), [pod({"terminated": {"exitCode": 0, "message": REPORT}}, "Succeeded")],
                                   output_prefix="s3://models/adapters/team-a/support-bot")),
                  1, "Healthy", "Training finished; adapter published to s3://models/adapters/team-a/support-bot."),
    "trainer done, Job not yet Complete": (derived(Observed(1, job(), [pod({"terminated": {"exitCode": 0, "message": REPORT}}, "Succeeded")])),
                                           1, "Progressing", "Finishing: The trainer on pod support-bot-train-p1 finished"),
    "attempt failed, retry pod not yet created": (
        derived(Observed(1, job(failed=1), [pod({"terminated": {"exitCode": 203, "message": "Internal error: boom"}}, "Failed")])),
        1, "Progressing", "Restarting: Attempt 1 failed (InternalError)"),
    "out of memory": (derived(Observed(1, job([("Failed", "PodFailurePolicy")], failed=1),
                                       [pod({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}, "Failed")])),
                      1, "Degraded", "Pod support-bot-train-p1 was OOMKilled. The trainer ran out of memory. Try adapter.type qlora"),
    "cancelled": (derived(Observed(1, cancel=True)), 1, "Suspended", "Cancelled (spec.cancel)"),
    "pre-flight running": (derived(Observed(1, preflight=preflight_outcome(pods=[pod({"running": {}})]))), 1, "Progressing",
                           "Validating: Pre-flight on pod support-bot-train-p1: validating every record"),
    "pre-flight passed, training Job being created": (
        derived(Observed(1, preflight=preflight_outcome([("Complete", "")], [pod({"terminated": {"exitCode": 0, "message": PASSED}},
                                                                             "Succeeded")]))),
        1, "Progressing", "Pending: Pre-flight passed; creating the training Job."),
    "pre-flight found bad records": (
        derived(Observed(1, preflight=preflight_outcome([("Failed", "PodFailurePolicy")],
                                                        [pod({"terminated": {"exitCode": 1, "message": BAD_DATA}}, "Failed")]))),
        1, "Degraded", "train.jsonl: 1 bad record. train.jsonl:17: messages[2].role must be one of system, user, assistant"),
    "pre-flight ran out of memory": (
        derived(Observed(1, preflight=preflight_outcome([("Failed", "BackoffLimitExceeded")],
                                                        [pod({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}, "Failed")]))),
        1, "Degraded", "Pre-flight pod support-bot-train-p1 ran out of memory (OOMKilled)."),
    "invalid spec": (derived(Observed(3, validation_error="spec.dataset.train: required field is missing")),
                     3, "Degraded", "spec.dataset.train: required field is missing"),
    "succeeded, then spec edited": (derived(Observed(1, job([("Complete", "")], succeeded=1))), 2, "Progressing",
                                    "Waiting for the operator to act on generation 2"),
}


@pytest.mark.parametrize("case", FTJ_CASES)
def test_finetunejob_health(case):
    status, generation, expected, message = FTJ_CASES[case]
    got = health("finetunejob-health.lua", ftj(status, generation))
    assert got["status"] == expected
    assert got["message"].startswith(message), got["message"]


# -------------------------------------------------------------------------------- ModelDeployment

MD_SPEC = parse(ModelDeploymentSpec, {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "replicas": 2,
                                      "adapters": [{"name": "support-bot", "fineTuneJobRef": {"name": "support-bot"}},
                                                   {"name": "legal", "uri": "s3://models/adapters/legal"}]})
ENDPOINT = "http://support.team-a.svc:8000/v1"
SUPPORT = md_status.Resolved("support-bot", "fineTuneJob/support-bot", "Loading", "s3://models/adapters/team-a/support-bot", SHA)
LEGAL = md_status.Resolved("legal", "s3://models/adapters/legal", "Loading", "s3://models/adapters/legal")


def deployment(ready=2, replicas=2):
    return {"metadata": {"name": "support-vllm", "generation": 1},
            "spec": {"replicas": replicas},
            "status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas, "observedGeneration": 1}}


def ready_pod(name):
    return {"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def report(*states):
    """A sidecar /status report: (adapter name, state, manifest sha) for each adapter."""
    return SidecarStatus(generation=1, vllm_ready=True, adapters=[
        AdapterReport(name=n, uri=f"s3://models/{n}", state=s, manifest_sha256=sha, message="boom" if s == "Failed" else "")
        for n, s, sha in states])


def md_derived(resolved, dep=None, reports=None, validation_error=None, spec=MD_SPEC, generation=1):
    pods = [ready_pod(name) for name in (reports or {})]
    observed = md_status.ServingObserved(generation=generation, desired_generation=1, deployment=dep, pods=pods,
                                         reports=reports or {}, endpoint=ENDPOINT, selector="x=y",
                                         validation_error=validation_error)
    status = md_status.derive_status(observed, None if validation_error else spec, resolved, None, T0).to_dict()
    ModelDeploymentStatus.model_validate(status)
    return status


def md(status, generation=1):
    obj = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "support", "namespace": "team-a", "generation": generation}, "spec": {}}
    return obj if status is None else {**obj, "status": status}


BOTH_READY = {"p1": report(("support-bot", "Ready", SHA), ("legal", "Ready", None)),
              "p2": report(("support-bot", "Ready", SHA), ("legal", "Ready", None))}
WAITING = md_status.Resolved("support-bot", "fineTuneJob/support-bot", "WaitingForFineTuneJob",
                             message="FineTuneJob support-bot is training (30% done); the adapter is added automatically when it succeeds.")
REJECTED = md_status.Resolved("support-bot", "fineTuneJob/support-bot", "Rejected", message="adapter rank 64 exceeds spec.vllm.maxLoraRank 16: raise vllm.maxLoraRank to at least 64.")
MD_CASES = {
    "not reconciled yet": (None, 1, "Progressing", "Waiting for the kubetune operator"),
    "creating": (md_derived([WAITING, LEGAL]), 1, "Progressing", "Adapter support-bot is WaitingForFineTuneJob: FineTuneJob support-bot is training"),
    "adapter half-published on one replica": (
        md_derived([SUPPORT, LEGAL], deployment(), {"p1": BOTH_READY["p1"], "p2": report(("legal", "Ready", None))}),
        1, "Progressing", "Adapter support-bot is Loading: loaded on 1/2 replicas; waiting for pod p2"),
    "serving everything": (md_derived([SUPPORT, LEGAL], deployment(), BOTH_READY), 1, "Healthy",
                           "Serving hf://Qwen/Qwen2.5-0.5B-Instruct and 2 adapter(s) at http://support.team-a.svc:8000/v1. (adapters 2/2)"),
    "adapter rejected": (md_derived([REJECTED, LEGAL], deployment(), BOTH_READY), 1, "Degraded",
                         "Adapter support-bot Rejected: adapter rank 64 exceeds spec.vllm.maxLoraRank 16"),
    "adapter failed to load": (md_derived([SUPPORT, LEGAL], deployment(), {"p1": report(("support-bot", "Failed", SHA), ("legal", "Ready", None)),
                                                                            "p2": BOTH_READY["p2"]}),
                               1, "Degraded", "Adapter support-bot Failed: pod p1 Failed (boom), retrying"),
    "invalid spec": (md_derived([], validation_error="spec.adapters[0].name: 'Bot' must be lowercase", generation=2), 2, "Degraded",
                     "spec.adapters[0].name: 'Bot' must be lowercase"),
    "scaled to zero": (md_derived([], deployment(0, 0), spec=parse(ModelDeploymentSpec, {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "replicas": 0})),
                       1, "Suspended", "spec.replicas is 0."),
    "healthy, then spec edited": (md_derived([SUPPORT, LEGAL], deployment(), BOTH_READY), 2, "Progressing",
                                  "Waiting for the operator to act on generation 2"),
}


@pytest.mark.parametrize("case", MD_CASES)
def test_modeldeployment_health(case):
    status, generation, expected, message = MD_CASES[case]
    got = health("modeldeployment-health.lua", md(status, generation))
    assert got["status"] == expected
    assert got["message"].startswith(message), got["message"]


def test_never_healthy_while_an_adapter_is_loading():
    """Even a status whose conditions claim Ready must not be Healthy with an adapter half-published."""
    status = md_derived([SUPPORT, LEGAL], deployment(), BOTH_READY)
    status["adapters"][0] = {**status["adapters"][0], "state": "Loading", "message": "uploading"}
    assert health("modeldeployment-health.lua", md(status)) == {"status": "Progressing", "message": "Adapter support-bot is Loading: uploading"}


def test_terminal_reasons_are_the_apis():
    """The Ready=False reasons the Lua calls Degraded are the API's terminal reasons, spelled the same."""
    text = (SCRIPTS / "modeldeployment-health.lua").read_text()
    block = text[text.index("local terminal = {"):text.index("}", text.index("local terminal = {"))]
    assert set(re.findall(r"(\w+) = true", block)) == {
        Reason.VALIDATION_FAILED, Reason.USER_ERROR, Reason.OOM_KILLED, Reason.DEADLINE_EXCEEDED,
        Reason.BACKOFF_LIMIT_EXCEEDED, Reason.INTERNAL_ERROR}


def test_docs_ship_the_scripts_verbatim():
    """docs/argocd.md shows the argocd-cm entries; its Lua is the tested files, line for line."""
    doc = (ROOT / "docs" / "argocd.md").read_text()
    for kind, script in (("FineTuneJob", "finetunejob-health.lua"), ("ModelDeployment", "modeldeployment-health.lua")):
        key = f"resource.customizations.health.kubetune.io_{kind}: |\n"
        assert key in doc
        body = doc[doc.index(key) + len(key):]
        indented = "".join(f"    {line}\n" if line else "\n" for line in (SCRIPTS / script).read_text().splitlines())
        assert body.startswith(indented), f"docs/argocd.md: the {kind} script differs from {script}"


def _versioned(serving: dict, gate: dict | None, reports: dict) -> dict:
    """The status the operator derives for a versioned `bot` (kubetune.plan.modeldeployment.plan on real inputs)."""
    from kubetune.config import OperatorSettings
    from kubetune.plan.modeldeployment import plan

    entry = {"name": "bot", "versions": [{"name": "v1", "uri": "s3://m/v1"}, {"name": "v2", "uri": "s3://m/v2"}], "serving": serving}
    body = {"metadata": {"name": "support", "namespace": "team-a", "generation": 1},
            "spec": {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "replicas": 2,
                     "adapters": [{**entry, **({"gate": gate} if gate else {})}]}}
    pods = [ready_pod(name) for name in reports]
    planned = plan(body, OperatorSettings(serving_image="img"), {}, None, pods, reports, None)
    observed = md_status.ServingObserved(generation=1, desired_generation=planned.desired.generation, deployment=deployment(),
                                         pods=pods, reports=reports, endpoint=ENDPOINT, selector="x=y")
    status = md_status.derive_status(observed, planned.spec, planned.adapters, None, T0).to_dict()
    ModelDeploymentStatus.model_validate(status)
    return status


def _served(*entries: tuple[str, str, str | None]) -> SidecarStatus:
    return SidecarStatus(generation=1, vllm_ready=True, adapters=[
        AdapterReport(name=n, uri=uri, state="Ready", manifest_sha256=sha) for n, uri, sha in entries])


def test_gated_and_canarying_adapters_are_progressing_with_the_reason():
    both = {p: _served(("bot", "s3://m/v1", SHA), ("bot--v2", "s3://m/v2", "b" * 64)) for p in ("p1", "p2")}
    canary = _versioned({"version": "v1", "canary": {"version": "v2", "weight": 20}}, None, both)
    assert canary["adapters"][0]["state"] == "Ready" and canary["adapters"][0]["promotion"]["canary"]["ready"]
    assert health("modeldeployment-health.lua", md(canary)) == {
        "status": "Progressing", "message": "Adapter bot canarying version v2 at 20% beside version v1"}
    loading = _versioned({"version": "v1", "canary": {"version": "v2", "weight": 20}}, None,
                         {p: _served(("bot", "s3://m/v1", SHA)) for p in ("p1", "p2")})
    assert health("modeldeployment-health.lua", md(loading))["message"] == \
        "Adapter bot canarying version v2 at 20% beside version v1 (loading: 0/2 replicas)"
    # A trial that failed on pod p1 (the sidecar's verdict): the adapter is Gated, Progressing with the numbers.
    from kubetune.api.promotion import Gate, TrialReport

    gate = {"smokePrompts": [{"prompt": "Who are you?", "expect": "Zorbia"}]}
    failed = TrialReport(verdict="Failed", gate_digest=Gate.model_validate(gate).digest(),
                         message="gate failed: smoke prompts: 0/1 passed; 'Who are you?': answer does not match 'Zorbia'")
    reports = {"p1": SidecarStatus(generation=1, vllm_ready=True, adapters=[
                   AdapterReport(name="bot--v1--gate", uri="s3://m/v1", state="Ready", manifest_sha256=SHA, trial=failed)]),
               "p2": _served()}
    gated = _versioned({"version": "v1"}, gate, reports)
    got = health("modeldeployment-health.lua", md(gated))
    assert got["status"] == "Progressing" and got["message"].startswith(
        "Adapter bot is Gated: version v1: gate failed: smoke prompts: 0/1 passed"), got
