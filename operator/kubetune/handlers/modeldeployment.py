"""Thin kopf handlers for ModelDeployment: parse -> resolve adapters -> build -> apply -> status.

Adapters change only the desired-set ConfigMap (the pods' sidecars watch it: no restart). A
FineTuneJob event re-resolves the deployments that reference it, so an adapter is added the moment
its job succeeds. Status comes from the Deployment, the Pods and each pod's sidecar report.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kopf

from ..api import constants as c
from ..api.modeldeployment import ModelDeploymentSpec
from ..api.validation import SpecError, parse
from ..builders.common import Parent, label_value
from ..builders.modeldeployment import (
    DESIRED_KEY,
    SYNC_CONTAINER,
    TEMPLATE_HASH_ANNOTATION,
    build_children,
    desired_set,
    endpoint,
    resolve_spec,
    selector_string,
)
from ..clients.sidecar import fetch_reports
from ..plan.modeldeployment import Resolved, resolve_adapters
from ..status.modeldeployment import ServingObserved, derive_status
from .metrics import inc
from .runtime import first, runtime, write_status

MD = (c.GROUP, c.VERSION, c.MODELDEPLOYMENT_PLURAL)
SERVING = {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE, c.LABEL_COMPONENT: c.COMPONENT_SERVING}


def _key(body: Any) -> tuple[str, str]:
    return body["metadata"]["namespace"], label_value(body["metadata"]["name"])


@kopf.index(*MD)
def modeldeployments(body: Any, namespace: str, name: str, **_: Any) -> dict[Any, Any]:
    return {(namespace, label_value(name)): body}


@kopf.index("apps", "v1", "deployments", labels=SERVING)
def serving_deployments(body: Any, namespace: str, labels: dict[str, str], **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[c.LABEL_MODELDEPLOYMENT]): {"metadata": dict(body["metadata"]), "spec": dict(body["spec"]),
                                                          "status": dict(body.get("status") or {})}}


@kopf.index("", "v1", "pods", labels=SERVING)
def serving_pods(body: Any, namespace: str, labels: dict[str, str], **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[c.LABEL_MODELDEPLOYMENT]): {"metadata": dict(body["metadata"]), "spec": dict(body["spec"]),
                                                          "status": dict(body.get("status") or {})}}


@kopf.index("", "v1", "configmaps", labels=SERVING)
def serving_configmaps(body: Any, namespace: str, labels: dict[str, str], **_: Any) -> dict[Any, Any]:
    return {(namespace, labels[c.LABEL_MODELDEPLOYMENT]): {"metadata": dict(body["metadata"]), "data": dict(body.get("data") or {})}}


def _finetunejobs_in(finetunejobs: kopf.Index, namespace: str) -> dict[str, Any]:
    return {b["metadata"]["name"]: b for (ns, _), store in finetunejobs.items() if ns == namespace for b in store}


def _current_desired(configmap: Any) -> dict[str, Any] | None:
    try:
        return json.loads(configmap["data"][DESIRED_KEY]) if configmap else None
    except (KeyError, ValueError):
        return None


def _plan(body: Any, spec: ModelDeploymentSpec, finetunejobs: kopf.Index, serving_configmaps: kopf.Index) -> tuple[list[Resolved], dict[str, Any]]:
    """Resolved adapters and the desired-set document (generation bumped only when the set changes)."""
    resolved = resolve_adapters(spec, body["metadata"]["namespace"], _finetunejobs_in(finetunejobs, body["metadata"]["namespace"]))
    wanted = [{"name": r.name, "uri": r.uri, "manifestSha256": r.sha256} for r in resolved if r.sendable]
    current = _current_desired(first(serving_configmaps, _key(body)))
    current_set = desired_set(0, wanted)["adapters"]
    if current and current.get("adapters") == current_set:
        return resolved, current
    return resolved, desired_set(int((current or {}).get("generation") or 0) + 1, wanted)


async def apply_children(body: Any, spec: ModelDeploymentSpec, finetunejobs: kopf.Index, serving_configmaps: kopf.Index,
                         serving_deployments: kopf.Index, *, spec_changed: bool = False) -> None:
    rt = runtime()
    _, desired = _plan(body, spec, finetunejobs, serving_configmaps)
    *prerequisites, deployment = build_children(dict(body), spec, rt.settings, desired)
    config_map = prerequisites[0]
    live_cm = first(serving_configmaps, _key(body))
    if live_cm is None:
        await asyncio.gather(*(rt.kube.ensure(child) for child in prerequisites))
    elif live_cm["data"] != config_map["data"]:
        await rt.kube.merge_patch(config_map, {"data": config_map["data"]})
    if spec_changed:  # spec.service may have changed: one GET of the endpoint Service
        await sync_service(next(child for child in prerequisites if child["kind"] == "Service"))
    live = first(serving_deployments, _key(body))
    if live is None:
        await rt.kube.ensure(deployment)
        return
    wanted_hash = deployment["spec"]["template"]["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
    live_hash = ((live["spec"].get("template") or {}).get("metadata") or {}).get("annotations", {}).get(TEMPLATE_HASH_ANNOTATION)
    if live_hash != wanted_hash or live["spec"].get("replicas") != spec.replicas:
        await rt.kube.merge_patch(deployment, {"spec": {"replicas": spec.replicas, "template": deployment["spec"]["template"]}})


def service_drift(live: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch that brings the live Service to spec.service (type, port), or None. Pure."""
    live_spec, want = live.get("spec") or {}, wanted["spec"]
    live_ports = [(p.get("name"), p.get("port"), p.get("targetPort")) for p in live_spec.get("ports") or []]
    want_ports = [(p["name"], p["port"], p["targetPort"]) for p in want["ports"]]
    if live_spec.get("type", "ClusterIP") == want["type"] and live_ports == want_ports:
        return None
    # the port list is replaced whole: a nodePort of the old type goes (the API server allocates a new one)
    return {"spec": {"type": want["type"], "ports": want["ports"]}}


