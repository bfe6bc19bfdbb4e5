"""/v1/models (list, retrieve, delete) and serving API jobs' models in the platform's shared ModelDeployments.

A tenant sees the base models its key allows (settings.baseModels ∩ limits.allowedBaseModels) and the models of
its own gateway-created FineTuneJobs that succeeded (`ft:<base>:<namespace>:<suffix>:<job>`, kubetune.gateway.routing).
Another tenant's model is answered exactly like a model that does not exist (404), as OpenAI does.

Serving: a job that succeeded is added to the shared ModelDeployment of its base model
(settings.baseModels.<name>.serving) as an adapter by URI (its status.adapter.uri): a JSON patch of that one
entry of the ModelDeployment's spec.adapters, guarded by the resourceVersion it was computed from, so it never
touches the other entries or what the platform team set. The operator and the adapter-sync sidecar then hot-load it (no restart). Jobs are added by a
background loop (every PROMOTE_INTERVAL s, over the tenants seen by this gateway) and, at the latest, by the first
inference request for the model, which waits up to ROUTE_WAIT s for the adapter to be Ready.
DELETE /v1/models/{ft:...} removes the entry (the adapter stops being served) and marks the job's model
deleted (annotation), so it is neither listed nor added again; the job and its files stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI

from ..clients.kube import KubeError
from ..plan.serving_entries import entry_patch
from .app import Gateway, GatewayDep
from .errors import OpenAIError
from .metrics import WAITING, record_job
from .jobview import LABEL_API
from .routing import (ANNOTATION_MODEL_DELETED, GATEWAY_ADAPTER, FineTunedName, Miss, Route, Unroutable, adapter_name,
                      job_model, parse_fine_tuned, route_adapter, route_base, succeeded)
from .tenancy import Tenant, TenantDep

log = logging.getLogger(__name__)
API = "/apis/kubetune.io/v1alpha1"
PROMOTE_INTERVAL = 2.0
ROUTE_WAIT = 30.0

# Namespaces of the tenants that called this gateway since it started: the promotion loop's scope.
SEEN_TENANTS: set[str] = set()


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{model}` does not exist or you do not have access to it.", param="model",
                       code="model_not_found")


def _unix(timestamp: str | None) -> int:
    if not timestamp:
        return 0
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp())


def _card(model_id: str, created: int, owned_by: str, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by, **extra}


async def _get(gw: Gateway, path: str) -> dict[str, Any] | None:
    try:
        return await gw.kube.request("GET", path)
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise OpenAIError(503, "The Kubernetes API is unavailable; retry shortly.", code="service_unavailable") from None


# Reads on the inference path are cached briefly, so a request costs no API-server call in the steady state: a
# ModelDeployment for MD_TTL s (its status changes when adapters load; a loading wait reads it fresh), a job for
# JOB_TTL s (its model cannot change once it succeeded; a DELETE through this replica drops the entry at once).
MD_TTL, JOB_TTL = 1.0, 5.0


def _cache(gw: Gateway) -> dict[str, tuple[float, dict[str, Any] | None]]:
    """This app's cache (kept on its Gateway: two apps in one process share nothing)."""
    return gw.__dict__.setdefault("_models_cache", {})


async def _cached(gw: Gateway, path: str, ttl: float) -> dict[str, Any] | None:
    cache = _cache(gw)
    hit = cache.get(path)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    found = await _get(gw, path)
    if len(cache) > 10_000:
        cache.clear()
    cache[path] = (time.monotonic() + ttl, found)
    return found


async def deployment(gw: Gateway, base: str, ttl: float = 0.0) -> dict[str, Any] | None:
    ref = gw.settings.base_models[base].serving
    if ref is None:
        return None
    path = f"{API}/namespaces/{ref.namespace}/modeldeployments/{ref.name}"
    return await (_cached(gw, path, ttl) if ttl else _get(gw, path))


