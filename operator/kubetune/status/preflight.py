"""The pre-flight's outcome, from its observed Job and Pods and the trainer's report. Pure: no I/O, no clock reads.

Read by plan.finetunejob (the training Job is created only once the pre-flight passed for the current spec) and by
status.finetunejob (condition DataValidated, status.data, and Running/Failed while no training Job exists).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..api.constants import ANNOTATION_SPEC_HASH
from ..api.conditions import FALSE, TRUE, UNKNOWN
from ..api.conditions import FineTuneJobReason as Reason
from ..api.finetunejob import DataFigures, SplitFigures
from ..api.preflight import PREFLIGHT_DIR, REPORT_FILE, PreflightReport, SplitReport
from ..api.exit_codes import USER_ERROR
from .conditions import Cond
from .pods import by_age, stuck, terminated, trainer_status

MAX_ERRORS_LISTED = 10  # record errors quoted in the condition message; all of them are in the stored report
PLATFORM_HINT = "The platform sets the pre-flight pod's CPU, memory and deadline (chart values platform.preflight)."


class State(StrEnum):
    ABSENT = "Absent"  # no pre-flight Job: it is to be created
    STALE = "Stale"  # a pre-flight Job of an older spec (or being deleted): it is to be replaced
    RUNNING = "Running"
    PASSED = "Passed"
    FAILED = "Failed"


@dataclass(frozen=True)
class Outcome:
    state: State
    reason: str
    message: str
    report: PreflightReport | None = None
    job_name: str | None = None

    def condition(self, data_validated: str) -> Cond:
        """The DataValidated condition this outcome stands for."""
        status = TRUE if self.state == State.PASSED else FALSE if self.state == State.FAILED else UNKNOWN
        return Cond(data_validated, status, self.reason, self.message)


def _finished(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((cond for cond in (job.get("status") or {}).get("conditions") or []
                 if cond.get("type") == type_ and cond.get("status") == "True"), None)


def _gib(size: int | None) -> str | None:
    return None if size is None else f"{size / 2**30:.1f}Gi"


def _split(split: SplitReport | None) -> SplitFigures | None:
    if split is None:
        return None
    return SplitFigures(examples=split.examples, tokens=split.tokens, truncated=split.truncated, invalid=split.invalid)


def report_uri(output_prefix: str | None) -> str | None:
    return f"{output_prefix.rstrip('/')}/{PREFLIGHT_DIR}/{REPORT_FILE}" if output_prefix else None


def figures(report: PreflightReport, uri: str | None) -> DataFigures:
    """status.data from the report."""
    peak = report.memory.peak_bytes if report.memory is not None else None
    return DataFigures(format=report.format, max_length=report.max_length, train=_split(report.train),
                       validation=_split(report.validation), planned_steps=report.planned_steps,
                       estimated_training_tokens=report.estimated_training_tokens, estimated_peak_gpu_memory=_gib(peak),
                       gpu_memory=_gib(report.gpu_memory_bytes), fits=report.fits, errors=report.error_count, report_uri=uri)


def summary(report: PreflightReport | None) -> str:
    """DataValidated=True's message: the figures a user checks before the GPUs are taken."""
    if report is None:
        return "Pre-flight passed."
    parts = []
    if report.train is not None:
        part = f"{report.train.examples} training examples ({report.train.tokens} tokens"
        if report.train.truncated:
            part += f", {report.train.truncated} longer than maxLength {report.max_length} are truncated"
        parts.append(part + ")")
    if report.validation is not None:
        parts.append(f"{report.validation.examples} held-out examples")
    if report.planned_steps is not None:
        parts.append(f"{report.planned_steps} steps" + (f", about {report.estimated_training_tokens} training tokens"
                                                        if report.estimated_training_tokens is not None else ""))
    if report.memory is not None:
        budget = f" of {_gib(report.gpu_memory_bytes)} per GPU" if report.gpu_memory_bytes else " (GPU memory not checked: no gpuMemory known)"
        parts.append(f"estimated peak GPU memory {_gib(report.memory.peak_bytes)}{budget}")
    text = "Pre-flight passed: " + "; ".join(parts) + "." if parts else "Pre-flight passed."
    return " ".join([text, *report.warnings]) if report.warnings else text


def failure_text(report: PreflightReport, uri: str | None) -> str:
    """ValidationFailed's message: the trainer's verdict, then the first bad records (file:line: field: problem)."""
    text = report.message or "The pre-flight rejected the job."
    listed = [e.text() for e in report.errors[:MAX_ERRORS_LISTED] if e.text() not in text]
    if listed:
        text += " " + " ".join(f"{line};" for line in listed).rstrip(";") + "."
    more = report.error_count - min(len(report.errors), MAX_ERRORS_LISTED)
    if more > 0:
        text += f" {more} more bad record(s)" + (f": all in {uri}." if uri else ".")
    return text


