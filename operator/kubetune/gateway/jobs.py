"""/v1/fine_tuning/jobs: OpenAI's fine-tuning jobs as FineTuneJobs in the tenant's namespace.

A job is a FineTuneJob named by its id (`ftjob-<24 [a-z0-9]>`), labelled kubetune.io/api=openai, with what the
request asked for in the kubetune.io/openai annotation; the operator runs it like any other. Cancel sets
spec.cancel, pause/resume set spec.suspend (merge patches, as a user's kubectl patch would).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from kubetune_storage import StorageError
from pydantic import BaseModel, ConfigDict, Field

from ..api import constants as c
from ..api.finetunejob import FineTuneJobSpec
from ..api.methods import METHODS, default_learning_rate
from ..api.validation import SpecError, parse
from ..clients.kube import KubeError, collection_path
from . import jobview
from .app import Gateway, GatewayDep
from .errors import OpenAIError, bad_request, forbidden, not_found, rate_limited
from .files import OPENAI_METHODS, data_uri, load_meta, page
from .tenancy import Tenant, TenantDep

router = APIRouter()
MIN_EXAMPLES = 10  # the trainer's minimum (kubetune_trainer.data.MIN_EXAMPLES): refused here, not an hour later
_create_locks: dict[str, asyncio.Lock] = {}  # one create at a time per tenant: the concurrency limit holds


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hyper(Strict):
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=1024)] = "auto"
    learning_rate_multiplier: Literal["auto"] | Annotated[float, Field(gt=0, le=100)] = "auto"
    n_epochs: Literal["auto"] | Annotated[int, Field(ge=1, le=100)] = "auto"
    beta: Literal["auto"] | Annotated[float, Field(gt=0, le=100)] = "auto"


class MethodOptions(Strict):
    hyperparameters: Hyper | None = None


class MethodRequest(Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: MethodOptions | None = None
    dpo: MethodOptions | None = None
    reinforcement: dict[str, Any] | None = None


class CreateJob(Strict):
    model: str = Field(max_length=256)
    training_file: str = Field(max_length=64)
    validation_file: str | None = Field(default=None, max_length=64)
    hyperparameters: Hyper | None = None
    method: MethodRequest | None = None
    suffix: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    integrations: list[dict[str, Any]] | None = None


def new_job_id() -> str:
    return "ftjob-" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(24))


def path(namespace: str, name: str = "") -> str:
    base = collection_path(c.API_VERSION, c.FINETUNEJOB_KIND, namespace)
    return f"{base}/{name}" if name else base


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _hyper(req: CreateJob, kind: str) -> Hyper:
    options = getattr(req.method, kind, None) if req.method else None
    if options and options.hyperparameters and req.hyperparameters:
        raise bad_request("Give hyperparameters either at the top level or in method, not both.", param="hyperparameters")
    return (options.hyperparameters if options and options.hyperparameters else req.hyperparameters) or Hyper()


async def _check_files(gw: Gateway, who: Tenant, req: CreateJob, method: str) -> tuple[dict, dict | None]:
    train = await _file(gw, who, req.training_file, "training_file")
    valid = await _file(gw, who, req.validation_file, "validation_file") if req.validation_file else None
    for param, meta in (("training_file", train), ("validation_file", valid)):
        if meta and meta["format"] not in METHODS[method].formats:
            raise bad_request(f"{param} {meta['id']} holds {meta['format']} data; method "
                              f"{next(o for o, m in OPENAI_METHODS.items() if m == method)} trains on "
                              f"{', '.join(METHODS[method].formats)} data.", param=param, code="invalid_" + param)
    if train["examples"] < MIN_EXAMPLES:
        raise bad_request(f"Training file {train['id']} has {train['examples']} example(s), but must have at least "
                          f"{MIN_EXAMPLES}.", param="training_file", code="invalid_training_file")
    return train, valid


async def _file(gw: Gateway, who: Tenant, file_id: str, param: str) -> dict[str, Any]:
    try:
        return await load_meta(gw, who, file_id, param)
    except OpenAIError as exc:
        if exc.status != 404:
            raise
        raise bad_request(f"Invalid {param}: {file_id} (no such file).", param=param, code=f"invalid_{param}") from None


def build_spec(gw: Gateway, req: CreateJob, method: str, hp: Hyper, train_uri: str, valid_uri: str | None) -> dict:
    entry = gw.settings.base_models[req.model]
    adapter = "adapter"
    spec: dict[str, Any] = {
        "baseModel": entry.model_dump(by_alias=True, exclude_none=True, exclude={"resources", "serving"}, mode="json"),
        "dataset": {"train": train_uri, **({"validation": valid_uri} if valid_uri else {})},
        "method": {"type": method}, "hyperparameters": {},
    }
    if entry.resources is not None:
        spec["resources"] = entry.resources.to_dict()
    spec = deep_merge(gw.settings.job, spec)
    h = spec["hyperparameters"]
    if hp.n_epochs != "auto":
        h["epochs"] = hp.n_epochs
    if hp.batch_size != "auto":
        h["batchSize"] = hp.batch_size
    if (spec.get("adapter") or {}).get("type") == "full":
        adapter = "full"
    if hp.learning_rate_multiplier != "auto":
        h["learningRate"] = f"{float(default_learning_rate(method, adapter)) * hp.learning_rate_multiplier:.6g}"
    if req.seed is not None:
        h["seed"] = req.seed
    if hp.beta != "auto":
        if method != "dpo":
            raise bad_request("beta is a dpo hyperparameter.", param="method.supervised.hyperparameters.beta")
        spec["method"]["dpo"] = {"beta": f"{hp.beta:.6g}"}
    return spec


def gpus(spec: dict[str, Any]) -> int:
    res = spec.get("resources") or {}
    return int(res.get("gpus") or 0) * int(res.get("nodes") or 1)


async def _active(gw: Gateway, who: Tenant) -> int:
    items = (await gw.kube.request("GET", path(who.namespace), query=[("labelSelector", f"{jobview.LABEL_API}=openai")]))["items"]
    return sum(jobview.openai_status(ftj) not in jobview.TERMINAL for ftj in items)


@router.post("/v1/fine_tuning/jobs")
async def create_job(req: CreateJob, who: TenantDep, gw: GatewayDep) -> dict[str, Any]:
    kind = req.method.type if req.method else "supervised"
    if kind not in OPENAI_METHODS:
        raise bad_request(f"Method {kind} is not supported here (supported: {', '.join(OPENAI_METHODS)}).", param="method.type")
    if kind not in who.limits.allowed_methods:
        raise forbidden(f"Your key may not use method {kind} (allowed: {', '.join(who.limits.allowed_methods) or 'none'}).",
                        param="method.type", code="method_not_allowed")
    if req.model not in gw.settings.base_models:
        raise bad_request(f"Model {req.model} is not available for fine-tuning (available: "
                          f"{', '.join(sorted(gw.settings.base_models)) or 'none'}).", param="model", code="model_not_available")
    if not who.limits.allows_model(req.model):
        raise forbidden(f"Your key may not fine-tune {req.model}.", param="model", code="model_not_allowed")
    if req.integrations:
        raise bad_request("Integrations are not supported.", param="integrations")
    method = OPENAI_METHODS[kind]
    hp = _hyper(req, kind)
    train, valid = await _check_files(gw, who, req, method)
    spec = build_spec(gw, req, method, hp, data_uri(gw, who, train), data_uri(gw, who, valid) if valid else None)
    try:
        parse(FineTuneJobSpec, spec)
    except SpecError as exc:
        raise bad_request("The job is invalid: " + "; ".join(exc.problems), code="invalid_job") from None
    if gpus(spec) > who.limits.max_gpus_per_job:
        raise forbidden(f"Jobs on {req.model} use {gpus(spec)} GPUs; your key allows {who.limits.max_gpus_per_job} per job.",
                        param="model", code="gpu_limit")
    job_id = new_job_id()
    asked = {"model": req.model, "training_file": train["id"], "validation_file": valid["id"] if valid else None,
             "suffix": req.suffix, "metadata": req.metadata, "method": kind,
             "hyperparameters": hp.model_dump(mode="json")}
    body = {"apiVersion": c.API_VERSION, "kind": c.FINETUNEJOB_KIND,
            "metadata": {"name": job_id, "namespace": who.namespace, "labels": {jobview.LABEL_API: "openai"},
                         "annotations": {jobview.ANNOTATION: json.dumps(asked, sort_keys=True)}},
            "spec": spec}
    async with _create_locks.setdefault(who.namespace, asyncio.Lock()):
        active = await _active(gw, who)
        if active >= who.limits.max_concurrent_jobs:
            raise rate_limited(f"You have {active} fine-tuning job(s) running or queued; your key allows "
                               f"{who.limits.max_concurrent_jobs} at once. Wait for one to finish or cancel one.",
                               code="concurrent_jobs_limit")
        created = await gw.kube.request("POST", path(who.namespace), body, query=[("fieldManager", "kubetune-gateway")])
    return jobview.job_object(created)


async def get_job(gw: Gateway, who: Tenant, job_id: str) -> dict[str, Any]:
    """One of this tenant's API-created FineTuneJobs; 404 in OpenAI's shape otherwise."""
    if not jobview.JOB_ID.fullmatch(job_id or ""):
        raise not_found("job", job_id)
    try:
        ftj = await gw.kube.request("GET", path(who.namespace, job_id))
    except KubeError as exc:
        if exc.status == 404:
            raise not_found("job", job_id) from None
        raise
    if (ftj["metadata"].get("labels") or {}).get(jobview.LABEL_API) != "openai":
        raise not_found("job", job_id)
    return ftj


def metadata_filter(query: list[tuple[str, str]]) -> dict[str, str] | None | Literal[False]:
    """OpenAI's job-list filter from the raw query: ``metadata[k]=v`` pairs (all must match; ``metadata[k]=``
    matches an empty value), ``metadata=null`` (jobs created without metadata), neither -> False (no filter).
    Mixing the two forms is a 400, as OpenAI documents ("Do not combine the two query forms")."""
    pairs = {k[len("metadata["):-1]: v for k, v in query if k.startswith("metadata[") and k.endswith("]")}
    null = any(k == "metadata" for k, _ in query)
    if null and (pairs or dict(query).get("metadata") != "null"):
        raise bad_request("metadata: use either metadata[key]=value pairs or metadata=null, not both "
                          "(and metadata alone only as metadata=null).", param="metadata")
    if any(not k for k in pairs):
        raise bad_request("metadata[]: the key inside the brackets is empty.", param="metadata")
    return None if null else (pairs or False)


def matches(job: dict[str, Any], wanted: dict[str, str] | None | Literal[False]) -> bool:
    if wanted is False:
        return True
    have = job.get("metadata")
    if wanted is None:
        return not have
    return all((have or {}).get(k) == v for k, v in wanted.items())


async def api_jobs(gw: Gateway, who: Tenant) -> list[dict[str, Any]]:
    """This tenant's FineTuneJobs created through the API."""
    return (await gw.kube.request("GET", path(who.namespace), query=[("labelSelector", f"{jobview.LABEL_API}=openai")]))["items"]


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(request: Request, who: TenantDep, gw: GatewayDep, after: str | None = None,
                    limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    wanted = metadata_filter(list(request.query_params.multi_items()))
    items = await api_jobs(gw, who)
    jobs = sorted((j for j in map(jobview.job_object, items) if matches(j, wanted)),
                  key=lambda j: (j["created_at"], j["id"]), reverse=True)
    return page(jobs, after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def retrieve_job(job_id: str, who: TenantDep, gw: GatewayDep) -> dict[str, Any]:
    return jobview.job_object(await get_job(gw, who, job_id))


async def _patch(gw: Gateway, ftj: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    return await gw.kube.merge_patch(ftj, {"spec": spec})


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, who: TenantDep, gw: GatewayDep) -> dict[str, Any]:
    ftj = await get_job(gw, who, job_id)
    status = jobview.openai_status(ftj)
    if status in ("succeeded", "failed"):
        raise bad_request(f"Job {job_id} has already {status}: there is nothing to cancel.", code="job_finished")
    return jobview.job_object(await _patch(gw, ftj, {"cancel": True}))


@router.post("/v1/fine_tuning/jobs/{job_id}/pause")
async def pause_job(job_id: str, who: TenantDep, gw: GatewayDep) -> dict[str, Any]:
    ftj = await get_job(gw, who, job_id)
    if jobview.openai_status(ftj) in jobview.TERMINAL:
        raise bad_request(f"Job {job_id} is {jobview.openai_status(ftj)}: only a running or queued job can be paused.")
    return jobview.job_object(await _patch(gw, ftj, {"suspend": True}))


@router.post("/v1/fine_tuning/jobs/{job_id}/resume")
async def resume_job(job_id: str, who: TenantDep, gw: GatewayDep) -> dict[str, Any]:
    ftj = await get_job(gw, who, job_id)
    if not ftj["spec"].get("suspend"):
        raise bad_request(f"Job {job_id} is not paused.")
    return jobview.job_object(await _patch(gw, ftj, {"suspend": False}))


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def job_events(job_id: str, who: TenantDep, gw: GatewayDep, after: str | None = None,
                     limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
    ftj = await get_job(gw, who, job_id)
    selector = f"involvedObject.kind={c.FINETUNEJOB_KIND},involvedObject.name={job_id}"
    events = (await gw.kube.request("GET", f"/api/v1/namespaces/{who.namespace}/events",
                                    query=[("fieldSelector", selector)]))["items"]
    events = [e for e in events if e.get("involvedObject", {}).get("uid") in (None, ftj["metadata"].get("uid"))]
    return page(jobview.job_events(ftj, events), after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def job_checkpoints(job_id: str, who: TenantDep, gw: GatewayDep, after: str | None = None,
                          limit: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
    ftj = await get_job(gw, who, job_id)
    found = sorted((ftj.get("status") or {}).get("checkpoints") or [], key=lambda ck: ck["step"], reverse=True)

    def history(uri: str) -> list[dict[str, Any]]:
        try:  # the Trainer's own log in the checkpoint
            raw = gw.storage.open(uri).read_optional("trainer_state.json")
            return (json.loads(raw).get("log_history") or []) if raw else []
        except (StorageError, ValueError):  # metrics are a bonus: a checkpoint without them is still listed
            return []

    out = []
    for ck in found:
        out.append(jobview.checkpoint_object(ftj, ck["step"], await asyncio.to_thread(history, ck["uri"])))
    return page(out, after, limit)
