"""Pure functions: a FineTuneJob (as the API server returns it) -> OpenAI's fine_tuning.job, its events and
checkpoints. No I/O here (routes in jobs.py fetch, these translate).

Status (OpenAI's six words from the FineTuneJob's conditions, kubetune.api.conditions):
    Failed=True, reason Cancelled, or spec.cancel set (Cancelling)        cancelled
    Failed=True, any other reason                                         failed
    Succeeded=True                                                        succeeded
    Running=True                                                          running
    no conditions yet, or the pre-flight runs (reason Validating)         validating_files
    anything else (Pending, JobCreated, Suspended = paused, Kueue Queued) queued
OpenAI has no word for "paused": a paused (spec.suspend) job reads `queued`, and its events say it was paused.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from ..api import conditions as k
from ..api.conditions import FineTuneJobReason as Reason

LABEL_API = "kubetune.io/api"  # "openai" on FineTuneJobs the gateway created
ANNOTATION = "kubetune.io/openai"  # JSON: what the request asked for (model, files, suffix, metadata, hyperparameters)
JOB_ID = re.compile(r"^ftjob-[a-z0-9]{24}$")
TERMINAL = ("succeeded", "failed", "cancelled")
DEFAULT_BATCH = {"adapter": 8, "full": 4}  # Hyperparameters.batch_size's documented defaults


def result_file_id(job_id: str) -> str:
    """The id of a job's result file (gateway/results.py): it names the job."""
    return "file-result-" + job_id.removeprefix("ftjob-")


def has_result(ftj: dict[str, Any]) -> bool:
    """Whether the job succeeded and published: its fine-tuned model and its result file exist."""
    return openai_status(ftj) == "succeeded" and bool(((ftj.get("status") or {}).get("adapter") or {}).get("uri"))


def unix(value: str | None) -> int | None:
    if not value:
        return None
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())


def conditions(ftj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (ftj.get("status") or {}).get("conditions") or []}


def openai_status(ftj: dict[str, Any]) -> str:
    conds = conditions(ftj)
    failed, succeeded, running = conds.get(k.FAILED), conds.get(k.SUCCEEDED), conds.get(k.RUNNING)
    if failed and failed["status"] == k.TRUE:
        return "cancelled" if failed["reason"] == Reason.CANCELLED else "failed"
    if (ftj.get("spec") or {}).get("cancel"):
        return "cancelled"
    if succeeded and succeeded["status"] == k.TRUE:
        return "succeeded"
    if running and running["status"] == k.TRUE:
        return "running"
    if not conds or (running or {}).get("reason") == Reason.VALIDATING:
        return "validating_files"
    return "queued"


