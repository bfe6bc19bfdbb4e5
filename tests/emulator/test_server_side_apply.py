"""Server-side apply as the API server does it where kubetune's operator relies on it (fieldmanager.py;
https://kubernetes.io/docs/reference/using-api/server-side-apply/): a fieldManager is required, an apply
that creates is authorized as a create too, the manager owns what it applied (so a field it stops
applying goes, and fields others set stay), and applying again what is there writes nothing."""

from __future__ import annotations

import pytest

from kubetune_emulator.pytest_plugin import emulator, kubectl  # noqa: F401  (fixtures)

from .test_rbac import binding, bot, role  # noqa: F401  (bot is a fixture)

pytestmark = pytest.mark.emulator(rbac=True)
APPLY = "application/apply-patch+yaml"
CM = "/api/v1/namespaces/default/configmaps/c"


def cm(**data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default", "labels": {"a": "1"}},
            "data": data}


def test_an_apply_needs_a_field_manager(emulator):
    code, body = emulator.http("PATCH", CM, cm(x="1"), APPLY)
    assert (code, body["message"]) == (422, 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is '
                                             'required for apply patch')


def test_an_apply_that_creates_is_a_create_too(emulator, bot):
    emulator.apply(role("patcher", {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch"]}))
    emulator.apply(binding("patcher", "patcher"))
    code, body = emulator.http("PATCH", CM + "?fieldManager=m&force=true", cm(x="1"), APPLY, token=bot)
    assert (code, body["message"]) == (403, 'configmaps "c" is forbidden: User "system:serviceaccount:default:bot" cannot '
                                             'create resource "configmaps" in API group "" in the namespace "default"')
    emulator.apply(role("patcher", {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch", "create"]}))
    assert emulator.http("PATCH", CM + "?fieldManager=m&force=true", cm(x="1"), APPLY, token=bot)[0] == 201
    assert emulator.http("PATCH", CM + "?fieldManager=m&force=true", cm(x="2"), APPLY, token=bot)[0] == 200


def test_the_manager_owns_what_it_applied_and_nothing_else(emulator):
    query = "?fieldManager=m&force=true"
    assert emulator.http("PATCH", CM + query, cm(x="1", y="1"), APPLY)[0] == 201
    emulator.http("PATCH", CM, {"metadata": {"labels": {"b": "2"}}, "data": {"x": "edited", "z": "theirs"}},
                  "application/merge-patch+json")
    code, obj = emulator.http("PATCH", CM + query, cm(x="1"), APPLY)  # y no longer applied; x taken back
    assert code == 200
    assert obj["data"] == {"x": "1", "z": "theirs"} and obj["metadata"]["labels"] == {"a": "1", "b": "2"}
    entry = next(e for e in obj["metadata"]["managedFields"] if e["manager"] == "m")
    assert entry["operation"] == "Apply" and entry["fieldsV1"]["f:data"] == {"f:x": {}}
    version = obj["metadata"]["resourceVersion"]
    assert emulator.http("PATCH", CM + query, cm(x="1"), APPLY)[1]["metadata"]["resourceVersion"] == version  # no-op
