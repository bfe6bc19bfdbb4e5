"""Events of a ModelDeployment's scaling children (handlers/scaling.py says which kinds are watched): a
LeaderWorkerSet's re-derive status or re-apply, as a Deployment's do (handlers/modeldeployment.py); an autoscaler
deleted or edited by hand runs its owner's whole skeleton, as the other status-less children's do
(handlers/children.py)."""

from __future__ import annotations

import kopf

from .children import MANAGED, _moved, child_changed
from .modeldeployment import SERVING, serving_child_changed
from .scaling import INDEXED

for _kind, (_index, _group, _version, _plural) in INDEXED.items():
    if _kind == "LeaderWorkerSet":
        kopf.on.event(_group, _version, _plural, labels=SERVING)(serving_child_changed)
    elif _kind != "Deployment":
        kopf.on.event(_group, _version, _plural, labels=MANAGED, when=_moved)(child_changed)
