"""Thin kopf handlers for FineTuneJob: the reconcile skeleton (handlers/reconcile.py) with the FineTuneJob's
steps: observe (the Job and Pods from kopf indexes) -> plan.finetunejob.plan -> builders.finetunejob.
desired_children -> apply -> act (suspend/cancel the Job) -> status.finetunejob.derive_status -> write.

Status is derived from the observed Job and Pods, never remembered: every Job or Pod event re-derives the
parent's status and writes it only if it changed. A child deleted or edited by hand re-applies them all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import kopf

from ..api import constants as c
from ..api.conditions import FineTuneJobReason as Reason
from ..api.storage_layout import job_prefix
from ..builders.common import label_value
from ..builders.finetunejob import HoldPlan, desired_children, plan_hold
from ..clients.kube import KubeError, collection_path
from ..config import OperatorSettings
from ..plan.finetunejob import TrainingPlan, ended, plan
from ..plan.template import needs_templates
from ..status.finetunejob import Observed, cancel_complete, derive_status, job_finished
from .reconcile import Controller, child_moved, reconcile, reconcile_child_owner
from .runtime import deleted, first, runtime
from .template_serving import serve_from_template

FTJ = (c.GROUP, c.VERSION, c.FINETUNEJOB_PLURAL)
TRAINER = {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE, c.LABEL_COMPONENT: c.COMPONENT_TRAINER}
PREFLIGHT = {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE, c.LABEL_COMPONENT: c.COMPONENT_PREFLIGHT}
JOB_SPEC_KEYS = ("suspend", "backoffLimit", "activeDeadlineSeconds", "completions")


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
async def finetunejobs(body: Any, namespace: str, name: str, **_: Any) -> dict[Any, Any]:
    return {(namespace, label_value(name)): body}


def _child_index(resource: tuple[str, str, str], labels: dict[str, str], spec_keys: tuple[str, ...], name: str) -> None:
    """kopf index `name`: the children of `resource` with `labels`, by (namespace, FineTuneJob label)."""
    async def index(body: Any, namespace: str, labels: dict[str, str], **_: Any) -> dict[Any, Any]:
        return {(namespace, labels[c.LABEL_FINETUNEJOB]): _slim(body, *spec_keys)}

    kopf.index(*resource, labels=labels, id=name)(index)


# trainer_jobs, trainer_pods (the training Job and its pods), preflight_jobs, preflight_pods (the pre-flight's)
for _component, _labels in (("trainer", TRAINER), ("preflight", PREFLIGHT)):
    _child_index(("batch", "v1", "jobs"), _labels, JOB_SPEC_KEYS, f"{_component}_jobs")
    _child_index(("", "v1", "pods"), _labels, ("containers",), f"{_component}_pods")


@dataclass(frozen=True)
class Seen:
    """What one reconcile observed of a FineTuneJob: its training Job and Pods, its latest status, its pre-flight
    Job and Pods."""

    job: dict[str, Any] | None
    pods: list[dict[str, Any]]
    status: dict[str, Any]
    preflight_job: dict[str, Any] | None = None
    preflight_pods: tuple[dict[str, Any], ...] = ()
    templates: list[dict[str, Any]] | None = None  # FineTuneTemplates read for this pass (None: not needed)


def _key(body: Any) -> tuple[str, str]:
    return body["metadata"]["namespace"], label_value(body["metadata"]["name"])


async def observe(body: Any, previous: dict[str, Any], indexes: dict[str, Any]) -> Seen:
    key = _key(body)
    job = first(indexes["trainer_jobs"], key)
    needed = needs_templates(dict(body["spec"]), previous, job is not None, ended(previous))
    return Seen(job, list(indexes["trainer_pods"].get(key, [])), previous, first(indexes["preflight_jobs"], key),
                tuple(indexes["preflight_pods"].get(key, [])), await _templates(body["spec"].get("template")) if needed else None)


async def _templates(name: str | None) -> list[dict[str, Any]]:
    """The FineTuneTemplate `name` (none of that name: []), or every template (cluster-scoped: read cluster-wide)."""
    path = f"/apis/{c.GROUP}/{c.VERSION}/{c.FINETUNETEMPLATE_PLURAL}"
    try:
        return [await runtime().kube.request("GET", f"{path}/{name}")] if name else \
            (await runtime().kube.request("GET", path))["items"]
    except KubeError as exc:
        if exc.status == 404:  # no template of that name (or no FineTuneTemplate CRD installed: no templates)
            return []
        raise


def derive(body: Any, planned: TrainingPlan | None, seen: Seen, previous: dict[str, Any], error: str | None) -> dict[str, Any]:
    meta, resolved = body["metadata"], planned.resolved if planned else None
    return derive_status(Observed(
        generation=meta.get("generation"), job=seen.job, pods=seen.pods, validation_error=error,
        output_prefix=job_prefix(resolved.output.uri or "", meta["namespace"], meta["name"]) if resolved else None,
        adapter_type=resolved.adapter.type if resolved else None,
        checkpoints=list((body.get("status") or {}).get("checkpoints") or []),
        merged_model=resolved.output.merged_model if resolved else False, cancel=bool(body["spec"].get("cancel")),
        preflight=planned.preflight if planned else None, effective_spec=resolved,
        spec_hash=planned.source_hash if planned else None, template=planned.template if planned else None),
        previous).to_dict() | ({"template": None} if planned and planned.template is None and previous.get("template") else {})


async def act(body: Any, planned: TrainingPlan, seen: Seen, created: dict[str, dict[str, Any]]) -> None:
    """What apply does not move: the Job's suspend (and its Kueue Workload's active) follows spec.suspend and
    spec.cancel; a cancelled Job is removed once its trainer stopped; a pre-flight Job of an older spec (or of a
    job cancelled before training) is removed (its DELETED event runs the skeleton again, which replaces it)."""
    if planned.delete_preflight and seen.preflight_job is not None:
        await runtime().kube.delete(_ref("batch/v1", "Job", body["metadata"]["namespace"], seen.preflight_job["metadata"]["name"]))
    job = (created.get("Job") if planned.create_job else None) or seen.job  # created: this pass's new Job, if any
    if job is None or (planned.resolved.cancel and job_finished(job)):
        return
    await _hold(body["metadata"]["namespace"], job, plan_hold(job, planned.resolved))
    await _finish_cancel(body, seen.job, seen.pods)


def _build(body: Any, planned: TrainingPlan, settings: OperatorSettings) -> list[Any]:
    return desired_children(dict(body), planned.resolved, settings, create_job=planned.create_job,
                            keep_config=planned.spec_change_ignored, create_preflight=planned.create_preflight)


def _plan(body: Any, settings: OperatorSettings, seen: Seen) -> TrainingPlan:
    return plan(dict(body), settings, seen.job, seen.status, seen.preflight_job, list(seen.preflight_pods), seen.templates)


def seen_created(body: Any, seen: Seen, planned: TrainingPlan, created: dict[str, dict[str, Any]]) -> tuple[Seen, TrainingPlan]:
    """The Job this pass created, as trainer_jobs or preflight_jobs will index it, and the plan on that: the status
    written now says the training Job exists, or names the pre-flight Job and says it runs, so the Job's ADDED event
    finds nothing left to write. A new training Job changes nothing derive reads of the plan; a new pre-flight Job
    changes where the pre-flight stands, so that plan is made again (it is pure)."""
    job = created.get("Job")
    if job is None:
        return seen, planned
    component = (job["metadata"].get("labels") or {}).get(c.LABEL_COMPONENT)
    if component == c.COMPONENT_TRAINER and planned.create_job:
        return replace(seen, job=_slim(job, *JOB_SPEC_KEYS)), planned
    if component == c.COMPONENT_PREFLIGHT and planned.create_preflight:
        seen = replace(seen, preflight_job=_slim(job, *JOB_SPEC_KEYS))
        return seen, _plan(body, runtime().settings, seen)
    return seen, planned


TRAINING = Controller("FineTuneJob", observe, _plan, _build, derive, act, seen_created)


@kopf.on.resume(*FTJ)
@kopf.on.create(*FTJ)
@kopf.on.update(*FTJ, field="spec")
async def reconcile_finetunejob(body: Any, **kwargs: Any) -> None:
    planned = await reconcile(TRAINING, body, kwargs)
    if planned.spec_change_ignored:
        kopf.event(body, type="Warning", reason="SpecChangeIgnored",
                   message="Only spec.suspend and spec.cancel can change once training started; the running Job keeps "
                           "its original spec. Delete and re-create the FineTuneJob to train with the new spec.")
    job = first(kwargs["trainer_jobs"], _key(body))
    if planned.resolved.cancel and job is not None and job_finished(job):
        kopf.event(body, type="Normal", reason=Reason.CANCEL_IGNORED, message="spec.cancel has no effect: the job already finished.")


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


async def _finish_cancel(body: Any, job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> None:
    """Remove a cancelled Job once its trainer has checkpointed and stopped; status then says Cancelled."""
    if not (body.get("spec") or {}).get("cancel") or job is None or job_finished(job) or job["metadata"].get("deletionTimestamp"):
        return
    if cancel_complete(job, pods):
        await runtime().kube.delete(_ref("batch/v1", "Job", body["metadata"]["namespace"], job["metadata"]["name"]))


@kopf.on.event("batch", "v1", "jobs", labels=TRAINER)
@kopf.on.event("", "v1", "pods", labels=TRAINER)
async def child_changed(type: str, body: Any, labels: dict[str, str], namespace: str, **kwargs: Any) -> None:
    """A Job deleted or changed other than in its status runs the whole skeleton; any other Job or Pod event
    re-derives status (and removes a cancelled Job once its trainer stopped)."""
    parent = first(kwargs["finetunejobs"], (namespace, labels.get(c.LABEL_FINETUNEJOB)))
    if parent is None or parent["metadata"].get("deletionTimestamp"):
        return
    if body["kind"] == "Job" and child_moved(type, body):
        await reconcile_child_owner(TRAINING, parent, kwargs)
        return
    await reconcile(TRAINING, parent, kwargs, apply=False)
    key = _key(parent)
    await _finish_cancel(parent, first(kwargs["trainer_jobs"], key), list(kwargs["trainer_pods"].get(key, [])))
    await serve_from_template(parent)


@kopf.on.event("batch", "v1", "jobs", labels=PREFLIGHT)
@kopf.on.event("", "v1", "pods", labels=PREFLIGHT)
async def preflight_changed(type: str, body: Any, labels: dict[str, str], namespace: str, **kwargs: Any) -> None:
    """A pre-flight Job that finished (the training Job may start), was deleted (it is run again) or changed other
    than in its status runs the whole skeleton; its other Job and Pod events re-derive status."""
    parent = first(kwargs["finetunejobs"], (namespace, labels.get(c.LABEL_FINETUNEJOB)))
    if parent is None or parent["metadata"].get("deletionTimestamp"):
        return
    if body["kind"] == "Job" and (child_moved(type, body) or job_finished(body)):
        await reconcile_child_owner(TRAINING, parent, kwargs)
    else:
        await reconcile(TRAINING, parent, kwargs, apply=False)


@kopf.on.event(*FTJ, when=deleted)
async def finetunejob_event(type: str, uid: str, **_: Any) -> None:
    if type == "DELETED":
        runtime().forget(uid)
