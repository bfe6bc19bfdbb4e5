"""FineTuneJob status from the observed training Job and Pods. Pure: no I/O, no clock reads."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..api import exit_codes
from ..api.conditions import DATA_VALIDATED, FAILED, FALSE, REGRESSED, RUNNING, SERVABLE, SUCCEEDED, SUSPENDED, TRUE, UNKNOWN
from ..api.conditions import FineTuneJobReason as Reason
from ..api.constants import ANNOTATION_USER_HOLD, LABEL_KUEUE_QUEUE
from ..api.finetunejob import Evaluation, FineTuneJobSpec, FineTuneJobStatus
from ..api.template_ref import AppliedTemplate
from ..api.termination import TerminationReport
from ..plan.finetunejob import ended
from . import preflight
from .conditions import Cond, find, merge_conditions
from .pods import by_age as _by_age
from .pods import stuck as _stuck
from .pods import terminated as _terminated
from .pods import trainer_status as _trainer_status
from .usage import gpu_usage

OOM_HINT = ("The trainer ran out of memory. Try adapter.type qlora, a smaller hyperparameters.batchSize "
            "(with more gradientAccumulationSteps), a shorter hyperparameters.maxLength, or more resources.memory / a larger GPU.")


@dataclass
class Observed:
    """What the operator sees of one FineTuneJob right now."""

    generation: int | None
    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    validation_error: str | None = None
    output_prefix: str | None = None
    adapter_type: str | None = None  # from the parsed spec (None when it does not parse)
    merged_model: bool = False
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # status.checkpoints, reported by the trainer
    cancel: bool = False  # spec.cancel
    preflight: preflight.Outcome | None = None  # where the pre-flight stands (None: pre-flight is off)
    effective_spec: FineTuneJobSpec | None = None  # what runs (plan/template.py), kept in status
    spec_hash: str | None = None  # the spec it was resolved from
    template: AppliedTemplate | None = None  # the FineTuneTemplate it was resolved with


@dataclass(frozen=True)
class Verdict:
    running: Cond
    succeeded: Cond
    failed: Cond
    suspended: Cond


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def termination_report(pod: dict[str, Any]) -> TerminationReport:
    """The trainer's termination report (kubetune.api.termination), from its container's terminated state."""
    return TerminationReport.parse((_terminated(pod) or {}).get("message"))


def _disruption(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The pod's DisruptionTarget condition (preemption, eviction, node drain), if Kubernetes set one."""
    return next((cond for cond in (pod.get("status") or {}).get("conditions") or []
                 if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True"), None)


def _failed_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Failed attempts, oldest first. A disrupted pod is not one: the Job's podFailurePolicy ignores it, so it
    does not count against spec.backoffLimit."""
    return [p for p in _by_age(pods) if ((_terminated(p) or {}).get("exitCode", 0) != 0 or p.get("status", {}).get("phase") == "Failed")
            and _disruption(p) is None]


def _preempted(pod: dict[str, Any]) -> bool:
    """Ended by SIGTERM after checkpointing (exit 143), or by a disruption."""
    ended = _terminated(pod) is not None or (pod.get("status") or {}).get("phase") == "Failed"
    return ended and ((_terminated(pod) or {}).get("exitCode") == exit_codes.PREEMPTED or _disruption(pod) is not None)


def _last_ended(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    ended = [p for p in _by_age(pods) if _terminated(p) is not None or (p.get("status") or {}).get("phase") in ("Failed", "Succeeded")]
    return ended[-1] if ended else None


def _preemption(pod: dict[str, Any], checkpoints: list[dict[str, Any]]) -> str:
    """'Pod X preempted, resuming from checkpoint N': N is the checkpoint the pod's trainer saved on SIGTERM
    (its termination message), else the newest one it reported to status.checkpoints."""
    why = _disruption(pod)
    cause = f" ({why.get('reason')})" if why and why.get('reason') else ""
    said = re.search(exit_codes.PREEMPTED_CHECKPOINT_RE, termination_report(pod).message or "")
    steps = [int(said.group(1))] if said else [
        int(cp["step"]) for cp in checkpoints if isinstance(cp, dict) and isinstance(cp.get("step"), int)]
    resume = f"resuming from checkpoint {steps[-1]}" if steps else "restarting from the beginning (no checkpoint was saved yet)"
    counted = ("" if why else " Without a disruption condition this counts against spec.backoffLimit.")
    return f"Pod {pod['metadata']['name']} preempted{cause}, {resume}.{counted}"


def _restarting(obs: Observed, pods: list[dict[str, Any]], preempted: Callable[[str], str],
                failed: Callable[[int, str, str], str]) -> str | None:
    """The message of a restart, worded by the caller: preempted(what _preemption says) when the last of the
    ended `pods` was preempted, else failed(attempts failed so far, reason, message of the last) when an
    attempt failed; None when neither."""
    last = _last_ended(pods)
    if last is not None and _preempted(last):
        return preempted(_preemption(last, obs.checkpoints))
    earlier = _failed_pods(obs.pods)
    if earlier:
        return failed(len(earlier), *_describe_failure(earlier[-1]))
    return None


def _describe_failure(pod: dict[str, Any] | None) -> tuple[str, str]:
    """(reason, message) for the trainer's failed pod."""
    if pod is None:
        return Reason.BACKOFF_LIMIT_EXCEEDED, "The training pod failed and no pod is left to inspect."
    term = _terminated(pod) or {}
    name = pod["metadata"]["name"]
    said = termination_report(pod).message or ""
    code = term.get("exitCode")
    if term.get("reason") == "OOMKilled" or (pod.get("status") or {}).get("reason") == "OOMKilled":
        return Reason.OOM_KILLED, f"Pod {name} was OOMKilled. {OOM_HINT}"
    if code == exit_codes.USER_ERROR:
        return Reason.USER_ERROR, said or f"The trainer rejected its input (pod {name} exited {code})."
    if code == exit_codes.INTERNAL_ERROR:
        return Reason.INTERNAL_ERROR, said or f"The trainer hit an internal error (pod {name} exited {code})."
    detail = f" {said}" if said else ""
    pod_reason = (pod.get("status") or {}).get("reason") or term.get("reason") or "Error"
    return Reason.BACKOFF_LIMIT_EXCEEDED, f"Pod {name} failed ({pod_reason}, exit code {code}).{detail}"


def job_finished(job: dict[str, Any]) -> bool:
    """The Job reached a terminal condition (Complete or Failed, or their *Target/SuccessCriteriaMet forerunners)."""
    return any(_job_condition(job, t) for t in ("Complete", "SuccessCriteriaMet", "Failed", "FailureTarget"))


def cancel_complete(job: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """A cancelled Job may be removed: it is suspended and none of its pods still runs (the trainer has
    checkpointed and exited, or never started)."""
    if not (job.get("spec") or {}).get("suspend") or (job.get("status") or {}).get("active"):
        return False
    return not any((p.get("status") or {}).get("phase") in ("Pending", "Running") for p in pods)


def _was_cancelled(previous: dict[str, Any]) -> bool:
    return any(c.get("type") == FAILED and c.get("status") == TRUE and c.get("reason") == Reason.CANCELLED
               for c in previous.get("conditions") or [])


def _running_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pods whose trainer runs and that are not being deleted, oldest first."""
    return [pod for pod in _by_age(pods)
            if "running" in (_trainer_status(pod).get("state") or {}) and not pod["metadata"].get("deletionTimestamp")]


def _verdict(obs: Observed, previous: dict[str, Any]) -> Verdict:
    def v(running: tuple[str, str, str], succeeded: tuple[str, str, str], failed: tuple[str, str, str],
          suspended: tuple[str, str, str]) -> Verdict:
        return Verdict(Cond(RUNNING, *running), Cond(SUCCEEDED, *succeeded), Cond(FAILED, *failed), Cond(SUSPENDED, *suspended))

    not_suspended = (FALSE, Reason.NOT_SUSPENDED, "")
    no_failure = (FALSE, Reason.NO_FAILURE, "")
    if obs.validation_error:
        failed = (TRUE, Reason.VALIDATION_FAILED, obs.validation_error)
        return v((FALSE, Reason.VALIDATION_FAILED, ""), (FALSE, Reason.VALIDATION_FAILED, obs.validation_error), failed, not_suspended)
    job = obs.job
    if job is None and (obs.cancel or _was_cancelled(previous)):
        msg = ("Cancelled (spec.cancel): training stopped after its last checkpoint and the training Job was removed. "
               "Status, checkpoints and metrics are kept." if previous.get("jobName") else
               "Cancelled (spec.cancel) before training started.")
        cancelled = (FALSE, Reason.CANCELLED, msg)
        return v(cancelled, cancelled, (TRUE, Reason.CANCELLED, msg), not_suspended)
    if job is not None and obs.cancel and not job_finished(job):
        msg = "Cancelling (spec.cancel): the trainer checkpoints and stops, then the training Job is removed."
        return v((FALSE, Reason.CANCELLING, msg), (UNKNOWN, Reason.CANCELLING, msg), no_failure, not_suspended)
    if job is None and previous.get("jobName") and ended(previous):
        # The finished Job was removed (a TTL, a user): the run's outcome stays (plan.finetunejob does not rerun it).
        kept = {cond["type"]: (cond["status"], cond["reason"], cond.get("message", "")) for cond in previous["conditions"]}
        return v(kept[RUNNING], kept[SUCCEEDED], kept[FAILED], kept.get(SUSPENDED, not_suspended))
    pre = obs.preflight
    if job is None and pre is not None and pre.state == preflight.State.FAILED:
        failed = (TRUE, pre.reason, pre.message)
        return v((FALSE, pre.reason, pre.message), (FALSE, pre.reason, pre.message), failed, not_suspended)
    if job is None and pre is not None and pre.state != preflight.State.PASSED:
        return v((FALSE, pre.reason, pre.message), (UNKNOWN, pre.reason, pre.message), no_failure, not_suspended)
    if job is None:
        msg = "Pre-flight passed; creating the training Job." if pre is not None else "Creating the training Job."
        return v((FALSE, Reason.PENDING, msg), (UNKNOWN, Reason.PENDING, msg), no_failure, not_suspended)
    ignored = " spec.cancel has no effect: the job had already finished." if obs.cancel else ""
    if _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet"):
        msg = f"Training finished; adapter published to {obs.output_prefix}." if obs.output_prefix else "Training finished."
        msg += ignored
        return v((FALSE, Reason.COMPLETED, msg), (TRUE, Reason.COMPLETED, msg), no_failure, not_suspended)
    failed_cond = _job_condition(job, "Failed") or _job_condition(job, "FailureTarget")
    if failed_cond:
        job_reason = failed_cond.get("reason", "")
        if job_reason == "DeadlineExceeded":
            reason, msg = Reason.DEADLINE_EXCEEDED, ("Training ran longer than spec.activeDeadlineSeconds "
                                                     f"({job['spec'].get('activeDeadlineSeconds')} s) and was stopped.")
        else:
            failed_pods = _failed_pods(obs.pods)
            if failed_pods:
                reason, msg = _describe_failure(failed_pods[-1])
            elif job_reason == "PodFailurePolicy":  # the pod's own event has not arrived yet
                reason, msg = Reason.USER_ERROR, failed_cond.get("message") or "The trainer rejected its input (exit code 1)."
            else:
                reason, msg = _describe_failure(None)
            if job_reason == "BackoffLimitExceeded" and reason not in (Reason.OOM_KILLED, Reason.USER_ERROR):
                reason = Reason.BACKOFF_LIMIT_EXCEEDED
                msg = f"Gave up after {job['spec'].get('backoffLimit', 0) + 1} attempt(s). Last: {msg}"
        msg += ignored
        return v((FALSE, reason, msg), (FALSE, reason, msg), (TRUE, reason, msg), not_suspended)
    meta = job.get("metadata") or {}
    queue = (meta.get("labels") or {}).get(LABEL_KUEUE_QUEUE)
    held = (meta.get("annotations") or {}).get(ANNOTATION_USER_HOLD) == "true"
    if job["spec"].get("suspend") and queue and not held:  # Kueue's suspension, not the user's
        msg = (f"Queued in Kueue LocalQueue {queue}: the Job waits, suspended, until Kueue admits it when the queue "
               "has quota; training then starts (or resumes from its last checkpoint after an eviction).")
        return v((FALSE, Reason.QUEUED, msg), (UNKNOWN, Reason.QUEUED, msg), no_failure, (FALSE, Reason.QUEUED, msg))
    if job["spec"].get("suspend"):
        msg = "Suspended: training pods are stopped; set spec.suspend=false to resume from the last checkpoint."
        if queue:
            msg += f" It then waits in Kueue LocalQueue {queue} until Kueue admits it again."
        if job_reason := (_job_condition(job, "Suspended") or {}).get("reason"):
            msg = f"{msg} ({job_reason})"
        return v((FALSE, Reason.SUSPENDED, msg), (UNKNOWN, Reason.SUSPENDED, msg), no_failure, (TRUE, Reason.SUSPENDED, msg))
    active = [p for p in obs.pods if (p.get("status") or {}).get("phase") in ("Pending", "Running")]
    stuck = _stuck(active)
    if stuck:
        return v((FALSE, *stuck), (UNKNOWN, *stuck), no_failure, not_suspended)
    running = _running_pods(obs.pods)
    if running:
        pod = running[-1]
        if (why := _disruption(pod)) is not None:
            msg = f"Pod {pod['metadata']['name']} is being preempted ({why.get('reason', 'DisruptionTarget')}): saving a checkpoint."
            return v((TRUE, Reason.RESTARTING, msg), (UNKNOWN, Reason.RESTARTING, msg), no_failure, not_suspended)
        name = pod["metadata"]["name"]
        msg = _restarting(obs, [p for p in obs.pods if p not in running],
                          lambda preemption: f"Training on pod {name}. {preemption}",
                          lambda n, reason, said: f"Training on pod {name}, resumed after attempt {n} failed ({reason}): {said}")
        if msg is not None:
            return v((TRUE, Reason.RESTARTING, msg), (UNKNOWN, Reason.TRAINING, msg), no_failure, not_suspended)
        nodes = int(job["spec"].get("completions") or 1)
        if nodes > 1:  # a multi-node run: say how many of its pods train
            msg = f"Training on {len(running)} of {nodes} pods: {', '.join(sorted(p['metadata']['name'] for p in running))}."
        else:
            msg = f"Training on pod {pod['metadata']['name']}."
        return v((TRUE, Reason.TRAINING, msg), (UNKNOWN, Reason.TRAINING, msg), no_failure, not_suspended)
    if not active:  # between pods: the last one ended, the Job controller has not acted on it yet
        done = [p for p in _by_age(obs.pods) if (_terminated(p) or {}).get("exitCode") == 0]
        if done:
            msg = f"The trainer on pod {done[-1]['metadata']['name']} finished; waiting for the Job to complete."
            return v((FALSE, Reason.FINISHING, msg), (UNKNOWN, Reason.FINISHING, msg), no_failure, not_suspended)
        msg = _restarting(obs, obs.pods, lambda preemption: f"{preemption} Waiting for the Job to start the next pod.",
                          lambda n, reason, said: f"Attempt {n} failed ({reason}): {said} Waiting for the Job to start the next pod "
                                                  f"(spec.backoffLimit {job['spec'].get('backoffLimit', 0)}).")
        if msg is not None:
            return v((FALSE, Reason.RESTARTING, msg), (UNKNOWN, Reason.RESTARTING, msg), no_failure, not_suspended)
    msg = "Waiting for the training pod to start."
    if active:
        waiting = (_trainer_status(active[-1]).get("state") or {}).get("waiting") or {}
        msg = f"Waiting for pod {active[-1]['metadata']['name']} to start ({waiting.get('reason', 'Pending')})."
    return v((FALSE, Reason.PENDING, msg), (UNKNOWN, Reason.PENDING, msg), no_failure, not_suspended)


DORA_NOT_SERVABLE = ("DoRA adapters train, but vLLM cannot serve them: a ModelDeployment will reject this adapter. "
                     "Set spec.output.mergedModel: true to also publish the base model merged with it, which a "
                     "ModelDeployment serves as its baseModel.")
DORA_MERGED = ("vLLM cannot serve the DoRA adapter itself; the merged model this job also publishes "
               "(spec.output.mergedModel) is served as a ModelDeployment's baseModel.")


def _servable(obs: Observed) -> Cond | None:
    """Said from the moment a DoRA job is created, not first when a ModelDeployment rejects its adapter."""
    if obs.adapter_type != "dora":
        return None
    if obs.merged_model:
        return Cond(SERVABLE, TRUE, Reason.MERGED_MODEL_SERVABLE, DORA_MERGED)
    return Cond(SERVABLE, FALSE, Reason.DORA_NOT_SERVABLE, DORA_NOT_SERVABLE)


PREFLIGHT_OFF = "Pre-flight is off on this platform: the trainer validates the data once the training Job has started."


def _data_validated(obs: Observed, previous: dict[str, Any]) -> Cond | None:
    """DataValidated: the pre-flight's verdict on the current spec until the training Job exists; after that what
    it said when training started (its pre-flight for an edited spec, which is ignored, does not run)."""
    if obs.validation_error:
        return None
    pre = obs.preflight
    if obs.job is None and not (obs.cancel or _was_cancelled(previous)) and not (previous.get("jobName") and ended(previous)):
        return pre.condition(DATA_VALIDATED) if pre is not None else Cond(DATA_VALIDATED, UNKNOWN, Reason.PREFLIGHT_DISABLED, PREFLIGHT_OFF)
    passed = pre is not None and pre.state == preflight.State.PASSED
    if passed and pre.report is not None:
        return pre.condition(DATA_VALIDATED)
    if (before := find(previous.get("conditions"), DATA_VALIDATED)) is not None:
        return Cond(DATA_VALIDATED, before["status"], before["reason"], before.get("message", ""))
    if passed:
        return pre.condition(DATA_VALIDATED)
    if obs.job is None:  # cancelled before the pre-flight said anything
        return Cond(DATA_VALIDATED, UNKNOWN, Reason.CANCELLED, "Cancelled before the pre-flight finished.")
    return Cond(DATA_VALIDATED, UNKNOWN, Reason.PREFLIGHT_DISABLED, "No pre-flight ran for this job: the trainer validated the data itself.")


def derive_status(obs: Observed, previous: dict[str, Any] | None, now: datetime | None = None) -> FineTuneJobStatus:
    """The operator-owned part of status (the trainer owns progress/evaluation/checkpoints). ``previous`` is the
    status as stored (its wire form); serialize the result with ``to_dict()`` to write it."""
    previous = previous or {}
    verdict = _verdict(obs, previous)
    servable = _servable(obs)
    data = _data_validated(obs, previous)
    desired = [verdict.running, verdict.succeeded, verdict.failed, verdict.suspended, *([servable] if servable else []),
               *([data] if data else [])]
    status = FineTuneJobStatus(observed_generation=obs.generation,
                               conditions=merge_conditions(previous.get("conditions"), desired, obs.generation, now))
    if obs.effective_spec is not None:
        status.effective_spec, status.spec_hash = obs.effective_spec.to_dict(), obs.spec_hash
        status.template = obs.template
    if obs.preflight is not None and obs.preflight.job_name is not None:
        status.preflight_job_name = obs.preflight.job_name
    if obs.preflight is not None and obs.preflight.report is not None:
        status.data = preflight.figures(obs.preflight.report, preflight.report_uri(obs.output_prefix))
    job = obs.job
    if job is not None:
        status.job_name = job["metadata"]["name"]
        job_status = job.get("status") or {}
        status.start_time = job_status.get("startTime")
        attempts = sum(int(job_status.get(key) or 0) for key in ("active", "succeeded", "failed"))
        status.attempts = attempts or None
        if verdict.succeeded.status != UNKNOWN:
            status.completion_time = job_status.get("completionTime") or next(
                (c.get("lastTransitionTime") for c in job_status.get("conditions") or [] if c.get("status") == "True"
                 and c.get("type") in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget")), None)
    usage = gpu_usage(obs.pods, previous)
    status.gpu_seconds, status.gpu_counted_pods = usage.gpu_seconds, usage.counted_pods if usage.gpu_seconds is not None else None
    if verdict.failed.reason == Reason.CANCELLED and status.completion_time is None:
        failed = next((c for c in status.conditions if c.type == FAILED), None)
        status.completion_time = failed.last_transition_time if failed else None
    if verdict.succeeded.status == TRUE:
        winner = next((p for p in reversed(_by_age(obs.pods)) if (_terminated(p) or {}).get("exitCode") == 0), None)
        report = termination_report(winner) if winner else TerminationReport()
        status.adapter = report.adapter
        status.evaluation = report.evaluation
        regressed = _regressed(status.evaluation or Evaluation.model_validate(previous.get("evaluation") or {}))
        if regressed is not None:
            status.conditions = merge_conditions(previous.get("conditions"), [*desired, regressed], obs.generation, now)
    return status


def _regressed(evaluation: Evaluation) -> Cond | None:
    """Regressed, once the job succeeded with a regression set (spec.evaluation.regressionSet): True when a metric of
    it dropped by more than maxRegression from the base model to the result. From the termination report, else from
    the status.evaluation written when the job succeeded (the pod may be gone since)."""
    result = evaluation.regression
    if result is None:
        return None
    if result.regressed:
        return Cond(REGRESSED, TRUE, Reason.REGRESSION_EXCEEDED,
                    f"The regression set ({result.prompts} prompts) dropped by more than maxRegression "
                    f"{result.max_regression}: {'; '.join(result.regressed)}.")
    return Cond(REGRESSED, FALSE, Reason.NO_REGRESSION,
                f"Every metric of the regression set ({result.prompts} prompts) stayed within maxRegression "
                f"{result.max_regression} of the base model.")
