"""metav1.Condition bookkeeping: one entry per type, lastTransitionTime kept unless status flips."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

MAX_MESSAGE = 32768


@dataclass(frozen=True)
class Cond:
    """A desired condition, before timestamps are applied."""

    type: str
    status: str
    reason: str
    message: str


def now_iso(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(previous: list[dict[str, Any]] | None, desired: list[Cond], generation: int | None,
                     now: datetime | None = None) -> list[dict[str, Any]]:
    """The new conditions list, in the order of `desired`. Types not in `desired` are dropped."""
    before = {cond.get("type"): cond for cond in previous or []}
    stamp = now_iso(now)
    out = []
    for cond in desired:
        old = before.get(cond.type)
        transition = old["lastTransitionTime"] if old and old.get("status") == cond.status and old.get("lastTransitionTime") else stamp
        entry = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message[:MAX_MESSAGE],
            "lastTransitionTime": transition,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    return out


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((cond for cond in conditions or [] if cond.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    cond = find(conditions, type_)
    return bool(cond and cond.get("status") == "True")


def status_changed(previous: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether writing `new` would change anything in `previous` (keys absent from `new` are left alone)."""
    previous = previous or {}
    return any(previous.get(key) != value for key, value in new.items())
