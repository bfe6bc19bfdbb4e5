"""kopf indexes and events of a ModelDeployment's scaling children (builders/scaling.py): its autoscaler (HPA or KEDA
ScaledObject) and, for multi-node replicas, its LeaderWorkerSet.

The optional kinds are watched only where the platform enabled them (the operator settings `autoscaler=keda`,
`leader_worker_set=true`, read once when the handlers are imported, as kopf registers handlers at import): a cluster
without KEDA or LWS needs no rights on their kinds, and the chart grants them only with those settings.

What is observed here serves two things: status (a LeaderWorkerSet's replicas and ready groups stand for the
Deployment's) and convergence (a child of a kind the spec no longer builds -- autoscaling turned off, HPA <-> KEDA,
single <-> multi-node -- is deleted by the next apply: builders.scaling.stale_children).
"""

from __future__ import annotations

from typing import Any

import kopf

from ..api import constants as c
from ..config import OperatorSettings
from .runtime import first

SERVING = {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE, c.LABEL_COMPONENT: c.COMPONENT_SERVING}
_SETTINGS = OperatorSettings.from_env()
# kind -> (the kopf index holding it, group, version, plural): the index is registered only where the kind is used.
INDEXED = {"Deployment": ("serving_deployments", "apps", "v1", "deployments")}
if _SETTINGS.autoscaler == "keda":
    INDEXED["ScaledObject"] = ("serving_scaledobjects", "keda.sh", "v1alpha1", "scaledobjects")
else:
    INDEXED["HorizontalPodAutoscaler"] = ("serving_hpas", "autoscaling", "v2", "horizontalpodautoscalers")
if _SETTINGS.leader_worker_set:
    INDEXED["LeaderWorkerSet"] = ("serving_leaderworkersets", "leaderworkerset.x-k8s.io", "v1", "leaderworkersets")
CHILD_RESOURCES = [(group, version, plural) for kind, (_, group, version, plural) in INDEXED.items() if kind != "Deployment"]


def _entry(body: Any, namespace: str, labels: dict[str, str]) -> dict[Any, Any]:
    return {(namespace, labels[c.LABEL_MODELDEPLOYMENT]): {k: dict(body.get(k) or {}) for k in ("metadata", "spec", "status")}
            | {"apiVersion": body["apiVersion"], "kind": body["kind"]}}


def _register(kind: str) -> None:
    index, group, version, plural = INDEXED[kind]

    async def indexer(body: Any, namespace: str, labels: dict[str, str], **_: Any) -> dict[Any, Any]:
        return _entry(body, namespace, labels)

    indexer.__name__ = indexer.__qualname__ = index  # the kopf index is named after its function
    kopf.index(group, version, plural, labels=SERVING, id=index)(indexer)


for _kind in INDEXED:
    if _kind != "Deployment":  # handlers/modeldeployment.py indexes the Deployment (serving_deployments)
        _register(_kind)


def observe_scaling(indexes: dict[str, Any], key: tuple[str, str]) -> dict[str, dict[str, Any]]:
    """kind -> the ModelDeployment's child of that kind, for every scaling kind watched here."""
    found = {kind: first(indexes[index], key) for kind, (index, *_) in INDEXED.items() if index in indexes}
    return {kind: child for kind, child in found.items() if child is not None}

