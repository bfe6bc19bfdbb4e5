"""A cluster-scoped custom resource (kubetune's own FineTuneTemplate CRD, from crds/) served by the emulator as the
API server serves one: discovery says namespaced=false, objects live at /apis/<group>/<version>/<plural>/<name>
only (a namespaced path is 404), a namespace in the body is dropped, kubectl applies, gets (printer columns, short
name) and deletes it, watches see it, and RBAC grants it only through a ClusterRoleBinding: a RoleBinding grants
nothing at the cluster scope."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubetune_emulator.pytest_plugin import emulator, kubectl  # noqa: F401  (fixtures)

pytestmark = pytest.mark.emulator(rbac=True)
ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "kubetune.io_finetunetemplates.yaml").read_text())
TEMPLATES = "/apis/kubetune.io/v1alpha1/finetunetemplates"
SA = "system:serviceaccount:default:reader"


def template(name: str, uri: str = "hf://Qwen/Qwen2.5-0.5B-Instruct", **meta: str) -> dict:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneTemplate", "metadata": {"name": name, **meta},
            "spec": {"baseModel": {"uri": uri}, "methods": ["sft"], "adapterTypes": ["lora", "qlora"],
                     "bounds": {"maxRank": 32}}}


def test_served_at_the_cluster_scope_only(emulator, kubectl):
    kubectl("apply", "-f", str(ROOT / "crds" / "kubetune.io_finetunetemplates.yaml"))
    code, resources = emulator.http("GET", "/apis/kubetune.io/v1alpha1")
    entry = next(r for r in resources["resources"] if r["name"] == "finetunetemplates")
    assert (code, entry["namespaced"], entry["shortNames"], entry["kind"]) == (200, False, ["ftt"], "FineTuneTemplate")

    code, created = emulator.http("POST", TEMPLATES, template("small", namespace="team-a"))
    assert code == 201 and "namespace" not in created["metadata"], created  # dropped, as the API server does
    assert created["metadata"]["generation"] == 1 and created["metadata"]["uid"]
    assert emulator.http("GET", f"{TEMPLATES}/small")[1]["spec"]["bounds"] == {"maxRank": 32}
    assert emulator.http("GET", "/apis/kubetune.io/v1alpha1/namespaces/default/finetunetemplates/small")[0] == 404
    assert emulator.http("POST", "/apis/kubetune.io/v1alpha1/namespaces/default/finetunetemplates", template("x"))[0] == 404
    assert emulator.http("POST", TEMPLATES, template("small"))[0] == 409  # one name in the whole cluster

    # kubectl: apply from a file (no namespace needed, -n ignored), get by short name with the printer columns.
    out = kubectl("apply", "-n", "team-b", "-f", "-", input=json.dumps(template("big", "hf://Qwen/Qwen2.5-7B-Instruct")))
    assert out.stdout.strip() == "finetunetemplate.kubetune.io/big created"
    table = kubectl("get", "ftt").stdout.splitlines()
    assert table[0].split() == ["NAME", "BASE", "MODEL", "METHODS", "ADAPTERS", "AGE"]
    assert table[1].split()[:4] == ["big", "hf://Qwen/Qwen2.5-7B-Instruct", '["sft"]', '["lora","qlora"]']
    assert [i["metadata"]["name"] for i in emulator.http("GET", TEMPLATES)[1]["items"]] == ["big", "small"]

    # An edit bumps generation; a watch of the cluster-scoped collection sees it and the deletion.
    code, patched = emulator.http("PATCH", f"{TEMPLATES}/small", {"spec": {"bounds": {"maxRank": 16}}},
                                  "application/merge-patch+json")
    assert (code, patched["metadata"]["generation"]) == (200, 2)
    kubectl("delete", "ftt", "big")
    events = emulator.watch_events(TEMPLATES, resourceVersion=created["metadata"]["resourceVersion"])
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "big"), ("MODIFIED", "small"), ("DELETED", "big")]


def test_only_a_cluster_role_binding_grants_a_cluster_scoped_kind(emulator):
    emulator.create(CRD)
    emulator.create(template("small"))
    emulator.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": "default"}})
    token = emulator.token("default", "reader")
    emulator.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "ftt-reader"},
                     "rules": [{"apiGroups": ["kubetune.io"], "resources": ["finetunetemplates"], "verbs": ["get", "list"]}]})
    subject = [{"kind": "ServiceAccount", "name": "reader", "namespace": "default"}]
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ftt-reader"}
    emulator.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                     "metadata": {"name": "ftt-reader", "namespace": "default"}, "roleRef": ref, "subjects": subject})
    code, body = emulator.http("GET", f"{TEMPLATES}/small", token=token)
    assert (code, body["message"]) == (403, f'finetunetemplates.kubetune.io "small" is forbidden: User "{SA}" cannot get '
                                            'resource "finetunetemplates" in API group "kubetune.io" at the cluster scope')
    emulator.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                     "metadata": {"name": "ftt-reader"}, "roleRef": ref, "subjects": subject})
    assert emulator.http("GET", f"{TEMPLATES}/small", token=token)[0] == 200
    assert emulator.http("GET", TEMPLATES, token=token)[0] == 200
    assert emulator.http("GET", f"{TEMPLATES}?watch=true", token=token)[0] == 403  # watch not granted
    assert emulator.http("DELETE", f"{TEMPLATES}/small", token=token)[0] == 403
    assert emulator.used_permissions(SA) == {("get", "kubetune.io", "finetunetemplates"),
                                             ("list", "kubetune.io", "finetunetemplates")}