def _failed(job: dict[str, Any], pods: list[dict[str, Any]], uri: str | None) -> Outcome:
    name = job["metadata"]["name"]
    cond = _finished(job, "Failed") or _finished(job, "FailureTarget") or {}
    if cond.get("reason") == "DeadlineExceeded":
        return Outcome(State.FAILED, Reason.PREFLIGHT_FAILED,
                       f"The pre-flight ran longer than {job['spec'].get('activeDeadlineSeconds')} s and was stopped. "
                       f"{PLATFORM_HINT} Delete Job {name} to run it again.", job_name=name)
    ended = [p for p in by_age(pods) if (terminated(p) or {}).get("exitCode", 0) != 0]
    last = ended[-1] if ended else None
    term = (terminated(last) or {}) if last is not None else {}
    if last is not None and "OOMKilled" in (term.get("reason"), (last.get("status") or {}).get("reason")):
        return Outcome(State.FAILED, Reason.PREFLIGHT_FAILED,
                       f"Pre-flight pod {last['metadata']['name']} ran out of memory (OOMKilled). {PLATFORM_HINT} "
                       f"Delete Job {name} to run it again.", job_name=name)
    report = PreflightReport.parse(term.get("message")) if last is not None else None
    if term.get("exitCode") == USER_ERROR or (last is None and cond.get("reason") == "PodFailurePolicy"):
        report = report or PreflightReport(passed=False, message=cond.get("message") or "The pre-flight rejected the job.")
        return Outcome(State.FAILED, Reason.VALIDATION_FAILED, failure_text(report, uri), report, name)
    said = f": {report.message}" if report is not None and report.message else ""
    who = f"pod {last['metadata']['name']} exited {term.get('exitCode')}" if last is not None else cond.get("reason", "failed")
    return Outcome(State.FAILED, Reason.PREFLIGHT_FAILED,
                   f"The pre-flight failed ({who}){said}. Delete Job {name} to run it again.", report, name)


def outcome(job: dict[str, Any] | None, pods: list[dict[str, Any]], spec_hash: str, output_prefix: str | None) -> Outcome:
    """Where the pre-flight of the current spec (`spec_hash`) stands. `pods`: the pre-flight Job's pods."""
    if job is None:
        return Outcome(State.ABSENT, Reason.VALIDATING, "Creating the pre-flight Job (CPU only: no GPU is requested yet).")
    name = job["metadata"]["name"]
    if job["metadata"].get("deletionTimestamp") or (job["metadata"].get("annotations") or {}).get(ANNOTATION_SPEC_HASH) != spec_hash:
        return Outcome(State.STALE, Reason.VALIDATING, "The spec changed: the pre-flight runs again.", job_name=name)
    uri = report_uri(output_prefix)
    if _finished(job, "Complete") or _finished(job, "SuccessCriteriaMet"):
        winner = next((p for p in reversed(by_age(pods)) if (terminated(p) or {}).get("exitCode") == 0), None)
        said = ((terminated(winner) or {}).get("message") or "").strip() if winner is not None else ""
        # exit 0 is a pass (kubetune.api.preflight); only a report that says otherwise overrides it
        report = PreflightReport.parse(said) if said.startswith("{") else None
        if report is not None and not report.passed:
            return Outcome(State.FAILED, Reason.VALIDATION_FAILED, failure_text(report, uri), report, name)
        return Outcome(State.PASSED, Reason.VALIDATED, summary(report), report, name)
    if _finished(job, "Failed") or _finished(job, "FailureTarget"):
        return _failed(job, pods, uri)
    active = [p for p in pods if (p.get("status") or {}).get("phase") in ("Pending", "Running")]
    if (stuck_pod := stuck(active, PLATFORM_HINT)) is not None:
        return Outcome(State.RUNNING, stuck_pod[0], f"Pre-flight: {stuck_pod[1]}", job_name=name)
    running = [p for p in by_age(active) if "running" in (trainer_status(p).get("state") or {})]
    where = f" on pod {running[-1]['metadata']['name']}" if running else ""
    return Outcome(State.RUNNING, Reason.VALIDATING,
                   f"Pre-flight{where}: validating every record, counting tokens and estimating GPU memory "
                   "(CPU only: no GPU is requested until it passes).", job_name=name)
