"""The emulator's authentication and RBAC (Emulator(rbac=True)): tokens, the authorizer, the API server's
401/403 Statuses, escalation prevention, and the record of used permissions."""

from __future__ import annotations

import pytest

from kubetune_emulator.pytest_plugin import emulator, kubectl  # noqa: F401  (fixtures)

pytestmark = pytest.mark.emulator(rbac=True)
SA = "system:serviceaccount:default:bot"
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
             "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]},
}
WIDGETS = "/apis/example.com/v1/namespaces/default/widgets"
MERGE = "application/merge-patch+json"


def role(name: str, *rules: dict, kind: str = "Role") -> dict:
    meta = {"name": name} if kind == "ClusterRole" else {"name": name, "namespace": "default"}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta, "rules": list(rules)}


def binding(name: str, role_name: str, kind: str = "Role", sa: str = "bot") -> dict:
    out = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
           "metadata": {"name": name, "namespace": "default"},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role_name},
           "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "default"}]}
    return out


@pytest.fixture
def bot(emulator):
    """A ServiceAccount token obtained over HTTP with TokenRequest, as kubelet gets one."""
    emulator.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bot", "namespace": "default"}})
    code, body = emulator.http("POST", "/api/v1/namespaces/default/serviceaccounts/bot/token",
                               {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                "spec": {"expirationSeconds": 600}})
    assert code == 201 and body["kind"] == "TokenRequest" and body["status"]["expirationTimestamp"]
    return body["status"]["token"]


def test_no_token_or_an_unknown_one_is_401(emulator):
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "Unauthorized",
              "reason": "Unauthorized", "code": 401}
    assert emulator.http("GET", "/api/v1/namespaces/default/configmaps", token="nope") == (401, status)
    code, _ = emulator.http("POST", "/api/v1/namespaces/default/serviceaccounts/ghost/token", {}, token=None)
    assert code == 404  # admin, but no such ServiceAccount


def test_every_authenticated_user_may_discover_but_nothing_more(emulator, bot):
    for path in ("/api", "/api/v1", "/apis", "/apis/batch/v1", "/version", "/openapi/v3", "/healthz"):
        assert emulator.http("GET", path, token=bot)[0] == 200, path
    code, body = emulator.http("GET", "/api/v1/namespaces/default/configmaps", token=bot)
    assert code == 403
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden",
                    "code": 403, "details": {"group": "", "kind": "configmaps"},
                    "message": f'configmaps is forbidden: User "{SA}" cannot list resource "configmaps" in API '
                               f'group "" in the namespace "default"'}
    code, body = emulator.http("GET", "/apis/batch/v1/jobs?watch=true", token=bot)
    assert (code, body["message"]) == (403, f'jobs.batch is forbidden: User "{SA}" cannot watch resource "jobs" in '
                                             f'API group "batch" at the cluster scope')
    code, body = emulator.http("GET", "/metrics", token=bot)
    assert (code, body["message"]) == (403, f'forbidden: User "{SA}" cannot get path "/metrics"')
    assert emulator.denials(SA) and emulator.denials("kubetune:emulator-admin") == []


def test_resource_names_and_subresources_are_enforced(emulator, bot):
    emulator.create(CRD)
    for name in ("a", "b"):
        emulator.create({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name, "namespace": "default"}})
    emulator.create(role("status-of-a", {"apiGroups": ["example.com"], "resources": ["widgets/status"],
                                         "resourceNames": ["a"], "verbs": ["get", "patch"]},
                         {"apiGroups": ["example.com"], "resources": ["widgets"], "resourceNames": ["a"],
                          "verbs": ["list", "watch"]}))
    emulator.create(binding("bot-status", "status-of-a"))
    patch = {"status": {"ok": True}}
    assert emulator.http("PATCH", f"{WIDGETS}/a/status", patch, MERGE, token=bot)[0] == 200
    code, body = emulator.http("PATCH", f"{WIDGETS}/b/status", patch, MERGE, token=bot)
    assert (code, body["message"]) == (403, f'widgets.example.com "b" is forbidden: User "{SA}" cannot patch resource '
                                            f'"widgets/status" in API group "example.com" in the namespace "default"')
    assert body["details"] == {"group": "example.com", "kind": "widgets", "name": "b"}
    code, body = emulator.http("PATCH", f"{WIDGETS}/a", {"spec": {}}, MERGE, token=bot)
    assert (code, body["message"]) == (403, f'widgets.example.com "a" is forbidden: User "{SA}" cannot patch resource '
                                            f'"widgets" in API group "example.com" in the namespace "default"')
    # A list/watch of one object by its name (field selector) is authorized as that name, like the API server.
    assert emulator.http("GET", f"{WIDGETS}?fieldSelector=metadata.name%3Da", token=bot)[0] == 200
    assert emulator.http("GET", WIDGETS, token=bot)[0] == 403
    assert emulator.used_permissions(SA) == {("patch", "example.com", "widgets/status"),
                                             ("list", "example.com", "widgets")}


