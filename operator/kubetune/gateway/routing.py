"""Model names and where each one is served. Pure: no I/O.

Public names (what a tenant sends as OpenAI's `model`):

- a base model: its name in the gateway settings (`baseModels`), served by the platform's shared
  ModelDeployment for it (`baseModels.<name>.serving`); vLLM serves it under the ModelDeployment's name;
- a fine-tuned model: ``ft:<base>:<tenant namespace>:<suffix>:<job id>`` (OpenAI's ``ft:<base>:<org>:<suffix>:<id>``,
  kubetune.gateway.jobview.fine_tuned_model), where the job id is the FineTuneJob's name in the tenant's namespace. It is served as a LoRA adapter of the same
  shared ModelDeployment, under `adapter_name(namespace, job)`: a DNS label (vLLM's and the ModelDeployment's
  adapter name) that is unique per (namespace, job) across tenants.

`route()` turns a public name into the ModelDeployment's endpoint and the name vLLM serves, from the
ModelDeployment's status (the operator's view of what is loaded: an adapter is Ready when every replica has it).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from . import jobview

FT_PREFIX = "ft:"
MAX_ADAPTER_NAME = 63
GATEWAY_ADAPTER = re.compile(r"^ft-[0-9a-f]{10}-")  # adapter_name's names: an API job's, reached by its ft: name only

# On a gateway-created FineTuneJob whose model was deleted (DELETE /v1/models/{model}): not listed, not served.
ANNOTATION_MODEL_DELETED = "kubetune.io/openai-model-deleted"


@dataclass(frozen=True)
class FineTunedName:
    base: str
    namespace: str
    suffix: str
    job: str

    def __str__(self) -> str:
        return jobview.fine_tuned_model(self.base, self.namespace, self.suffix, self.job)


def job_model(ftj: dict[str, Any]) -> FineTunedName | None:
    """The public model of a gateway-created FineTuneJob (labelled kubetune.io/api=openai, what it was asked for in
    its kubetune.io/openai annotation: kubetune.gateway.jobview), whether or not it has succeeded; None for others."""
    meta = ftj.get("metadata") or {}
    if (meta.get("labels") or {}).get(jobview.LABEL_API) != "openai":
        return None
    try:
        asked = jobview.request_of(ftj)
    except ValueError:  # an annotation that is not JSON: not a job this gateway made
        return None
    if not isinstance(asked.get("model"), str) or not asked["model"]:
        return None
    return FineTunedName(asked["model"], meta["namespace"], asked.get("suffix") or "", meta["name"])


def succeeded(ftj: dict[str, Any]) -> bool:
    return any(c.get("type") == "Succeeded" and c.get("status") == "True"
               for c in (ftj.get("status") or {}).get("conditions") or [])


def parse_fine_tuned(model: str) -> FineTunedName | None:
    """The parts of an ``ft:`` name, or None for any other name. Base, namespace and job hold no ':'; the suffix
    is what is between them (it may hold ':')."""
    if not model.startswith(FT_PREFIX):
        return None
    parts = model[len(FT_PREFIX):].split(":")
    if len(parts) < 4 or not all((parts[0], parts[1], parts[-1])):
        return None
    return FineTunedName(parts[0], parts[1], ":".join(parts[2:-1]), parts[-1])


def adapter_name(namespace: str, job: str) -> str:
    """The adapter's name in the shared ModelDeployment (and vLLM's model name for it), a DNS label:
    ``ft-<10 hex of sha256(namespace/job)>-<namespace>-<job>``, cut at 63 characters. The hash keeps names of
    different (namespace, job) pairs apart (a '-' join alone is ambiguous); the rest is for people reading
    `kubectl get modeldeployment`."""
    digest = hashlib.sha256(f"{namespace}/{job}".encode()).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9-]", "-", f"{namespace}-{job}".lower())
    name = f"ft-{digest}-{readable}"[:MAX_ADAPTER_NAME]
    return name.rstrip("-")


class Miss(StrEnum):
    """Why a name does not route (the gateway turns each into an OpenAI error)."""

    UNKNOWN = "unknown"  # no such model for this tenant (404, also for another tenant's model)
    NOT_SERVED = "not_served"  # a base model offered for fine-tuning only (404)
    NO_DEPLOYMENT = "no_deployment"  # the configured ModelDeployment does not exist (503)
    LOADING = "loading"  # the adapter is not Ready on every replica yet (503, retry)
    FAILED = "failed"  # the ModelDeployment reports the adapter Failed/Rejected (503/500)
    NOT_READY = "not_ready"  # no ready replica / no endpoint yet (503)


@dataclass(frozen=True)
class Route:
    url: str  # the ModelDeployment's OpenAI base URL (status.endpoint), ending in /v1
    served: str  # the name vLLM serves it under: the ModelDeployment's name, or the adapter's name
    namespace: str  # the ModelDeployment's namespace and name (for its API key Secret, logs)
    deployment: str
    version: str | None = None  # the adapter version that answers (a versioned adapter: docs/promotion.md)


@dataclass(frozen=True)
class Unroutable:
    miss: Miss
    message: str


def route_base(md: dict[str, Any] | None) -> Route | Unroutable:
    """The base model of a ModelDeployment: vLLM serves it under the ModelDeployment's name."""
    return _ready(md, (md or {}).get("metadata", {}).get("name", ""))