async def tenant_jobs(gw: Gateway, namespace: str) -> list[dict[str, Any]]:
    found = await gw.kube.request("GET", f"{API}/namespaces/{namespace}/finetunejobs",
                                  query=[("labelSelector", f"{LABEL_API}=openai")])
    return list((found or {}).get("items") or [])


def _servable(gw: Gateway, ftj: dict[str, Any]) -> FineTunedName | None:
    """The job's model if it is one to serve now: gateway-created, succeeded, published, not deleted, on a base
    model that is still offered."""
    name = job_model(ftj)
    if name is None or not succeeded(ftj) or name.base not in gw.settings.base_models:
        return None
    if (ftj["metadata"].get("annotations") or {}).get(ANNOTATION_MODEL_DELETED) == "true":
        return None
    return name if ((ftj.get("status") or {}).get("adapter") or {}).get("uri") else None


async def _patch_entries(gw: Gateway, base: str, adapter: str, entry: dict[str, Any] | None) -> None:
    """Set (entry) or remove (None) this adapter's entry of the shared ModelDeployment's spec.adapters, and nothing
    else: a JSON patch that first tests the resourceVersion it was computed from, retried on a fresh read when the
    object changed in between (422/409), so concurrent gateways and the platform team's edits are never lost."""
    ref = gw.settings.base_models[base].serving
    path = f"{API}/namespaces/{ref.namespace}/modeldeployments/{ref.name}"
    for _ in range(8):
        md = await _get(gw, path)
        if md is None:
            return
        ops = entry_patch(md, adapter, entry)
        if ops is None:
            return
        try:
            await gw.kube.request("PATCH", path, ops, "application/json-patch+json")
            return
        except KubeError as exc:
            if exc.status not in (409, 422):
                raise
    raise OpenAIError(503, "The model's deployment kept changing; retry.", code="service_unavailable")


async def serve(gw: Gateway, ftj: dict[str, Any], md: dict[str, Any] | None = None) -> bool:
    """Add a succeeded job's adapter to its base model's shared ModelDeployment, if it is not there. True when the
    ModelDeployment lists it (now or already)."""
    name = _servable(gw, ftj)
    if name is None or gw.settings.base_models[name.base].serving is None:
        return False
    md = md or await deployment(gw, name.base)
    if md is None:
        return False
    adapter = adapter_name(name.namespace, name.job)
    uri = ftj["status"]["adapter"]["uri"]
    if any(a.get("name") == adapter and a.get("uri") == uri for a in (md.get("spec") or {}).get("adapters") or []):
        return True
    await _patch_entries(gw, name.base, adapter, {"name": adapter, "uri": uri})
    log.info("serving %s as adapter %s of ModelDeployment %s/%s", name, adapter, md["metadata"]["namespace"],
             md["metadata"]["name"])
    return True


async def promote_once(gw: Gateway) -> int:
    """One pass of the promotion loop: serve every servable job of the tenants seen, and export their accounting
    (kubetune.gateway.metrics). Returns how many are served."""
    served = 0
    mds: dict[str, dict[str, Any] | None] = {}
    for namespace in sorted(SEEN_TENANTS):
        for ftj in await tenant_jobs(gw, namespace):
            if (public := job_model(ftj)) is not None:
                record_job(namespace, ftj["metadata"]["name"], str(public), ftj.get("status") or {})
            name = _servable(gw, ftj)
            if name is None:
                continue
            if name.base not in mds:
                mds[name.base] = await deployment(gw, name.base)
            served += await serve(gw, ftj, mds[name.base])
    return served


@contextlib.asynccontextmanager
async def _promotion(app: FastAPI) -> AsyncIterator[None]:
    async def loop() -> None:
        while True:
            try:
                await promote_once(app.state.gateway)
            except Exception:  # noqa: BLE001 - the loop must outlive one failed pass (API down, a bad object)
                log.exception("promoting finished jobs' models failed; retrying")
            await asyncio.sleep(PROMOTE_INTERVAL)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


