"""Thin kopf handlers for FineTuneJob: parse -> validate -> build -> apply -> status.

Status is derived from the observed Job and Pods (kopf indexes), never remembered: every Job or Pod
event re-derives the parent's status and writes it only if it changed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from ..api import constants as c
from ..api.conditions import Reason
from ..api.finetunejob import FineTuneJobSpec
from ..api.storage_layout import job_prefix
from ..api.validation import SpecError, parse
from ..builders.common import label_value
from ..builders.finetunejob import SPEC_HASH_ANNOTATION, HoldPlan, build_children, plan_hold, resolve_spec, spec_hash
from ..clients.kube import KubeError, collection_path
from ..status.finetunejob import Observed, cancel_complete, derive_status, job_finished
from .metrics import inc
from .runtime import first, runtime, write_status

FTJ = (c.GROUP, c.VERSION, c.FINETUNEJOB_PLURAL)
TRAINER = {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE, c.LABEL_COMPONENT: c.COMPONENT_TRAINER}


def _slim(body: Any, *spec_keys: str) -> dict[str, Any]:
    """The part of a child the status derivation reads (keeps operator memory small)."""
    meta = body["metadata"]
    return {
        "metadata": {k: meta[k] for k in ("name", "uid", "creationTimestamp", "deletionTimestamp", "labels", "annotations")
                     if meta.get(k)},
        "spec": {k: body["spec"][k] for k in spec_keys if k in body.get("spec", {})},
        "status": dict(body.get("status") or {}),
    }


@kopf.index(*FTJ)
def finetunejobs(body: Any, namespace: str, name: str, **_: Any) -> dict[Any, Any]:
    return {(namespace, label_value(name)): body}


@kopf.index("batch", "v1", "jobs", labels=TRAINER)
def trainer_jobs(body: Any, namespace: str, labels: dict[str, str], **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[c.LABEL_FINETUNEJOB]): _slim(body, "suspend", "backoffLimit", "activeDeadlineSeconds", "completions")}


@kopf.index("", "v1", "pods", labels=TRAINER)
def trainer_pods(body: Any, namespace: str, labels: dict[str, str], **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[c.LABEL_FINETUNEJOB]): _slim(body, "containers")}


async def refresh_status(body: Any, trainer_jobs: kopf.Index, trainer_pods: kopf.Index,
                         validation_error: str | None = None) -> None:
    """Derive status from the observed children; write and announce it only if it changed."""
    rt = runtime()
    meta = body["metadata"]
    key = (meta["namespace"], label_value(meta["name"]))
    async with rt.locks[meta["uid"]]:
        previous = rt.written.get(meta["uid"]) or dict(body.get("status") or {})
        resolved = None
        if validation_error is None:
            try:
                resolved = resolve_spec(parse(FineTuneJobSpec, dict(body["spec"])), rt.settings)
            except SpecError as exc:
                validation_error = str(exc)
        observed = Observed(generation=meta.get("generation"), job=first(trainer_jobs, key),
                            pods=list(trainer_pods.get(key, [])), validation_error=validation_error,
                            output_prefix=job_prefix(resolved.output.uri or "", meta["namespace"], meta["name"]) if resolved else None,
                            adapter_type=resolved.adapter.type if resolved else None,
                            checkpoints=list((body.get("status") or {}).get("checkpoints") or []),
                            merged_model=resolved.output.merged_model if resolved else False,
                            cancel=bool(body["spec"].get("cancel")))
        status = derive_status(observed, previous)
        await write_status(body, previous, status)


@kopf.on.resume(*FTJ)
@kopf.on.create(*FTJ)
@kopf.on.update(*FTJ, field="spec")
async def reconcile_finetunejob(body: Any, spec: Any, trainer_jobs: kopf.Index, trainer_pods: kopf.Index, **_: Any) -> None:
    rt = runtime()
    inc("kubetune_reconciles_total", "FineTuneJob")
    try:
        resolved = resolve_spec(parse(FineTuneJobSpec, dict(spec)), rt.settings)
    except SpecError as exc:
        inc("kubetune_validation_failures_total", "FineTuneJob")
        await refresh_status(body, trainer_jobs, trainer_pods, validation_error=str(exc))
        raise kopf.PermanentError(f"invalid spec: {exc}") from None
    namespace = body["metadata"]["namespace"]
    job = first(trainer_jobs, (namespace, label_value(body["metadata"]["name"])))
    if job is None and (resolved.cancel or _cancelled(body)):  # a cancelled job never gets a Job again
        await refresh_status(body, trainer_jobs, trainer_pods)
        return
    if job is None:
        *prerequisites, job_manifest = build_children(dict(body), resolved, rt.settings)
        await asyncio.gather(*(rt.kube.ensure(child) for child in prerequisites))
        live, _ = await rt.kube.ensure(job_manifest)
        for child in (*prerequisites, job_manifest):
            inc("kubetune_children_created_total", child["kind"])
        await _hold(namespace, live, plan_hold(live, resolved))  # a queued job created on hold: its Workload too
        return  # the Job's own event derives the first status
    if job["metadata"].get("annotations", {}).get(SPEC_HASH_ANNOTATION) != spec_hash(resolved):
        kopf.event(body, type="Warning", reason="SpecChangeIgnored",
                   message="Only spec.suspend and spec.cancel can change once training started; the running Job keeps "
                           "its original spec. Delete and re-create the FineTuneJob to train with the new spec.")
    if resolved.cancel and job_finished(job):
        kopf.event(body, type="Normal", reason=Reason.CANCEL_IGNORED, message="spec.cancel has no effect: the job already finished.")
    else:
        await _hold(namespace, job, plan_hold(job, resolved))
    await refresh_status(body, trainer_jobs, trainer_pods)
    await _finish_cancel(body, trainer_jobs, trainer_pods)


def _cancelled(body: Any) -> bool:
    return any(cond.get("type") == "Failed" and cond.get("status") == "True" and cond.get("reason") == Reason.CANCELLED
               for cond in (body.get("status") or {}).get("conditions") or [])


def _ref(api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"namespace": namespace, "name": name}}


async def _hold(namespace: str, job: dict[str, Any], plan: HoldPlan) -> None:
    """Apply a HoldPlan: the Workload first (so that Kueue does not start a Job the user holds), then the Job."""
    rt = runtime()
    missing = False
    if plan.workload_active is not None:
        selector = f"{c.LABEL_KUEUE_JOB_UID}={job['metadata'].get('uid', '')}"
        try:
            found = await rt.kube.request("GET", collection_path(c.KUEUE_API_VERSION, c.KUEUE_WORKLOAD_KIND, namespace),
                                          query=[("labelSelector", selector)])
        except KubeError as exc:
            if exc.status != 404:  # 404: no Kueue in this cluster, so the Job's suspend is all there is to set
                raise
            found = {"items": []}
        else:
            missing = not found["items"]
        for workload in found["items"]:
            if workload.get("spec", {}).get("active", True) != plan.workload_active:
                ref = _ref(c.KUEUE_API_VERSION, c.KUEUE_WORKLOAD_KIND, namespace, workload["metadata"]["name"])
                await rt.kube.merge_patch(ref, {"spec": {"active": plan.workload_active}})
    if plan.job_patch is not None:
        await rt.kube.merge_patch(_ref("batch/v1", "Job", namespace, job["metadata"]["name"]), plan.job_patch)
    if missing and plan.workload_active is False:
        raise kopf.TemporaryError(f"Job {job['metadata']['name']} is held; waiting for Kueue to create its Workload", delay=3)


async def _finish_cancel(body: Any, trainer_jobs: kopf.Index, trainer_pods: kopf.Index) -> None:
    """Remove a cancelled Job once its trainer has checkpointed and stopped; status then says Cancelled."""
    key = (body["metadata"]["namespace"], label_value(body["metadata"]["name"]))
    job = first(trainer_jobs, key)
    if not (body.get("spec") or {}).get("cancel") or job is None or job_finished(job) or job["metadata"].get("deletionTimestamp"):
        return
    if cancel_complete(job, list(trainer_pods.get(key, []))):
        await runtime().kube.delete(_ref("batch/v1", "Job", key[0], job["metadata"]["name"]))


@kopf.on.event("batch", "v1", "jobs", labels=TRAINER)
@kopf.on.event("", "v1", "pods", labels=TRAINER)
async def child_changed(labels: dict[str, str], namespace: str, finetunejobs: kopf.Index, trainer_jobs: kopf.Index,
                        trainer_pods: kopf.Index, **_: Any) -> None:
    parent = first(finetunejobs, (namespace, labels.get(c.LABEL_FINETUNEJOB)))
    if parent is not None and not parent["metadata"].get("deletionTimestamp"):
        await refresh_status(parent, trainer_jobs, trainer_pods)
        await _finish_cancel(parent, trainer_jobs, trainer_pods)


@kopf.on.event(*FTJ)
def finetunejob_event(type: str, uid: str, **_: Any) -> None:
    if type == "DELETED":
        runtime().forget(uid)
