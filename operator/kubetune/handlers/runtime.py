"""Operator-wide state shared by the handlers: settings, the API client, status-write bookkeeping."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import kopf

from ..clients.kube import Kube, KubeError
from ..config import OperatorSettings
from ..status.conditions import find, status_changed
from .metrics import inc

log = logging.getLogger("kubetune")


@dataclass
class Runtime:
    settings: OperatorSettings
    kube: Kube
    # uid -> the operator-owned status last written (the index may lag behind our own writes).
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    locks: defaultdict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    # child uid -> its generation (or resourceVersion) last seen: a child event that changes it re-applies.
    child_versions: dict[str, str] = field(default_factory=dict)
    # (namespace, FineTuneJob name) -> what of it adapter resolution reads, as last acted on.
    ftj_outcomes: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    # uids of succeeded FineTuneJobs already added to their template's ModelDeployment (handlers/template_serving.py).
    template_served: set[str] = field(default_factory=set)

    def forget(self, uid: str) -> None:
        self.written.pop(uid, None)
        self.locks.pop(uid, None)
        self.template_served.discard(uid)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(settings=OperatorSettings.from_env(), kube=Kube())
    return _runtime


def reset(settings: OperatorSettings | None = None, kube: Kube | None = None) -> Runtime:
    global _runtime
    _runtime = Runtime(settings=settings or OperatorSettings.from_env(), kube=kube or Kube())
    return _runtime


# Condition transitions worth an Event: (type, status) -> event type. Reason and message come from the condition.
EVENT_ON = {
    ("Running", "True"): "Normal",
    ("Succeeded", "True"): "Normal",
    ("Failed", "True"): "Warning",
    ("Suspended", "True"): "Normal",
    ("Servable", "False"): "Warning",
    ("DataValidated", "True"): "Normal",  # the pre-flight passed (its failure is Failed=True's Warning)
    ("Regressed", "True"): "Warning",  # the regression set dropped beyond spec.evaluation.maxRegression
    ("Ready", "True"): "Normal",
    ("AdaptersReady", "False"): "Warning",
}
STUCK_REASONS = {"ImagePullFailed", "Unschedulable"}


def announce(body: Any, before: list[dict[str, Any]] | None, after: list[dict[str, Any]]) -> None:
    """Post an Event for every condition that changed status or reason into a state worth telling."""
    for cond in after:
        old = find(before, cond["type"])
        if old and old.get("status") == cond["status"] and old.get("reason") == cond["reason"]:
            continue
        kind = EVENT_ON.get((cond["type"], cond["status"]))
        if cond["reason"] in STUCK_REASONS and cond["type"] == "Running":
            kind = "Warning"
        if kind:
            kopf.event(body, type=kind, reason=cond["reason"], message=cond["message"] or cond["reason"])


def deleted(type: str | None, **_: Any) -> bool:
    """kopf's `when=` filter of a handler that acts only on an object's deletion: its other events invoke nothing."""
    return type == "DELETED"


def first(index: kopf.Index, key: Any) -> Any:
    """The one object an index holds under `key`, or None."""
    return next(iter(index.get(key, [])), None)


async def write_status(body: Any, previous: dict[str, Any], status: dict[str, Any]) -> bool:
    """Write the operator-owned status if it changed, remember it, and announce condition transitions.

    Call with the object's lock held (Runtime.locks[uid]).
    """
    if not status_changed(previous, status):
        return False
    rt = runtime()
    try:
        await rt.kube.merge_patch(dict(body), {"status": status}, subresource="status")
    except KubeError as exc:
        if exc.status != 404:
            raise
        # Deleted between the event that led here and this write (a child's event after its parent's
        # finalizer ran): nothing is left to describe.
        log.debug("%s %s is gone; status not written", body["kind"], body["metadata"]["name"])
        return False
    inc("kubetune_status_writes_total", body["kind"])
    rt.written[body["metadata"]["uid"]] = {**previous, **status}
    announce(body, previous.get("conditions"), status["conditions"])
    return True
