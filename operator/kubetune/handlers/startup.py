"""Operator start-up: kopf settings and the shared runtime."""

from __future__ import annotations

import gc
import logging
from typing import Any

import kopf

from ..api import constants as c
from .runtime import log, reset, runtime
from .scaling import CHILD_RESOURCES as SCALING_RESOURCES


# The young generation's threshold of CPython's garbage collector (its default: 700 allocations); see tune_gc.
GC_YOUNG_THRESHOLD = 10_000

CHILD_RESOURCES = [("", "v1", "configmaps"), ("", "v1", "serviceaccounts"), ("", "v1", "services"), ("", "v1", "pods"),
                   ("batch", "v1", "jobs"), ("apps", "v1", "deployments"), ("rbac.authorization.k8s.io", "v1", "roles"),
                   ("rbac.authorization.k8s.io", "v1", "rolebindings")]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    reset()
    # Only our explicit, transition-based Events are posted; kopf's log lines stay in the log.
    settings.posting.level = logging.CRITICAL + 10
    # kopf keeps its bookkeeping in annotations with our prefix, never in status (the schema prunes it).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=c.GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = c.FINALIZER
    # The children's kinds are watched for the operator's own objects only (its label, filtered by the API server):
    # kopf filters a handler's labels= client-side, so every Pod, ConfigMap, ... of the cluster went through its
    # per-event worker. Every handler on these kinds asks for this label (MANAGED, TRAINER, PREFLIGHT, SERVING).
    for resource in [*CHILD_RESOURCES, *SCALING_RESOURCES]:
        settings.watching.label_selectors[resource] = f"{c.LABEL_MANAGED_BY}={c.MANAGED_BY_VALUE}"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    # One asyncio worker per object with pending events, unlimited: a worker lingers for kopf's idle
    # timeout (5 s) after its last event, so a cap of N made the (N+1)th new object wait seconds for
    # its Job (bench/operator_scale.py burst: p50 6.9 s with a cap of 64, 1.3 s without). API
    # concurrency stays bounded by the client's connection pool (clients/kube.py WORKERS).
    settings.queueing.worker_limit = None
    tune_gc()


def tune_gc() -> None:
    """Keep the garbage collector's full collections short and rare. The operator's heap starts with about 115 k
    objects from its imports (kopf, the kubernetes client's config loading, pydantic's schemas) that never become
    garbage, and each full collection walked them all: in a burst of creates (bench/operator_scale.py) one ran every
    2-3 s and held the event loop for 120-185 ms, which every event in flight waited out (most of the burst's p99).
    Frozen here, before the first watch starts, they are never walked again; a young generation of GC_YOUNG_THRESHOLD
    allocations instead of 700 makes the collections of the older generations, which follow from the young ones,
    rarer. What is garbage now is collected first, so that none of it is kept."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    log.info("garbage collector: %d objects from start-up frozen; thresholds %s", gc.get_freeze_count(), gc.get_threshold())


@kopf.on.cleanup()
async def close_client(**_: Any) -> None:
    """The API client's connections (kopf's own are kopf's)."""
    await runtime().kube.close()