router = APIRouter(lifespan=_promotion)


def _base_allowed(gw: Gateway, who: Tenant, model: str) -> bool:
    return model in gw.settings.base_models and who.limits.allows_model(model)


async def _own_job(gw: Gateway, who: Tenant, model: str, cached: bool = False) -> tuple[FineTunedName, dict[str, Any]]:
    """The tenant's job behind an ft: name whose model exists (succeeded, not deleted); 404 otherwise."""
    name = parse_fine_tuned(model)
    if name is None or name.namespace != who.namespace:
        raise model_not_found(model)
    path = f"{API}/namespaces/{who.namespace}/finetunejobs/{name.job}"
    ftj = await (_cached(gw, path, JOB_TTL) if cached else _get(gw, path))
    if ftj is None or _servable(gw, ftj) != name:
        raise model_not_found(model)
    return name, ftj


def _ft_card(name: FineTunedName, ftj: dict[str, Any]) -> dict[str, Any]:
    return _card(str(name), _unix((ftj.get("status") or {}).get("completionTime")), name.namespace, parent=name.base)


@router.get("/v1/models")
async def list_models(who: TenantDep, gw: GatewayDep) -> dict[str, Any]:
    SEEN_TENANTS.add(who.namespace)
    data = [_card(name, 0, "kubetune") for name in sorted(gw.settings.base_models) if _base_allowed(gw, who, name)]
    data += [_card(name, 0, "kubetune", parent=base) for name, (base, _) in sorted((await platform_adapters(gw, who)).items())]
    for ftj in await tenant_jobs(gw, who.namespace):
        if (name := _servable(gw, ftj)) is not None:
            data.append(_ft_card(name, ftj))
    return {"object": "list", "data": data}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, who: TenantDep, gw: GatewayDep) -> dict[str, Any]:
    SEEN_TENANTS.add(who.namespace)
    if _base_allowed(gw, who, model):
        return _card(model, 0, "kubetune")
    if parse_fine_tuned(model) is None and (found := (await platform_adapters(gw, who)).get(model)) is not None:
        return _card(model, 0, "kubetune", parent=found[0])
    return _ft_card(*await _own_job(gw, who, model))


@router.delete("/v1/models/{model:path}")
async def delete_model(model: str, who: TenantDep, gw: GatewayDep) -> dict[str, Any]:
    """OpenAI's delete of a fine-tuned model: it stops being served and listed. A base model cannot be deleted."""
    if _base_allowed(gw, who, model):
        raise OpenAIError(403, f"The model `{model}` is a base model of the platform: only fine-tuned models can be "
                          "deleted.", param="model", code="model_not_deletable")
    name, ftj = await _own_job(gw, who, model)
    await gw.kube.merge_patch(ftj, {"metadata": {"annotations": {ANNOTATION_MODEL_DELETED: "true"}}})
    _cache(gw).pop(f"{API}/namespaces/{who.namespace}/finetunejobs/{name.job}", None)
    if gw.settings.base_models[name.base].serving is not None:
        await _patch_entries(gw, name.base, adapter_name(name.namespace, name.job), None)
    return {"id": model, "object": "model", "deleted": True}


