"""Thin kopf handlers for ModelDeployment: the reconcile skeleton (handlers/reconcile.py) with the
ModelDeployment's steps: observe (kopf indexes, each pod's sidecar report) -> plan.modeldeployment.plan (adapters
resolved once) -> builders.modeldeployment.desired_children -> apply -> status.modeldeployment.derive_status -> write.

Adapters change only the desired-set ConfigMap (the pods' sidecars watch it: no restart). A FineTuneJob event
re-plans the deployments that reference it only when its outcome changed (published adapter, terminal
conditions), so an adapter is added the moment its job succeeds, not re-planned on every progress patch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import kopf

from ..api import constants as c
from ..builders.common import Parent, label_value
from ..builders.modeldeployment import ServingNames, desired_children, endpoint, selector_string
from ..builders.scaling import scaling_moves
from ..api.sidecar import SidecarStatus
from ..clients.sidecar import fetch_reports
from ..config import OperatorSettings
from ..plan.modeldeployment import ServingPlan, adapter_outcome, plan, referenced_jobs
from ..status.modeldeployment import ServingObserved, derive_status
from ..status.scaling import observed_workload, replicas_wanted
from .reconcile import Controller, child_moved, reconcile, reconcile_child_owner
from .runtime import deleted, first, runtime
from .scaling import observe_scaling

MD = (c.GROUP, c.VERSION, c.MODELDEPLOYMENT_PLURAL)
SERVING = {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE, c.LABEL_COMPONENT: c.COMPONENT_SERVING}


def _key(body: Any) -> tuple[str, str]:
    return body["metadata"]["namespace"], label_value(body["metadata"]["name"])


def _part(body: Any, *keys: str) -> dict[str, Any]:
    return {k: dict(body.get(k) or {}) for k in keys}


@kopf.index(*MD)
async def modeldeployments(body: Any, namespace: str, name: str, **_: Any) -> dict[Any, Any]:
    return {(namespace, label_value(name)): body}


@kopf.index("apps", "v1", "deployments", labels=SERVING)
async def serving_deployments(body: Any, namespace: str, labels: dict[str, str], **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[c.LABEL_MODELDEPLOYMENT]): _part(body, "metadata", "spec", "status")}


@kopf.index("", "v1", "pods", labels=SERVING)
async def serving_pods(body: Any, namespace: str, labels: dict[str, str], **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[c.LABEL_MODELDEPLOYMENT]): _part(body, "metadata", "spec", "status")}


@kopf.index("", "v1", "configmaps", labels=SERVING)
async def serving_configmaps(body: Any, namespace: str, labels: dict[str, str], **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[c.LABEL_MODELDEPLOYMENT]): _part(body, "metadata", "data")}


@dataclass(frozen=True)
class Seen:
    """What one reconcile observed of a ModelDeployment."""

    finetunejobs: dict[str, dict[str, Any]]  # the namespace's FineTuneJobs by name
    configmap: dict[str, Any] | None  # the live desired-set ConfigMap
    deployment: dict[str, Any] | None
    pods: list[dict[str, Any]]
    reports: dict[str, SidecarStatus | None]  # pod name -> its sidecar's /status (None: unreachable)
    previous: dict[str, Any] | None = None  # the status as last written (gate verdicts: plan.promotion)
    scaling: dict[str, dict[str, Any]] | None = None  # workload and autoscaler by kind (handlers/scaling.py)


async def observe(body: Any, previous: dict[str, Any], indexes: dict[str, Any]) -> Seen:
    namespace, key = body["metadata"]["namespace"], _key(body)
    jobs = {b["metadata"]["name"]: b for (ns, _), store in indexes["finetunejobs"].items() if ns == namespace for b in store}
    pods = list(indexes["serving_pods"].get(key, []))
    reports = await fetch_reports(pods, c.SERVING_SYNC_CONTAINER, "sync") if pods else {}
    return Seen(jobs, first(indexes["serving_configmaps"], key), first(indexes["serving_deployments"], key), pods, reports,
                previous, observe_scaling(indexes, key))


def derive(body: Any, planned: ServingPlan | None, seen: Seen, previous: dict[str, Any], error: str | None) -> dict[str, Any]:
    parent = Parent.of(dict(body))
    workload = observed_workload(planned.spec if planned else None, seen.scaling or {})
    observed = ServingObserved(
        generation=body["metadata"].get("generation"), desired_generation=planned.desired_generation if planned else 0,
        deployment=workload, pods=seen.pods, reports=seen.reports, endpoint=endpoint(parent, planned.spec) if planned else "",
        selector=selector_string(parent), validation_error=error)
    spec = replicas_wanted(planned.spec, workload) if planned else None
    return derive_status(observed, spec, planned.adapters if planned else [], previous).to_dict()


def _build(body: Any, planned: ServingPlan, settings: OperatorSettings) -> list[Any]:
    *children, workload = desired_children(dict(body), planned.spec, settings, planned.desired)
    return [*children, *planned.scaling, workload]


def _with_scaling(plan_of: Any) -> Any:
    """The plan, with what the workload's apply needs first: the deletion of a child of a kind the spec no longer
    builds, and the handover of the replicas to the autoscaler (builders.scaling.scaling_moves)."""
    def planned(body: Any, settings: OperatorSettings, seen: Seen) -> ServingPlan:
        result = plan_of(body, settings, seen)
        name = ServingNames.of(body["metadata"]["name"]).deployment
        return replace(result, scaling=tuple(scaling_moves(name, result.spec, settings, seen.scaling or {})))
    return planned


SERVING_CONTROLLER = Controller("ModelDeployment", observe,
                                _with_scaling(lambda body, settings, seen: plan(dict(body), settings, seen.finetunejobs, seen.configmap,
                                                                  seen.pods, seen.reports, seen.previous)),
                                _build, derive)


@kopf.on.resume(*MD)
@kopf.on.create(*MD)
@kopf.on.update(*MD, field="spec")
async def reconcile_modeldeployment(body: Any, **kwargs: Any) -> None:
    await reconcile(SERVING_CONTROLLER, body, kwargs)


def _any_modeldeployment(modeldeployments: kopf.Index, **_: Any) -> bool:
    """kopf's filter of finetunejob_changed: with no ModelDeployment there is nothing to re-plan (one created later
    plans from the FineTuneJobs as they are), so a training-only cluster's FineTuneJob events invoke nothing."""
    return bool(modeldeployments)


