"""The emulator plays the kube-controller-manager's garbage collector by its documented behaviour
(https://kubernetes.io/docs/concepts/architecture/garbage-collection/): "the garbage collector deletes dependents
whose owners are absent". An owner is looked up by kind and name (a namespaced owner in its dependent's namespace,
a cluster-scoped one cluster-wide) and compared by uid, so one re-created under the same name does not count; a
dependent with another live owner only loses the reference; a reference the collector cannot resolve keeps its
dependent. Checked when an owner is deleted (tests/emulator/test_emulator.py) and when a dependent is created or
updated (here): a controller that creates a child from a stale view of a deleted owner leaves nothing behind."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune_emulator import Emulator
from kubetune_emulator.pytest_plugin import emulator  # noqa: F401  (fixture)

from .test_emulator import CONFIGMAPS, CRD, WIDGETS, configmap, owner, watch, widget

CLUSTERROLES = "/apis/rbac.authorization.k8s.io/v1/clusterroles"
MERGE = "application/merge-patch+json"


@pytest.fixture
def crd(emulator: Emulator) -> None:
    assert emulator.http("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", CRD)[0] == 201


def names(emulator: Emulator) -> list[str]:
    return [item["metadata"]["name"] for item in emulator.http("GET", CONFIGMAPS)[1]["items"]]


def created(emulator: Emulator, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, obj = emulator.http("POST", path, body)
    assert status == 201, obj
    return obj


def test_a_dependent_created_after_its_owner_was_deleted_is_collected(emulator: Emulator, crd: None) -> None:
    parent = created(emulator, WIDGETS, widget("parent"))
    assert emulator.http("DELETE", f"{WIDGETS}/parent")[0] == 200
    since = emulator.http("GET", CONFIGMAPS)[1]["metadata"]["resourceVersion"]

    late = created(emulator, CONFIGMAPS, configmap("late", owners=[owner(parent)]))  # the API server accepts it
    assert late["metadata"]["ownerReferences"] == [owner(parent)]
    assert names(emulator) == []
    assert watch(emulator, CONFIGMAPS, resourceVersion=since) == [("ADDED", "late"), ("DELETED", "late")]


def test_an_owner_re_created_under_the_same_name_is_another_owner(emulator: Emulator, crd: None) -> None:
    old = created(emulator, WIDGETS, widget("parent"))
    emulator.http("DELETE", f"{WIDGETS}/parent")
    new = created(emulator, WIDGETS, widget("parent"))
    assert new["metadata"]["uid"] != old["metadata"]["uid"]

    created(emulator, CONFIGMAPS, configmap("of-old", owners=[owner(old)]))
    created(emulator, CONFIGMAPS, configmap("of-new", owners=[owner(new)]))
    assert names(emulator) == ["of-new"]


def test_only_the_dependent_s_namespace_holds_its_namespaced_owner(emulator: Emulator, crd: None) -> None:
    """A namespaced owner must be in its dependent's namespace: an object with the owner's uid elsewhere is absent."""
    assert emulator.http("POST", "/api/v1/namespaces", {"metadata": {"name": "team"}})[0] == 201
    elsewhere = created(emulator, "/apis/example.com/v1/namespaces/team/widgets", widget("parent"))
    created(emulator, CONFIGMAPS, configmap("cross", owners=[owner(elsewhere)]))
    assert names(emulator) == []


def test_a_cluster_scoped_owner_is_looked_up_cluster_wide(emulator: Emulator) -> None:
    role = created(emulator, CLUSTERROLES, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                                            "metadata": {"name": "owner-role"}, "rules": []})
    created(emulator, CONFIGMAPS, configmap("of-role", owners=[owner(role)]))
    assert names(emulator) == ["of-role"]
    assert emulator.http("DELETE", f"{CLUSTERROLES}/owner-role")[0] == 200
    assert names(emulator) == []
    created(emulator, CONFIGMAPS, configmap("of-role-late", owners=[owner(role)]))
    assert names(emulator) == []


def test_an_update_to_absent_owners_collects_and_a_live_owner_keeps_its_dependent(emulator: Emulator, crd: None) -> None:
    live = created(emulator, WIDGETS, widget("live"))
    gone = created(emulator, WIDGETS, widget("gone"))
    emulator.http("DELETE", f"{WIDGETS}/gone")
    created(emulator, CONFIGMAPS, configmap("shared", owners=[owner(live), owner(gone)]))
    status, shared = emulator.http("GET", f"{CONFIGMAPS}/shared")
    assert (status, shared["metadata"]["ownerReferences"]) == (200, [owner(live)])  # the absent reference is dropped

    created(emulator, CONFIGMAPS, configmap("moved"))
    status, _ = emulator.http("PATCH", f"{CONFIGMAPS}/moved", {"metadata": {"ownerReferences": [owner(gone)]}}, MERGE)
    assert status == 200
    assert names(emulator) == ["shared"]


def test_a_reference_the_collector_cannot_resolve_keeps_its_dependent(emulator: Emulator) -> None:
    """A kind that is not served (a CRD not installed) cannot be looked up: the collector leaves the dependent."""
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "uid": "3f1c3b0e-0000-4000-8000-000000000000"}
    created(emulator, CONFIGMAPS, configmap("kept", owners=[unknown]))
    assert names(emulator) == ["kept"]


def test_a_terminating_dependent_keeps_its_finalizers(emulator: Emulator, crd: None) -> None:
    """Collection is a background delete: a dependent with finalizers is marked and waits for them."""
    parent = created(emulator, WIDGETS, widget("parent"))
    emulator.http("DELETE", f"{WIDGETS}/parent")
    child = configmap("held", owners=[owner(parent)])
    child["metadata"]["finalizers"] = ["example.com/hold"]
    created(emulator, CONFIGMAPS, child)
    status, held = emulator.http("GET", f"{CONFIGMAPS}/held")
    assert (status, bool(held["metadata"].get("deletionTimestamp"))) == (200, True)
    emulator.http("PATCH", f"{CONFIGMAPS}/held", {"metadata": {"finalizers": None}}, MERGE)
    assert names(emulator) == []