def test_wildcards_and_cluster_roles_through_role_bindings(emulator, bot):
    emulator.create(role("reader", {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list"]},
                         {"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["*"]}, kind="ClusterRole"))
    emulator.create(binding("bot-reader", "reader", kind="ClusterRole"))
    assert emulator.http("GET", "/api/v1/namespaces/default/configmaps", token=bot)[0] == 200
    assert emulator.http("GET", "/api/v1/namespaces/kube-system/configmaps", token=bot)[0] == 403  # bound in default only
    assert emulator.http("DELETE", "/api/v1/namespaces/default/configmaps/x", token=bot)[0] == 403


def test_roles_grant_only_what_their_creator_holds(emulator, bot):
    emulator.create(role("rbac-writer", {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
                                         "verbs": ["create"]},
                         {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cm"], "verbs": ["get"]}))
    emulator.create(binding("bot-rbac-writer", "rbac-writer"))
    path = "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles"
    held = {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cm"], "verbs": ["get"]}
    assert emulator.http("POST", path, role("ok", held), token=bot)[0] == 201
    wider = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
    code, body = emulator.http("POST", path, role("too-wide", wider), token=bot)
    assert code == 403
    assert body["message"] == (
        f'roles.rbac.authorization.k8s.io "too-wide" is forbidden: user "{SA}" (groups=["system:serviceaccounts" '
        f'"system:serviceaccounts:default" "system:authenticated"]) is attempting to grant RBAC permissions not '
        f'currently held:\n{{APIGroups:[""], Resources:["configmaps"], Verbs:["get"]}}\n'
        f'{{APIGroups:[""], Resources:["configmaps"], Verbs:["list"]}}')
    # Binding a role it holds is fine; binding a wider one is not (unless it has `bind` on it).
    emulator.create(role("wide", wider))
    bindings = "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings"
    assert emulator.http("POST", bindings, binding("b-ok", "ok", sa="other"), token=bot)[0] == 201
    assert emulator.http("POST", bindings, binding("b-wide", "wide", sa="other"), token=bot)[0] == 403
    assert ("get", "", "configmaps") in emulator.used_permissions(SA)  # the escalation check relied on it


def test_a_token_dies_with_its_service_account(emulator, bot):
    assert emulator.http("GET", "/api", token=bot)[0] == 200
    emulator.delete("", "v1", "serviceaccounts", "default", "bot")
    assert emulator.http("GET", "/api", token=bot)[0] == 401


def test_kubectl_shows_the_api_servers_forbidden_error(emulator, kubectl, bot, tmp_path):
    config = emulator.service_account_kubeconfig(tmp_path / "bot.kubeconfig", "default", "bot")
    result = kubectl("--kubeconfig", str(config), "get", "configmaps", check=False)
    assert result.returncode == 1
    assert (f'Error from server (Forbidden): configmaps is forbidden: User "{SA}" cannot list resource "configmaps" '
            f'in API group "" in the namespace "default"') in result.stderr
    assert kubectl("get", "configmaps").returncode == 0  # the admin kubeconfig


def test_block_owner_deletion_needs_update_on_the_owners_finalizers(emulator, bot):
    """OwnerReferencesPermissionEnforcement, as OpenShift runs it."""
    emulator.create(CRD)
    owner = emulator.create({"apiVersion": "example.com/v1", "kind": "Widget",
                             "metadata": {"name": "w", "namespace": "default"}})
    emulator.create(role("cm-writer", {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "patch"]}))
    emulator.create(binding("bot-cm-writer", "cm-writer"))
    ref = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "uid": owner["metadata"]["uid"],
           "controller": True, "blockOwnerDeletion": True}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "child", "ownerReferences": [ref]}}
    code, body = emulator.http("POST", "/api/v1/namespaces/default/configmaps", cm, token=bot)
    assert (code, body["message"]) == (403, 'configmaps "child" is forbidden: cannot set blockOwnerDeletion if an '
                                            "ownerReference refers to a resource you can't set finalizers on: , <nil>")
    emulator.create(role("finalizers", {"apiGroups": ["example.com"], "resources": ["widgets/finalizers"],
                                        "resourceNames": ["w"], "verbs": ["update"]}))
    emulator.create(binding("bot-finalizers", "finalizers"))
    assert emulator.http("POST", "/api/v1/namespaces/default/configmaps", cm, token=bot)[0] == 201
    assert ("update", "example.com", "widgets/finalizers") in emulator.used_permissions(SA)
    # Changing the ownerReferences of an existing object needs delete on it.
    code, body = emulator.http("PATCH", "/api/v1/namespaces/default/configmaps/child",
                               {"metadata": {"ownerReferences": None}}, MERGE, token=bot)
    assert (code, body["message"]) == (403, 'configmaps "child" is forbidden: cannot set an ownerRef on a resource '
                                            "you can't delete: , <nil>")
