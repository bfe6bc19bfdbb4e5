"""Children without a status of their own (ConfigMaps, ServiceAccounts, Services, Roles, RoleBindings): one
deleted or edited by hand runs its owner's whole reconcile skeleton, whose server-side apply puts it back.
(Jobs and Deployments: handlers/finetunejob.py and handlers/modeldeployment.py, which also derive status.)"""

from __future__ import annotations

from typing import Any

import kopf

from ..api import constants as c
from .finetunejob import TRAINING
from .modeldeployment import SERVING_CONTROLLER
from .reconcile import child_moved, reconcile_child_owner
from .runtime import first

MANAGED = {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE}
# component label -> (the label naming the owner, the owners' kopf index, the owner's controller)
OWNERS = {c.COMPONENT_TRAINER: (c.LABEL_FINETUNEJOB, "finetunejobs", TRAINING),
          c.COMPONENT_SERVING: (c.LABEL_MODELDEPLOYMENT, "modeldeployments", SERVING_CONTROLLER)}


def _moved(type: str | None, body: Any, **_: Any) -> bool:
    """kopf's filter: only a change or a deletion of a child can call for a reconcile, so the other events (the
    operator's own creates, its start-up listing: most of them) invoke nothing. A child with a generation (a
    Service, where the API server gives it one) is seen from its first event on: handlers.reconcile.child_moved
    compares its generation with the one seen before."""
    return type in ("MODIFIED", "DELETED") or "generation" in body["metadata"]


@kopf.on.event("", "v1", "configmaps", labels=MANAGED, when=_moved)
@kopf.on.event("", "v1", "serviceaccounts", labels=MANAGED, when=_moved)
@kopf.on.event("", "v1", "services", labels=MANAGED, when=_moved)
@kopf.on.event("rbac.authorization.k8s.io", "v1", "roles", labels=MANAGED, when=_moved)
@kopf.on.event("rbac.authorization.k8s.io", "v1", "rolebindings", labels=MANAGED, when=_moved)
async def child_changed(type: str, body: Any, labels: dict[str, str], namespace: str, **kwargs: Any) -> None:
    if labels.get(c.LABEL_COMPONENT) not in OWNERS or not child_moved(type, body):
        return
    owner_label, index, controller = OWNERS[labels[c.LABEL_COMPONENT]]
    owner = first(kwargs[index], (namespace, labels.get(owner_label)))
    if owner is not None and not owner["metadata"].get("deletionTimestamp"):
        await reconcile_child_owner(controller, owner, kwargs)