def request_of(ftj: dict[str, Any]) -> dict[str, Any]:
    return json.loads(((ftj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION) or "{}")


def fine_tuned_model(model: str, namespace: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's form, `ft:<base model>:<organization>:<suffix>:<job id>`; the organization is the tenant's
    namespace. The job id is the last field: job_of_model() reads it back (inference routing)."""
    return f"ft:{model}:{namespace}:{suffix or ''}:{job_id}"


def job_of_model(name: str) -> str | None:
    """The job id of a fine_tuned_model name, or None if it is not one."""
    parts = name.split(":")
    return parts[-1] if len(parts) == 5 and parts[0] == "ft" and JOB_ID.fullmatch(parts[-1]) else None


def _error(ftj: dict[str, Any], status: str) -> dict[str, Any] | None:
    if status != "failed":
        return None
    cond = conditions(ftj)[k.FAILED]
    data_problem = cond["reason"] in (Reason.VALIDATION_FAILED, Reason.USER_ERROR)
    return {"code": "invalid_training_file" if cond["reason"] == Reason.VALIDATION_FAILED else cond["reason"],
            "message": cond.get("message") or cond["reason"], "param": "training_file" if data_problem else None}


def spec_that_runs(ftj: dict[str, Any]) -> dict[str, Any]:
    """status.effectiveSpec (the spec with the platform's FineTuneTemplate applied, pinned when the job was first
    planned) once the operator wrote it, else the spec as created."""
    return (ftj.get("status") or {}).get("effectiveSpec") or ftj["spec"]


def hyperparameters(ftj: dict[str, Any]) -> dict[str, Any]:
    """What training uses (OpenAI returns resolved values, not "auto"): a template's defaults and fixed values
    included."""
    spec, asked = spec_that_runs(ftj), request_of(ftj).get("hyperparameters") or {}
    hp = spec.get("hyperparameters") or {}
    adapter = "full" if (spec.get("adapter") or {}).get("type") == "full" else "adapter"
    out = {"n_epochs": hp.get("epochs", 3), "batch_size": hp.get("batchSize") or DEFAULT_BATCH[adapter],
           "learning_rate_multiplier": asked.get("learning_rate_multiplier") if asked.get("learning_rate_multiplier")
           not in (None, "auto") else 1.0}
    if (spec.get("method") or {}).get("type") == "dpo":
        out["beta"] = float(((spec.get("method") or {}).get("dpo") or {}).get("beta", "0.1"))
    return out


def job_object(ftj: dict[str, Any]) -> dict[str, Any]:
    meta, st = ftj["metadata"], ftj.get("status") or {}
    asked = request_of(ftj)
    status = openai_status(ftj)
    progress = st.get("progress") or {}
    hp = hyperparameters(ftj)
    method_type = asked.get("method", "supervised")
    estimated = None
    if status == "running" and progress.get("etaSeconds") is not None and progress.get("updateTime"):
        estimated = unix(progress["updateTime"]) + int(progress["etaSeconds"])
    model = fine_tuned_model(asked["model"], meta["namespace"], asked.get("suffix"), meta["name"]) if has_result(ftj) else None
    return {
        "id": meta["name"], "object": "fine_tuning.job", "created_at": unix(meta.get("creationTimestamp")) or 0,
        "model": asked.get("model", ""), "organization_id": meta["namespace"], "status": status,
        "training_file": asked.get("training_file", ""), "validation_file": asked.get("validation_file"),
        "fine_tuned_model": model,
        "finished_at": unix(st.get("completionTime")) if status in TERMINAL else None,
        "trained_tokens": progress.get("trainedTokens"), "estimated_finish": estimated,
        "error": _error(ftj, status), "hyperparameters": {k_: v for k_, v in hp.items() if k_ != "beta"},
        "method": {"type": method_type, method_type: {"hyperparameters": hp}},
        "seed": (spec_that_runs(ftj).get("hyperparameters") or {}).get("seed", 42),
        "result_files": [result_file_id(meta["name"])] if model else [],
        "metadata": asked.get("metadata"), "user_provided_suffix": asked.get("suffix"), "integrations": [],
    }


# ------------------------------------------------------------------------------------------------ events

LEVELS = {"Normal": "info", "Warning": "warn"}
ERROR_REASONS = {r.value for r in (Reason.VALIDATION_FAILED, Reason.USER_ERROR, Reason.OOM_KILLED, Reason.DEADLINE_EXCEEDED,
                                   Reason.BACKOFF_LIMIT_EXCEEDED, Reason.INTERNAL_ERROR, Reason.PREFLIGHT_FAILED)}


def _event(id_: str, created: int, message: str, level: str = "info", type_: str = "message",
           data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": id_, "object": "fine_tuning.job.event", "created_at": created, "level": level, "message": message,
            "type": type_, "data": data or {}}


def job_events(ftj: dict[str, Any], kube_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every event of a job, newest first: its creation, the operator's Kubernetes Events on it (conditions
    changing: validating, queued, training, paused, failed, cancelled, completed), the checkpoints in its status,
    the latest progress figures, and the before/after evaluation."""
    meta, st = ftj["metadata"], ftj.get("status") or {}
    name, created = meta["name"], unix(meta.get("creationTimestamp")) or 0
    progress = st.get("progress") or {}
    updated = unix(progress.get("updateTime")) or created
    out = [_event(f"ftevent-{name}-created", created, f"Created fine-tuning job: {name}")]
    for ev in kube_events:
        when = unix(ev.get("lastTimestamp") or ev.get("eventTime") or ev.get("firstTimestamp")
                    or ev["metadata"].get("creationTimestamp")) or created
        level = "error" if ev.get("reason") in ERROR_REASONS else LEVELS.get(ev.get("type", "Normal"), "info")
        out.append(_event(f"ftevent-{ev['metadata']['uid']}", when, f"{ev.get('reason')}: {ev.get('message', '')}",
                          level, data={"reason": ev.get("reason")}))
    for ckpt in st.get("checkpoints") or []:  # their times are not kept: at most the last status update
        out.append(_event(f"ftevent-{name}-checkpoint-{ckpt['step']}", min(updated, unix(st.get("completionTime")) or updated),
                          f"Checkpoint saved at step {ckpt['step']}", data={"step": ckpt["step"]}))
    if progress.get("step"):
        figures = {"step": progress["step"], "total_steps": progress.get("totalSteps"), "train_loss": progress.get("loss"),
                   "valid_loss": progress.get("evalLoss"), "epoch": progress.get("epoch"),
                   "trained_tokens": progress.get("trainedTokens")}
        text = f"Step {progress['step']}/{progress.get('totalSteps') or '?'}: training loss={progress.get('loss')}"
        if progress.get("evalLoss") is not None:
            text += f", validation loss={progress['evalLoss']}"
        out.append(_event(f"ftevent-{name}-step-{progress['step']}", updated, text, type_="metrics",
                          data={k_: v for k_, v in figures.items() if v is not None}))
    evaluation = st.get("evaluation") or {}
    if evaluation.get("final"):
        base, final = (evaluation.get("baseline") or {}).get("evalLoss"), evaluation["final"].get("evalLoss")
        out.append(_event(f"ftevent-{name}-evaluation", unix(st.get("completionTime")) or updated,
                          f"Evaluation: validation loss {base} (base model) -> {final} (fine-tuned)", type_="metrics",
                          data={"baseline_valid_loss": base, "valid_loss": final}))
    for ev in out:  # nothing of a job happens before it exists (clocks differ: trainer pods, Job controller)
        ev["created_at"] = max(ev["created_at"], created)
    order = {ev["id"]: i for i, ev in enumerate(out)}
    return sorted(out, key=lambda ev: (ev["created_at"], order[ev["id"]]), reverse=True)


# ------------------------------------------------------------------------------------------- checkpoints

def checkpoint_metrics(step: int, log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI's checkpoint metrics from the trainer's log (trainer_state.json's log_history): the latest
    training and evaluation figures logged at or before `step`."""
    out: dict[str, Any] = {"step": float(step)}
    keys = {"loss": "train_loss", "mean_token_accuracy": "train_mean_token_accuracy", "eval_loss": "valid_loss",
            "eval_mean_token_accuracy": "valid_mean_token_accuracy"}
    for entry in log_history:
        if int(entry.get("step", 0)) > step:
            continue
        for src, dst in keys.items():
            if isinstance(entry.get(src), (int, float)):
                out[dst] = float(entry[src])
    return out


def checkpoint_object(ftj: dict[str, Any], step: int, log_history: list[dict[str, Any]]) -> dict[str, Any]:
    meta, st = ftj["metadata"], ftj.get("status") or {}
    asked = request_of(ftj)
    name = fine_tuned_model(asked.get("model", ""), meta["namespace"], asked.get("suffix"), meta["name"])
    when = unix((st.get("progress") or {}).get("updateTime")) or unix(meta.get("creationTimestamp")) or 0
    return {"id": f"ftckpt-{meta['name']}-{step}", "object": "fine_tuning.job.checkpoint", "created_at": when,
            "fine_tuned_model_checkpoint": f"{name}:ckpt-step-{step}", "fine_tuning_job_id": meta["name"],
            "metrics": checkpoint_metrics(step, log_history), "step_number": step}