async def resolve(gw: Gateway, who: Tenant, model: str, wait: float = ROUTE_WAIT) -> Route:
    """Where `model` is served for this tenant; a fine-tuned model is added to its ModelDeployment if it is not yet
    and waited for (up to `wait` s) while it loads; a ModelDeployment with no ready replica (scaled to zero, or
    starting) is waited for up to settings.coldStartSeconds (_routable). Raises OpenAIError: 404 (unknown, another
    tenant's, not served), 503 (no ModelDeployment, not ready, still loading after the wait)."""
    SEEN_TENANTS.add(who.namespace)
    if _base_allowed(gw, who, model):
        if gw.settings.base_models[model].serving is None:
            raise OpenAIError(404, f"The model `{model}` is offered for fine-tuning only: no deployment serves it.",
                              param="model", code="model_not_found")
        return await _routable(gw, model, model, route_base, wait)
    if parse_fine_tuned(model) is None:
        found = (await platform_adapters(gw, who)).get(model)
        if found is None:
            raise model_not_found(model)
        return await _routable(gw, model, found[0], lambda md: route_adapter(md, model), wait)
    name, ftj = await _own_job(gw, who, model, cached=True)
    if gw.settings.base_models[name.base].serving is None:
        raise OpenAIError(404, f"The model `{model}` is not served: its base model `{name.base}` is offered for "
                          "fine-tuning only.", param="model", code="model_not_found")
    adapter = adapter_name(name.namespace, name.job)
    return await _routable(gw, model, name.base, lambda md: route_adapter(md, adapter), wait,
                           on_miss=lambda md: serve(gw, ftj, md))


async def _routable(gw: Gateway, model: str, base: str, route: Callable[[dict[str, Any] | None], Route | Unroutable],
                    wait: float, on_miss: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> Route:
    """Route `model` on the ModelDeployment serving `base`. An adapter still loading (Miss.LOADING) is waited for up
    to `wait` s, reading the ModelDeployment fresh every 0.25 s. A ModelDeployment with no ready replica
    (Miss.NOT_READY: KEDA scaled it to zero, or its pods are starting) holds the request up to
    settings.coldStartSeconds, reading it every 0.5 s through the MD_TTL cache (many held requests, one read a
    second), and counts it in GATEWAY_WAITING_METRIC while it waits: that is what wakes a ScaledObject at zero
    (builders.scaling.wake_trigger). `on_miss(md)` runs on every miss (adding an API job's adapter to it)."""
    ref = gw.settings.base_models[base].serving
    assert ref is not None
    started = time.monotonic()
    ttl, held = MD_TTL, None
    try:
        while True:
            md = await deployment(gw, base, ttl)
            found = route(md)
            if isinstance(found, Route):
                return found
            if on_miss is not None and md is not None:
                await on_miss(md)
            if found.miss == Miss.NOT_READY:
                if held is None:
                    held = WAITING.labels(ref.namespace, ref.name)
                    held.inc()
                deadline, pause, ttl = gw.settings.cold_start_seconds, 0.5, MD_TTL
            elif found.miss == Miss.LOADING:
                deadline, pause, ttl = wait, 0.25, 0.0  # not routable from what was cached: read fresh from now on
            else:
                return _routed(model, found)
            if time.monotonic() - started >= deadline:
                return _routed(model, found)
            await asyncio.sleep(pause)
    finally:
        if held is not None:
            held.dec()


async def platform_adapters(gw: Gateway, who: Tenant) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (base model, its ModelDeployment) of the adapters the platform team lists by name (e.g. a versioned
    `support-bot`, docs/promotion.md) on the shared ModelDeployments of the base models this tenant may use. The
    entries the gateway adds for API jobs (adapter_name: `ft-<hash>-...`) are reached only by their owner's ft: name."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for base in sorted(gw.settings.base_models):
        if not _base_allowed(gw, who, base) or gw.settings.base_models[base].serving is None:
            continue
        md = await deployment(gw, base, MD_TTL)
        for entry in ((md or {}).get("spec") or {}).get("adapters") or []:
            if not GATEWAY_ADAPTER.match(entry.get("name") or "ft-0000000000-"):
                found.setdefault(entry["name"], (base, md))  # type: ignore[arg-type]
    return found


def _routed(model: str, found: Route | Unroutable) -> Route:
    if isinstance(found, Route):
        return found
    status = 500 if found.miss == Miss.FAILED else 503
    raise OpenAIError(status, f"The model `{model}` cannot answer now: {found.message}.", param="model",
                      code="model_not_ready", headers={"Retry-After": "5"} if status == 503 else None)
