"""
What the controllers of a real control plane would do around writes, done synchronously:
namespace lifecycle, ownerReference garbage collection, CustomResourceDefinition serving,
and the scale subresource.

Nothing here plays kubelet or the Job/Deployment controllers: Pods are never started and
child statuses change only when a test patches them.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from kubetune_emulator import builtins, errors
from kubetune_emulator.registry import CRD_GROUP, CRD_PLURAL, ResourceType, resource_types_from_crd
from kubetune_emulator.validation import now, validate_crd

if TYPE_CHECKING:
    from kubetune_emulator.store import Store

UNDELETABLE_NAMESPACES = {"default", "kube-system", "kube-public"}


def _is_namespace(rtype: ResourceType) -> bool:
    return rtype.group == "" and rtype.plural == "namespaces"


def _is_crd(rtype: ResourceType) -> bool:
    return rtype.group == CRD_GROUP and rtype.plural == CRD_PLURAL


def _namespace_rtype(store: Store) -> ResourceType:
    rtype = store.registry.get("", "v1", "namespaces")
    assert rtype is not None, "the namespaces resource is always registered"
    return rtype


# Hooks called by the store ---------------------------------------------------------------------

def check_namespace_open(store: Store, namespace: str | None) -> None:
    ns = store.find(_namespace_rtype(store), None, namespace or "")
    if ns is None:
        raise errors.not_found("", "namespaces", namespace)
    if ns["metadata"].get("deletionTimestamp"):
        raise errors.forbidden("", "namespaces", namespace,
                               f"unable to create new content in namespace {namespace} because it is being terminated")


def on_create(store: Store, rtype: ResourceType, obj: dict[str, Any]) -> None:
    builtins.default_and_validate_create(rtype, obj)
    if _is_namespace(rtype):
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
    elif _is_crd(rtype):
        if (problem := validate_crd(obj)) is not None:
            raise problem
        obj["status"] = _crd_status(obj)


def after_create(store: Store, rtype: ResourceType, obj: dict[str, Any]) -> None:
    if _is_crd(rtype):
        _serve_crd(store, obj)
    collect_if_owners_absent(store, rtype, obj)


def on_update(store: Store, rtype: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> None:
    builtins.validate_update(rtype, old, new)
    if _is_crd(rtype) and new.get("spec") != old.get("spec"):
        if (problem := validate_crd(new)) is not None:
            raise problem
        new["status"] = dict(new.get("status") or {}, **_crd_status(new))


def after_update(store: Store, rtype: ResourceType, obj: dict[str, Any]) -> None:
    if _is_crd(rtype):
        _serve_crd(store, obj)
    collect_if_owners_absent(store, rtype, obj)


def check_deletable(store: Store, rtype: ResourceType, obj: dict[str, Any]) -> None:
    name = obj["metadata"]["name"]
    if _is_namespace(rtype) and name in UNDELETABLE_NAMESPACES:
        raise errors.forbidden("", "namespaces", name, "this namespace may not be deleted")


def delays_deletion(rtype: ResourceType, obj: dict[str, Any]) -> bool:
    """Whether DELETE only marks the object (deletionTimestamp) instead of removing it."""
    return bool(obj["metadata"].get("finalizers")) or _is_namespace(rtype)


def can_vanish(rtype: ResourceType, obj: dict[str, Any]) -> bool:
    """Whether a terminating object without finalizers disappears now (namespaces wait until empty)."""
    return not _is_namespace(rtype)


def on_terminating(store: Store, rtype: ResourceType, obj: dict[str, Any]) -> None:
    if _is_namespace(rtype):
        obj["status"] = dict(obj.get("status") or {}, phase="Terminating")


def after_terminating(store: Store, rtype: ResourceType, obj: dict[str, Any]) -> None:
    if _is_namespace(rtype):
        name = obj["metadata"]["name"]
        for gr, key, child in store.iter_all():
            child_rtype = store.rtype_for(gr)
            if key[0] == name and child_rtype is not None and child_rtype.namespaced:
                if not child["metadata"].get("deletionTimestamp") and store.find(child_rtype, name, key[1]):
                    store.delete(child_rtype, name, key[1])
        finalize_namespace(store, name)


def after_removal(store: Store, rtype: ResourceType, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    if _is_crd(rtype):
        _unserve_crd(store, obj)
    collect_dependents(store, meta["uid"])
    if rtype.namespaced and meta.get("namespace"):
        finalize_namespace(store, meta["namespace"])


def finalize_namespace(store: Store, name: str) -> None:
    """Remove a terminating namespace once it holds nothing and has no finalizers of its own."""
    ns_rtype = _namespace_rtype(store)
    ns = store.find(ns_rtype, None, name)
    if ns is None or not ns["metadata"].get("deletionTimestamp") or ns["metadata"].get("finalizers"):
        return
    for gr, key, _ in store.iter_all():
        rtype = store.rtype_for(gr)
        if key[0] == name and rtype is not None and rtype.namespaced:
            return
    store.remove(ns_rtype, ns)


# Garbage collection ------------------------------------------------------------------------------
# The kube-controller-manager's garbage collector, by its documented behaviour
# (https://kubernetes.io/docs/concepts/architecture/garbage-collection/#owners-dependents): "the garbage
# collector deletes dependents whose owners are absent", whenever that is found: when an owner is deleted,
# and when a dependent is created or updated with owners that no longer exist (its uid names an object that
# is gone). An owner is looked up as the collector does: by kind and name (in the dependent's namespace for a
# namespaced kind, cluster-wide otherwise), then compared by uid, so one re-created under the same name is
# absent. A dependent with live owners only loses the references to absent ones. A reference the collector
# cannot resolve (a kind not served, a namespaced owner of a cluster-scoped dependent) keeps its dependent.

def _dependents(store: Store, uid: str) -> list[tuple[ResourceType, dict[str, Any]]]:
    found = []
    for gr, _, obj in store.iter_all():
        refs = obj["metadata"].get("ownerReferences") or []
        if any(ref.get("uid") == uid for ref in refs):
            rtype = store.rtype_for(gr)
            if rtype is not None:
                found.append((rtype, obj))
    return found


def owner_absent(store: Store, namespace: str | None, ref: dict[str, Any]) -> bool:
    """Whether the garbage collector finds the owner `ref` of a dependent in `namespace` (None: cluster-scoped)
    absent: no object of its kind by its name there, or one with another uid."""
    owner_rtype = store.registry.by_kind(str(ref.get("apiVersion", "")), str(ref.get("kind", "")))
    if owner_rtype is None or (owner_rtype.namespaced and not namespace):
        return False  # unresolvable: the collector reports it and leaves the dependent alone
    found = store.find(owner_rtype, namespace if owner_rtype.namespaced else None, str(ref.get("name", "")))
    return found is None or found["metadata"].get("uid") != ref.get("uid")


def collect_if_owners_absent(store: Store, rtype: ResourceType, obj: dict[str, Any], gone: str | None = None) -> None:
    """Delete `obj` (background) if all its owners are absent, else drop its references to absent ones. Runs after
    every create and update (a dependent created after its owner was deleted goes at once) and for each dependent
    of a deleted owner. `gone`: an owner uid to treat as absent although still stored (foreground deletion)."""
    meta = obj["metadata"]
    if not meta.get("ownerReferences"):
        return
    namespace = meta.get("namespace") if rtype.namespaced else None
    current = store.find(rtype, namespace, meta["name"])  # an earlier collection may have changed or removed it
    if current is None or current["metadata"].get("uid") != meta["uid"]:
        return
    refs = current["metadata"].get("ownerReferences") or []
    absent = [ref for ref in refs if ref.get("uid") == gone or owner_absent(store, namespace, ref)]
    if not absent:
        return
    if len(absent) < len(refs):
        remaining = [ref for ref in refs if ref not in absent]
        store.patch(rtype, namespace, meta["name"], "application/merge-patch+json",
                    {"metadata": {"ownerReferences": remaining}})
    elif not current["metadata"].get("deletionTimestamp"):
        store.delete(rtype, namespace, meta["name"], {"propagationPolicy": "Background"})


def collect_dependents(store: Store, uid: str, *, force: bool = False) -> None:
    """
    Background propagation: dependents whose owners are all gone are deleted (recursively,
    honouring their own finalizers); dependents with other live owners only lose the reference.
    ``force`` treats ``uid`` as gone even if it is still stored (foreground deletion).
    """
    for rtype, child in _dependents(store, uid):
        collect_if_owners_absent(store, rtype, child, uid if force else None)


def orphan_dependents(store: Store, uid: str) -> None:
    for rtype, child in _dependents(store, uid):
        meta = child["metadata"]
        remaining = [ref for ref in meta.get("ownerReferences") or [] if ref.get("uid") != uid]
        store.patch(rtype, meta.get("namespace"), meta["name"], "application/merge-patch+json",
                    {"metadata": {"ownerReferences": remaining or None}})


# CustomResourceDefinitions -----------------------------------------------------------------------

def _crd_status(crd: dict[str, Any]) -> dict[str, Any]:
    spec = crd.get("spec") or {}
    names = dict(spec.get("names") or {})
    names.setdefault("singular", str(names.get("kind", "")).lower())
    names.setdefault("listKind", f"{names.get('kind', '')}List")
    storage = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
    timestamp = now()
    return {
        "acceptedNames": names,
        "storedVersions": storage,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": timestamp},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": timestamp},
        ],
    }


def _serve_crd(store: Store, crd: dict[str, Any]) -> None:
    spec = crd.get("spec") or {}
    store.registry.remove_group_resource(spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
    for rtype in resource_types_from_crd(crd):
        store.registry.add(rtype)


def _unserve_crd(store: Store, crd: dict[str, Any]) -> None:
    spec = crd.get("spec") or {}
    group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
    rtype = store.rtype_for((group, plural))
    if rtype is not None:
        for obj in list(store.objects[rtype.group_resource].values()):
            store.remove(rtype, obj)
    store.registry.remove_group_resource(group, plural)


# The scale subresource ---------------------------------------------------------------------------

def _get_path(obj: Any, path: str) -> Any:
    for part in path.strip(".").split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _set_path(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = path.strip(".").split(".")
    for part in parts[:-1]:
        obj = obj.setdefault(part, {})
    obj[parts[-1]] = value


def scale_of(rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    if rtype.scale is None:
        raise errors.not_found(rtype.group, f"{rtype.plural}/scale", obj["metadata"]["name"])
    spec_path, status_path, selector_path = rtype.scale
    meta = obj["metadata"]
    status: dict[str, Any] = {"replicas": _get_path(obj, status_path) or 0}
    selector = _get_path(obj, selector_path) if selector_path else None
    if isinstance(selector, dict):  # a Deployment's structured selector
        labels = selector.get("matchLabels") or {}
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
    if selector:
        status["selector"] = selector
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {key: meta[key] for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                     if key in meta},
        "spec": {"replicas": _get_path(obj, spec_path) or 0},
        "status": status,
    }


def with_scale(rtype: ResourceType, obj: dict[str, Any], scale: dict[str, Any]) -> dict[str, Any]:
    """The object with its replicas taken from a (patched) Scale; carries the Scale's resourceVersion."""
    assert rtype.scale is not None
    replicas = (scale.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        raise errors.invalid("autoscaling", "scale", obj["metadata"]["name"],
                             "spec.replicas: Invalid value: must be a non-negative integer")
    candidate = copy.deepcopy(obj)
    _set_path(candidate, rtype.scale[0], replicas)
    rv = (scale.get("metadata") or {}).get("resourceVersion")
    candidate["metadata"]["resourceVersion"] = rv or obj["metadata"]["resourceVersion"]
    return candidate