@kopf.on.event(c.GROUP, c.VERSION, c.FINETUNEJOB_PLURAL, when=_any_modeldeployment)
async def finetunejob_changed(type: str, body: Any, name: str, namespace: str, **kwargs: Any) -> None:
    """Re-plan and re-apply every ModelDeployment in the namespace that references this FineTuneJob, when what
    adapter resolution reads of it changed (not on its progress patches)."""
    rt, key = runtime(), (namespace, name)
    outcome = adapter_outcome(None if type == "DELETED" else dict(body))
    if rt.ftj_outcomes.get(key) == outcome:
        return
    if type == "DELETED":
        rt.ftj_outcomes.pop(key, None)
    else:
        rt.ftj_outcomes[key] = outcome
    for (ns, _), store in list(kwargs["modeldeployments"].items()):
        for md in store:
            if ns == namespace and not md["metadata"].get("deletionTimestamp") and name in referenced_jobs(md):
                await reconcile_child_owner(SERVING_CONTROLLER, md, kwargs)


@kopf.on.event("apps", "v1", "deployments", labels=SERVING)
@kopf.on.event("", "v1", "pods", labels=SERVING)
async def serving_child_changed(type: str, body: Any, labels: dict[str, str], namespace: str, **kwargs: Any) -> None:
    """A Deployment deleted or changed other than in its status runs the whole skeleton; any other Deployment or
    Pod event re-derives status."""
    md = first(kwargs["modeldeployments"], (namespace, labels.get(c.LABEL_MODELDEPLOYMENT)))
    if md is None or md["metadata"].get("deletionTimestamp"):
        return
    if body["kind"] in ("Deployment", "LeaderWorkerSet") and child_moved(type, body):
        await reconcile_child_owner(SERVING_CONTROLLER, md, kwargs)
    else:
        await reconcile(SERVING_CONTROLLER, md, kwargs, apply=False)


@kopf.timer(*MD, interval=5, initial_delay=5)
async def poll_sidecars(body: Any, **kwargs: Any) -> None:
    """Adapters load inside the pods without any Kubernetes event: ask the sidecars every few seconds. A gate
    decided there (a trial reported) changes the desired set: then the whole skeleton applies it."""
    planned = await reconcile(SERVING_CONTROLLER, body, kwargs, apply=False)
    if planned is not None and planned.changed:
        await reconcile(SERVING_CONTROLLER, body, kwargs)


def _gate_running(status: dict[str, Any], **_: Any) -> bool:
    return any((a.get("promotion") or {}).get("trialPod") for a in (status or {}).get("adapters") or [])


@kopf.timer(*MD, interval=0.5, when=_gate_running)
async def poll_gates(body: Any, **kwargs: Any) -> None:
    """While a gate runs on a pod, its verdict is asked for every half second (not at the 5 s poll)."""
    await poll_sidecars(body, **kwargs)


@kopf.on.event(*MD, when=deleted)
async def modeldeployment_event(type: str, uid: str, **_: Any) -> None:
    if type == "DELETED":
        runtime().forget(uid)