def pick_version(promotion: dict[str, Any], adapter: str, draw: Callable[[], float] = random.random) -> tuple[str, str | None]:
    """(the name vLLM serves it under, the version) for one request to a versioned adapter: its canary, once loaded
    on every replica, for `weight` % of the draws (draw() in [0, 1)), else the version served under its own name."""
    canary = promotion.get("canary") or {}
    if canary.get("ready") and draw() * 100 < int(canary.get("weight") or 0):
        return canary["servedName"], canary.get("version")
    return adapter, promotion.get("serving") or None


def route_adapter(md: dict[str, Any] | None, adapter: str, draw: Callable[[], float] = random.random) -> Route | Unroutable:
    """One adapter of a ModelDeployment, once its status says it is Ready (loaded on every replica). A gated or
    versioned one (status promotion) answers while some version serves its name on every replica, even while a
    newer one is Gated or loading; its canary gets its weight's share of the requests (pick_version)."""
    if md is None:
        return Unroutable(Miss.NO_DEPLOYMENT, "the ModelDeployment serving its base model does not exist")
    if not (md.get("status") or {}).get("readyReplicas"):  # scaled to zero or starting: no adapter is loaded anywhere
        return _ready(md, adapter)
    entry = next((a for a in (md.get("status") or {}).get("adapters") or [] if a.get("name") == adapter), None)
    if entry is None:
        return Unroutable(Miss.LOADING, "it is being added to its ModelDeployment")
    promotion = entry.get("promotion") or {}
    if promotion.get("serving") is not None:
        served, version = pick_version(promotion, adapter, draw)
        found = _ready(md, served)
        return Route(found.url, found.served, found.namespace, found.deployment, version) if isinstance(found, Route) else found
    state = entry.get("state")
    if state in ("Failed", "Rejected", "Gated"):  # Gated with no earlier version serving the name
        return Unroutable(Miss.FAILED, f"its ModelDeployment cannot serve it ({state}: {entry.get('message') or 'no detail'})")
    if state != "Ready":
        detail = f": {entry['message']}" if entry.get("message") else ""
        return Unroutable(Miss.LOADING, f"it is loading ({state}{detail})")
    return _ready(md, adapter)


def _ready(md: dict[str, Any] | None, served: str) -> Route | Unroutable:
    if md is None:
        return Unroutable(Miss.NO_DEPLOYMENT, "the ModelDeployment serving it does not exist")
    status = md.get("status") or {}
    meta = md["metadata"]
    if not status.get("endpoint") or not status.get("readyReplicas"):
        return Unroutable(Miss.NOT_READY, f"ModelDeployment {meta['namespace']}/{meta['name']} has no ready replica yet")
    return Route(status["endpoint"].rstrip("/"), served, meta["namespace"], meta["name"])
