"""Operator start-up: kopf settings and the shared runtime."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..api import constants as c
from .runtime import reset, runtime
from .scaling import CHILD_RESOURCES as SCALING_RESOURCES


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


@kopf.on.cleanup()
async def close_client(**_: Any) -> None:
    """The API client's connections (kopf's own are kopf's)."""
    await runtime().kube.close()
