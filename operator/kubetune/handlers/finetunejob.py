"""Thin kopf handlers for FineTuneJob: parse -> validate -> build -> apply -> status.

Status is derived from the observed Job and Pods (kopf indexes), never remembered: every Job or Pod
event re-derives the parent's status and writes it only if it changed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from ..api import constants as c
from ..api.finetunejob import FineTuneJobSpec
from ..api.storage_layout import job_prefix
from ..api.validation import SpecError, parse
from ..builders.common import label_value
from ..builders.finetunejob import SPEC_HASH_ANNOTATION, build_children, resolve_spec, spec_hash
from ..status.finetunejob import Observed, derive_status
from .metrics import inc
from .runtime import first, runtime, write_status

FTJ = (c.GROUP, c.VERSION, c.FINETUNEJOB_PLURAL)
TRAINER = {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE, c.LABEL_COMPONENT: c.COMPONENT_TRAINER}


def _slim(body: Any, *spec_keys: str) -> dict[str, Any]:
    """The part of a child the status derivation reads (keeps operator memory small)."""
    meta = body["metadata"]
    return {
        "metadata": {k: meta[k] for k in ("name", "creationTimestamp", "deletionTimestamp", "annotations") if meta.get(k)},
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
                            merged_model=resolved.output.merged_model if resolved else False)
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
    job = first(trainer_jobs, (body["metadata"]["namespace"], label_value(body["metadata"]["name"])))
    if job is None:
        *prerequisites, job_manifest = build_children(dict(body), resolved, rt.settings)
        await asyncio.gather(*(rt.kube.ensure(child) for child in prerequisites))
        await rt.kube.ensure(job_manifest)
        for child in (*prerequisites, job_manifest):
            inc("kubetune_children_created_total", child["kind"])
        return  # the Job's own event derives the first status
    if job["metadata"].get("annotations", {}).get(SPEC_HASH_ANNOTATION) != spec_hash(resolved):
        kopf.event(body, type="Warning", reason="SpecChangeIgnored",
                   message="Only spec.suspend can change once training started; the running Job keeps its original "
                           "spec. Delete and re-create the FineTuneJob to train with the new spec.")
    if bool(job["spec"].get("suspend")) != resolved.suspend:
        ref = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"namespace": body["metadata"]["namespace"], "name": job["metadata"]["name"]}}
        await rt.kube.merge_patch(ref, {"spec": {"suspend": resolved.suspend}})
    await refresh_status(body, trainer_jobs, trainer_pods)


@kopf.on.event("batch", "v1", "jobs", labels=TRAINER)
@kopf.on.event("", "v1", "pods", labels=TRAINER)
async def child_changed(labels: dict[str, str], namespace: str, finetunejobs: kopf.Index, trainer_jobs: kopf.Index,
                        trainer_pods: kopf.Index, **_: Any) -> None:
    parent = first(finetunejobs, (namespace, labels.get(c.LABEL_FINETUNEJOB)))
    if parent is not None and not parent["metadata"].get("deletionTimestamp"):
        await refresh_status(parent, trainer_jobs, trainer_pods)


@kopf.on.event(*FTJ)
def finetunejob_event(type: str, uid: str, **_: Any) -> None:
    if type == "DELETED":
        runtime().forget(uid)