async def sync_service(service: dict[str, Any]) -> None:
    """Apply spec.service changes to the endpoint Service."""
    rt = runtime()
    meta = service["metadata"]
    live = await rt.kube.get("v1", "Service", meta["namespace"], meta["name"])
    patch = service_drift(live, service) if live is not None else None
    if patch is not None:
        await rt.kube.merge_patch(service, patch)


async def refresh_status(body: Any, finetunejobs: kopf.Index, serving_configmaps: kopf.Index, serving_deployments: kopf.Index,
                         serving_pods: kopf.Index, validation_error: str | None = None) -> None:
    rt = runtime()
    meta = body["metadata"]
    parent = Parent.of(dict(body))
    async with rt.locks[meta["uid"]]:
        previous = rt.written.get(meta["uid"]) or dict(body.get("status") or {})
        spec = None
        resolved: list[Resolved] = []
        desired_generation = 0
        if validation_error is None:
            try:
                spec = resolve_spec(parse(ModelDeploymentSpec, dict(body["spec"])), rt.settings)
                resolved, desired = _plan(body, spec, finetunejobs, serving_configmaps)
                desired_generation = int(desired.get("generation") or 0)
            except SpecError as exc:
                validation_error = str(exc)
        pods = list(serving_pods.get(_key(body), []))
        reports = await fetch_reports(pods, SYNC_CONTAINER, "sync") if pods and spec is not None else {}
        observed = ServingObserved(
            generation=meta.get("generation"), desired_generation=desired_generation,
            deployment=first(serving_deployments, _key(body)), pods=pods, reports=reports,
            endpoint=endpoint(parent, spec) if spec else "", selector=selector_string(parent), validation_error=validation_error)
        status = derive_status(observed, spec, resolved, previous)
        await write_status(body, previous, status)


@kopf.on.resume(*MD)
@kopf.on.create(*MD)
@kopf.on.update(*MD, field="spec")
async def reconcile_modeldeployment(body: Any, spec: Any, finetunejobs: kopf.Index, serving_configmaps: kopf.Index,
                                    serving_deployments: kopf.Index, serving_pods: kopf.Index, **kwargs: Any) -> None:
    rt = runtime()
    inc("kubetune_reconciles_total", "ModelDeployment")
    indexes = (finetunejobs, serving_configmaps, serving_deployments, serving_pods)
    try:
        resolved_spec = resolve_spec(parse(ModelDeploymentSpec, dict(spec)), rt.settings)
    except SpecError as exc:
        inc("kubetune_validation_failures_total", "ModelDeployment")
        await refresh_status(body, *indexes, validation_error=str(exc))
        raise kopf.PermanentError(f"invalid spec: {exc}") from None
    await apply_children(body, resolved_spec, finetunejobs, serving_configmaps, serving_deployments,
                         spec_changed=kwargs.get("reason") == "update")
    await refresh_status(body, *indexes)


@kopf.on.event(c.GROUP, c.VERSION, c.FINETUNEJOB_PLURAL)
async def finetunejob_changed(name: str, namespace: str, modeldeployments: kopf.Index, finetunejobs: kopf.Index,
                              serving_configmaps: kopf.Index, serving_deployments: kopf.Index, serving_pods: kopf.Index, **_: Any) -> None:
    """Re-resolve every ModelDeployment in the namespace that references this FineTuneJob."""
    rt = runtime()
    for (ns, _), store in list(modeldeployments.items()):
        for md in store:
            if ns != namespace or md["metadata"].get("deletionTimestamp"):
                continue
            refs = [(a.get("fineTuneJobRef") or {}).get("name") for a in (md.get("spec") or {}).get("adapters") or []]
            if name not in refs:
                continue
            try:
                spec = resolve_spec(parse(ModelDeploymentSpec, dict(md["spec"])), rt.settings)
            except SpecError:
                continue
            await apply_children(md, spec, finetunejobs, serving_configmaps, serving_deployments)
            await refresh_status(md, finetunejobs, serving_configmaps, serving_deployments, serving_pods)


@kopf.on.event("apps", "v1", "deployments", labels=SERVING)
@kopf.on.event("", "v1", "pods", labels=SERVING)
async def serving_child_changed(labels: dict[str, str], namespace: str, modeldeployments: kopf.Index, finetunejobs: kopf.Index,
                                serving_configmaps: kopf.Index, serving_deployments: kopf.Index, serving_pods: kopf.Index, **_: Any) -> None:
    md = first(modeldeployments, (namespace, labels.get(c.LABEL_MODELDEPLOYMENT)))
    if md is not None and not md["metadata"].get("deletionTimestamp"):
        await refresh_status(md, finetunejobs, serving_configmaps, serving_deployments, serving_pods)


@kopf.timer(*MD, interval=5, initial_delay=5)
async def poll_sidecars(body: Any, finetunejobs: kopf.Index, serving_configmaps: kopf.Index, serving_deployments: kopf.Index,
                        serving_pods: kopf.Index, **_: Any) -> None:
    """Adapters load inside the pods without any Kubernetes event: ask the sidecars every few seconds."""
    await refresh_status(body, finetunejobs, serving_configmaps, serving_deployments, serving_pods)


@kopf.on.event(*MD)
def modeldeployment_event(type: str, uid: str, **_: Any) -> None:
    if type == "DELETED":
        runtime().forget(uid)
