"""FineTuneJob plan: the spec with platform defaults, and what may happen to its training Job. Pure: no I/O.

A Job is created at most once per run of a FineTuneJob: only while none exists and the FineTuneJob has
not ended (cancelled, succeeded or failed). A Job deleted by hand before the end is created again (it
resumes from its last checkpoint); one deleted after the end is not (that would train again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api.conditions import FAILED, SUCCEEDED, TRUE
from ..api.conditions import FineTuneJobReason as Reason
from ..api.finetunejob import FineTuneJobSpec
from ..api.validation import parse
from ..builders.finetunejob import SPEC_HASH_ANNOTATION, resolve_spec, spec_hash
from ..config import OperatorSettings
from ..status.conditions import find, is_true

@dataclass(frozen=True)
class TrainingPlan:
    """What one reconcile of a FineTuneJob builds."""

    resolved: FineTuneJobSpec  # with the platform defaults filled in
    create_job: bool  # no Job exists and the FineTuneJob has not ended
    spec_change_ignored: bool  # a Job of an older spec exists: it (and its trainer config) keep that spec


def ended(status: dict[str, Any]) -> bool:
    """Succeeded, or Failed for good (cancelled, or a failed run; not an invalid spec that can still be fixed)."""
    conditions = status.get("conditions")
    failed = find(conditions, FAILED) or {}
    return is_true(conditions, SUCCEEDED) or (failed.get("status") == TRUE and failed.get("reason") != Reason.VALIDATION_FAILED)


def plan(body: dict[str, Any], settings: OperatorSettings, job: dict[str, Any] | None, status: dict[str, Any]) -> TrainingPlan:
    """(spec, observed) -> TrainingPlan. `job`: the live training Job or None; `status`: the FineTuneJob's latest
    status (what this operator last wrote). Raises SpecError for an invalid spec."""
    resolved = resolve_spec(parse(FineTuneJobSpec, dict(body["spec"])), settings)
    if job is not None:
        live_hash = (job["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        return TrainingPlan(resolved, create_job=False, spec_change_ignored=live_hash != spec_hash(resolved))
    return TrainingPlan(resolved, create_job=not (resolved.cancel or ended(status)), spec_change_ignored=False)
