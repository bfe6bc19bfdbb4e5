"""FineTuneJob plan: the spec with platform defaults, and what may happen to its pre-flight and training Jobs.
Pure: no I/O.

A Job is created at most once per run of a FineTuneJob: only while none exists and the FineTuneJob has
not ended (cancelled, succeeded or failed). A Job deleted by hand before the end is created again (it
resumes from its last checkpoint); one deleted after the end is not (that would train again).

With pre-flight on (the platform's setting, default on) the training Job is created only once the CPU-only
pre-flight Job of the current spec has passed (status.preflight). Before that: the pre-flight Job is created
if missing, replaced (deleted, then created on the next pass) if it was built from an older spec, and deleted
on spec.cancel. A failed pre-flight does not end the job: a spec change or deleting the pre-flight Job runs it
again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api.conditions import FAILED, SUCCEEDED, TRUE
from ..api.conditions import FineTuneJobReason as Reason
from ..api.finetunejob import FineTuneJobSpec
from ..api.storage_layout import job_prefix
from ..api.template_ref import AppliedTemplate
from ..builders.finetunejob import SPEC_HASH_ANNOTATION, spec_hash
from ..config import OperatorSettings
from ..status import preflight
from . import template
from ..status.conditions import find, is_true

# Failed=True reasons that do not end a FineTuneJob: an invalid spec, a failed pre-flight (fix and it runs again).
NOT_FINAL = (Reason.VALIDATION_FAILED, Reason.PREFLIGHT_FAILED)


@dataclass(frozen=True)
class TrainingPlan:
    """What one reconcile of a FineTuneJob builds."""

    resolved: FineTuneJobSpec  # with the platform defaults filled in
    create_job: bool  # no Job exists and the FineTuneJob has not ended
    spec_change_ignored: bool  # a Job of an older spec exists: it (and its trainer config) keep that spec
    preflight: preflight.Outcome | None = None  # None: pre-flight is off on this platform
    create_preflight: bool = False  # no pre-flight Job exists (and no training Job), the job has not ended
    delete_preflight: bool = False  # the pre-flight Job is of an older spec, or the job was cancelled before training
    source_hash: str = ""  # status.specHash: the spec `resolved` came from (plan/template.py)
    template: AppliedTemplate | None = None  # the FineTuneTemplate `resolved` was resolved with


def ended(status: dict[str, Any]) -> bool:
    """Succeeded, or Failed for good (cancelled, or a failed run; not an invalid spec or a failed pre-flight, which
    can still be fixed)."""
    conditions = status.get("conditions")
    failed = find(conditions, FAILED) or {}
    return is_true(conditions, SUCCEEDED) or (failed.get("status") == TRUE and failed.get("reason") not in NOT_FINAL)


def plan(body: dict[str, Any], settings: OperatorSettings, job: dict[str, Any] | None, status: dict[str, Any],
         preflight_job: dict[str, Any] | None = None, preflight_pods: list[dict[str, Any]] | None = None,
         templates: list[dict[str, Any]] | None = None) -> TrainingPlan:
    """(spec, observed) -> TrainingPlan. `job`: the live training Job or None; `status`: the FineTuneJob's latest
    status (what this operator last wrote); `preflight_job`/`preflight_pods`: the live pre-flight Job and its pods;
    `templates`: the FineTuneTemplates read for this pass (None: not read; plan/template.py says when they are).
    Raises SpecError for an invalid spec."""
    meta = body["metadata"]
    eff = template.effective(body, settings, status, job is not None, ended(status), templates)
    resolved, pin = eff.spec, {"source_hash": eff.source_hash, "template": eff.template}
    current = spec_hash(resolved)
    outcome = preflight.outcome(preflight_job, preflight_pods or [], current,
                                job_prefix(resolved.output.uri or "", meta["namespace"], meta["name"])) \
        if settings.preflight_enabled else None
    if job is not None:
        live_hash = (job["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        return TrainingPlan(resolved, create_job=False, spec_change_ignored=live_hash != current or eff.stale,
                            preflight=outcome, **pin)
    if resolved.cancel or ended(status):
        running = outcome is not None and outcome.state in (preflight.State.RUNNING, preflight.State.STALE)
        return TrainingPlan(resolved, create_job=False, spec_change_ignored=False, preflight=outcome,
                            delete_preflight=resolved.cancel and running and not _deleting(preflight_job), **pin)
    if outcome is None:
        return TrainingPlan(resolved, create_job=True, spec_change_ignored=False, **pin)
    return TrainingPlan(resolved, create_job=outcome.state == preflight.State.PASSED, spec_change_ignored=False,
                        preflight=outcome, create_preflight=outcome.state == preflight.State.ABSENT,
                        delete_preflight=outcome.state == preflight.State.STALE and not _deleting(preflight_job), **pin)


def _deleting(job: dict[str, Any] | None) -> bool:
    return bool(job and job["metadata"].get("deletionTimestamp"))
