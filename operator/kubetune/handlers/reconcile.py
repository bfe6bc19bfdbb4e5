"""The one reconcile skeleton of both kinds, like Kubeflow Trainer's `TrainJobReconciler.Reconcile`:

    observe -> plan -> build -> apply -> derive -> write status (only if it changed)

One function per step and kind:

    step     FineTuneJob                          ModelDeployment
    observe  handlers.finetunejob.observe         handlers.modeldeployment.observe     (kopf indexes; sidecar reports)
    plan     plan.finetunejob.plan                plan.modeldeployment.plan            (pure)
    build    builders.finetunejob.desired_children builders.modeldeployment.desired_children (pure)
    apply    apply_children (here)                apply_children (here)
    derive   status.finetunejob.derive_status     status.modeldeployment.derive_status (pure)
    write    handlers.runtime.write_status        handlers.runtime.write_status

Apply is server-side apply with the operator's field manager for every child (force: drift on any child is
repaired; nothing depends on which child happened to exist, so an operator killed between two applies
converges on its next pass). Only a child the API server would not let change (the training Job) is
created if missing and otherwise left alone. Every spec change, every change of a child that is not a
status update (a child deleted or edited by hand) and, for a ModelDeployment, every change of a
referenced FineTuneJob's outcome runs the whole skeleton; other child events and the sidecar poll run it
without build and apply (status only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import kopf

from ..api.validation import SpecError
from ..builders.common import Child
from ..api.constants import FIELD_MANAGER
from ..clients.kube import KubeError, object_path
from ..config import OperatorSettings
from .metrics import inc
from .runtime import runtime, write_status


@dataclass(frozen=True)
class Controller:
    """The steps of one kind. `observe(body, previous status, kopf indexes)` reads what exists; `plan(body, settings, observed)`
    raises SpecError for an invalid spec; `derive(body, plan or None, observed, previous, error)` returns the status;
    `act(body, plan, observed, created)` (optional) moves what apply does not: a Job's suspend, a cancel;
    `seen_created(body, observed, plan, created)` (optional) returns what observe will read once the children this pass
    created reach the indexes, and the plan on that; the status written now is derived from them, so it already says
    so (one write, not a second one on their event)."""

    kind: str
    observe: Callable[[Any, dict[str, Any], dict[str, Any]], Awaitable[Any]]
    plan: Callable[[Any, OperatorSettings, Any], Any]
    build: Callable[[Any, Any, OperatorSettings], list[Child]]
    derive: Callable[[Any, Any, Any, dict[str, Any], str | None], dict[str, Any]]
    act: Callable[[Any, Any, Any, dict[str, dict[str, Any]]], Awaitable[None]] | None = None
    seen_created: Callable[[Any, Any, Any, dict[str, dict[str, Any]]], tuple[Any, Any]] | None = None


async def reconcile(ctl: Controller, body: Any, indexes: dict[str, Any], *, apply: bool = True) -> Any:
    """One pass of the skeleton for one object; returns its plan (None for an invalid spec). `indexes`: the kopf
    indexes (a handler's keyword arguments). `apply=False`: observe, plan, derive and write status only. An
    invalid spec is a terminal status and, when applying, kopf.PermanentError (no retry)."""
    rt = runtime()
    meta = body["metadata"]
    async with rt.locks[meta["uid"]]:
        previous = rt.written.get(meta["uid"]) or dict(body.get("status") or {})
        observed = await ctl.observe(body, previous, indexes)
        try:
            plan = ctl.plan(body, rt.settings, observed)
        except SpecError as exc:
            await write_status(body, previous, ctl.derive(body, None, observed, previous, str(exc)))
            if not apply:
                return None
            inc("kubetune_validation_failures_total", ctl.kind)
            raise kopf.PermanentError(f"invalid spec: {exc}") from None
        if apply:
            inc("kubetune_reconciles_total", ctl.kind)
            created = await apply_children(ctl.build(body, plan, rt.settings))
            if ctl.act is not None:
                await ctl.act(body, plan, observed, created)
            if created and ctl.seen_created is not None:
                observed, plan = ctl.seen_created(body, observed, plan, created)
        await write_status(body, previous, ctl.derive(body, plan, observed, previous, None))
        return plan


async def apply_children(children: list[Child]) -> dict[str, dict[str, Any]]:
    """Apply every child: all but the last at once, then the last (the workload, after what it mounts and runs
    as). Returns the children this pass created, by kind."""
    *before, last = children or [None]
    results = await asyncio.gather(*(_apply(child) for child in before))
    results.append(await _apply(last) if last is not None else None)
    return {obj["kind"]: obj for obj in results if obj is not None}


async def _apply(child: Child) -> dict[str, Any] | None:
    kube = runtime().kube
    if child.delete:
        await kube.delete(child.manifest)  # a 404 (already gone) is fine
        return None
    if child.create_only:
        created = await kube.create_or_leave(child.manifest)
    else:
        live, was_created = await kube.apply(child.manifest, child.field_manager or FIELD_MANAGER)
        created = live if was_created else None
    if created is not None:
        inc("kubetune_children_created_total", child.manifest["kind"])
    return created


def child_version(body: Any) -> str:
    """What changes when a child's spec changes, but not on a status update: metadata.generation where the kind
    has one (Job, Deployment), else the resourceVersion (ConfigMap, Service, RBAC objects have no status)."""
    meta = body["metadata"]
    return str(meta["generation"]) if "generation" in meta else f"rv:{meta.get('resourceVersion')}"


def child_moved(type_: str | None, body: Any) -> bool:
    """A child event that calls for the whole skeleton: deleted, or changed other than in its status. A child
    seen for the first time (the operator's start-up listing, its own create) calls for nothing. A kind without
    a status (no metadata.generation: ConfigMap, Service, RBAC objects) changes only where it matters, so every
    MODIFIED event of one counts and nothing is remembered of it."""
    rt = runtime()
    meta = body["metadata"]
    uid = meta.get("uid", "")
    if type_ == "DELETED":
        rt.child_versions.pop(uid, None)
        return True
    if "generation" not in meta:
        return type_ == "MODIFIED"
    version, before = child_version(body), rt.child_versions.get(uid)
    rt.child_versions[uid] = version
    return type_ == "MODIFIED" and before is not None and before != version


async def reconcile_child_owner(ctl: Controller, parent: Any, indexes: dict[str, Any]) -> None:
    """The whole skeleton for the owner of a child that moved, if the owner still exists (owner_alive). From a
    child's event, which kopf does not retry: a wait the owner asks for (TemporaryError) is left to its next event;
    an invalid spec is in its status."""
    if not await owner_alive(parent):
        return
    try:
        await reconcile(ctl, parent, indexes)
    except (kopf.TemporaryError, kopf.PermanentError):
        pass


async def owner_alive(parent: Any) -> bool:
    """Whether `parent`, as a kopf index holds it, still exists with that uid and is not being deleted, read from
    the API server. The index lags behind the owner's deletion: the garbage collector deletes the children, and
    their DELETED events may be handled before the owner's own, so a reconcile from the index entry would create
    them again, owned by a uid that no longer exists. One GET per child-driven reconcile (a child deleted or edited,
    a referenced FineTuneJob's outcome), none on the status-only path."""
    meta = parent["metadata"]
    try:
        live = await runtime().kube.request("GET", object_path(dict(parent)))
    except KubeError as exc:
        if exc.status == 404:
            return False
        raise
    return live["metadata"].get("uid") == meta["uid"] and not live["metadata"].get("deletionTimestamp")
