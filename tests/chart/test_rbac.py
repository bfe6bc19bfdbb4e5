"""The operator's RBAC: least privilege that still covers everything the operator does.

"Everything it does" is derived from the code, not restated: the resources kopf watches come from
kopf's handler registry, the objects it creates from the builders, the Roles it hands to pods from
the builders too (RBAC lets it grant only what it holds). What the operator, the trainer and the
sidecar actually do is enforced where they run: the e2e tests and `kubetune local` run them against
the emulator with RBAC on (the operator as the chart's ServiceAccount with the chart's rendered RBAC,
pods with their own ServiceAccount's token), a 403 fails the test, and tests/e2e/
test_zz_least_privilege.py and tests/local report permissions granted but never used.
"""

from __future__ import annotations

import os
import re

import kopf
import pytest
import yaml

import kubetune.handlers  # noqa: F401  (registers the handlers)
from kubetune.clients.kube import PLURALS
from kubetune_local.run import OPERATOR_RBAC, OPERATOR_RBAC_VALUES

from ..security.objects import finetunejob_children, modeldeployment_children
from ..e2e.rbac import chart_rbac
from .helm import NAMESPACE, find, objects, one, render

CLUSTER_WIDE = {}
NAMESPACED = {"watch": {"namespaces": ["team-a", "team-b"]}}
MODES = {"cluster-wide": CLUSTER_WIDE, "namespaced": NAMESPACED}
ALLOWED_VERBS = {"get", "list", "watch", "create", "patch", "update"}


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def allows(rules, group, resource, verb, name=None) -> bool:
    return any(group in r.get("apiGroups", []) and resource in r.get("resources", []) and verb in r.get("verbs", [])
               and (not r.get("resourceNames") or name in r["resourceNames"]) for r in rules)


def operator_rules(mode: str) -> list[dict]:
    """What the operator may do on namespaced objects in a watched namespace."""
    objs = objects(MODES[mode])
    if mode == "cluster-wide":
        return one(objs, "ClusterRole")["rules"]
    roles = find(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert roles[0]["rules"] == roles[1]["rules"]
    return roles[0]["rules"]


def cluster_rules(mode: str) -> list[dict]:
    return [rule for role in find(objects(MODES[mode]), "ClusterRole") for rule in role["rules"]]


def kopf_watches() -> set[tuple[str, str]]:
    """(group, plural) of every resource a kopf handler of kubetune watches or indexes."""
    registry = kopf.get_default_registry()
    out = set()
    for kind in (registry._indexing, registry._watching, registry._changing, registry._spawning):
        for handler in kind.get_all_handlers():
            selector = handler.selector
            out.add((selector.group or "", selector.plural or selector.any_name))
    return out


def kopf_changing() -> set[tuple[str, str]]:
    """Resources with change handlers: kopf patches their finalizers and progress annotations."""
    return {(h.selector.group, h.selector.plural or h.selector.any_name)
            for h in kopf.get_default_registry()._changing.get_all_handlers()}


def built_children() -> list[dict]:
    return [*finetunejob_children(), *finetunejob_children(nodes=2), *modeldeployment_children()]


@pytest.mark.parametrize("mode", MODES)
def test_no_wildcards_no_secrets_no_escalation(mode):
    for role in find(objects(MODES[mode]), "ClusterRole") + find(objects(MODES[mode]), "Role"):
        for rule in role["rules"]:
            values = rule.get("apiGroups", []) + rule.get("resources", []) + rule["verbs"] + rule.get("resourceNames", [])
            assert "*" not in values and not any("*" in v for v in values), rule
            assert "secrets" not in rule["resources"], rule
            verbs = set(rule["verbs"])
            if rule.get("apiGroups") == ["batch"] and rule["resources"] == ["jobs"]:
                verbs -= {"delete"}  # the one deletion: a cancelled training Job (spec.cancel), after it stopped
            if rule["resources"] in (["deployments"], ["horizontalpodautoscalers"], ["scaledobjects"], ["leaderworkersets"]):
                verbs -= {"delete"}  # a ModelDeployment's workload or autoscaler of a kind its spec no longer builds
            assert verbs <= ALLOWED_VERBS, rule  # no other delete, no escalate, bind, impersonate
            assert "nonResourceURLs" not in rule
            if "update" in rule["verbs"]:
                assert all(r.endswith("/finalizers") for r in rule["resources"]), rule


@pytest.mark.parametrize("mode", MODES)
def test_every_rule_says_why(mode):
    text = render(MODES[mode])["kubetune/templates/rbac.yaml"]
    lines = [line for line in text.splitlines() if line.strip()]
    rules = [i for i, line in enumerate(lines) if re.match(r"^\s*- apiGroups:", line)]
    assert len(rules) >= 11
    for i in rules:
        block = []
        while lines[i - 1 - len(block)].strip().startswith("#"):
            block.append(lines[i - 1 - len(block)].strip())
        assert len(" ".join(block)) > 40, f"rule without a why: {lines[i]!r} {lines[i + 1]!r}"


@pytest.mark.parametrize("mode", MODES)
def test_operator_may_watch_what_kopf_watches(mode):
    rules = operator_rules(mode)
    watched = kopf_watches()
    assert {("kubetune.io", "finetunejobs"), ("kubetune.io", "modeldeployments"), ("batch", "jobs"), ("", "pods")} <= watched
    for group, plural in watched:
        for verb in ("list", "watch"):
            assert allows(rules, group, plural, verb), (group, plural, verb)
    for group, plural in kopf_changing():
        assert allows(rules, group, plural, "patch"), (group, plural)  # finalizer + kopf's annotations


@pytest.mark.parametrize("mode", MODES)
def test_operator_may_create_every_child_it_builds(mode):
    rules = operator_rules(mode)
    kinds = set()
    for child in built_children():
        plural = PLURALS[(child["apiVersion"], child["kind"])]
        kinds.add(child["kind"])
        # Server-side apply (patch; an apply that creates is also a create); watched to put back what is deleted
        # or edited by hand. A Job is only created (Kube.create_or_leave), also 'create'.
        for verb in ("create", "patch", "list", "watch"):
            assert allows(rules, group_of(child["apiVersion"]), plural, verb), (child["kind"], verb)
        if child["metadata"].get("ownerReferences", [{}])[0].get("blockOwnerDeletion"):
            owner = PLURALS[(child["metadata"]["ownerReferences"][0]["apiVersion"], child["metadata"]["ownerReferences"][0]["kind"])]
            assert allows(rules, "kubetune.io", f"{owner}/finalizers", "update")
    assert kinds == {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Service", "Job", "Deployment"}


@pytest.mark.parametrize("mode", MODES)
def test_operator_holds_what_it_grants_to_pods(mode):
    """RBAC escalation prevention: a Role may only grant what its creator holds (no `escalate` here)."""
    rules = operator_rules(mode)
    granted = [rule for child in built_children() if child["kind"] == "Role" for rule in child["rules"]]
    assert granted
    for rule in granted:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames", [None]):
                        assert allows(rules, group, resource, verb, name), (group, resource, verb, name)


def rendered_operator_rbac() -> str:
    header = ("# GENERATED from charts/kubetune (templates/serviceaccount.yaml, rbac.yaml) with values "
              f"{OPERATOR_RBAC_VALUES}:\n# the operator's RBAC for `kubetune local` runs. Do not edit: "
              "`make local-rbac` rewrites it; tests/chart/test_rbac.py checks it.\n")
    return header + yaml.safe_dump_all(chart_rbac(OPERATOR_RBAC_VALUES), sort_keys=False)


def test_local_runs_use_the_charts_rendered_rbac():
    """`kubetune local` gives its operator the chart's RBAC: a checked-in rendering, kept in step here."""
    rendered = rendered_operator_rbac()
    if os.environ.get("KUBETUNE_UPDATE_RENDERED") == "1":
        OPERATOR_RBAC.write_text(rendered)
    assert OPERATOR_RBAC.read_text() == rendered, f"{OPERATOR_RBAC} is stale: run `make local-rbac`"


@pytest.mark.parametrize("mode", MODES)
def test_kopf_may_observe_crds(mode):
    assert allows(cluster_rules(mode), "apiextensions.k8s.io", "customresourcedefinitions", "watch")


@pytest.mark.parametrize("mode", MODES)
def test_operator_reads_finetunetemplates_cluster_wide_and_nothing_more(mode):
    """Templates are cluster-scoped: read (get one by name, list them all) through a ClusterRole in both watch
    scopes; never watched, never written."""
    rules = cluster_rules(mode)
    assert all(allows(rules, "kubetune.io", "finetunetemplates", verb) for verb in ("get", "list"))
    every = operator_rules(mode)
    assert not any(allows(every, "kubetune.io", "finetunetemplates", verb)
                   for verb in ("watch", "create", "patch", "update", "delete"))


def test_namespaced_scope_grants_nothing_namespaced_cluster_wide():
    objs = objects(NAMESPACED)
    (cluster_role,) = find(objs, "ClusterRole")
    assert cluster_role["metadata"]["name"] == "kubetune-observer"
    assert sorted(r for rule in cluster_role["rules"] for r in rule["resources"]) == [
        "customresourcedefinitions", "finetunetemplates", "namespaces"]  # finetunetemplates: cluster-scoped
    assert all(set(rule["verbs"]) == ({"get", "list"} if rule["resources"] == ["finetunetemplates"] else {"list", "watch"})
               for rule in cluster_role["rules"])
    bindings = find(objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings + find(objs, "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubetune", "namespace": NAMESPACE}]


def test_cluster_wide_binding():
    objs = objects()
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubetune"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubetune", "namespace": NAMESPACE}]
    assert find(objs, "Role") == [] and find(objs, "RoleBinding") == []
    # Cluster-wide, kopf does not list namespaces: no access to them is granted.
    assert not allows(cluster_rules("cluster-wide"), "", "namespaces", "list")


def test_pod_roles_are_scoped_to_one_object():
    """The Roles the operator hands to pods name exactly one object each."""
    for child in built_children():
        if child["kind"] == "Role":
            assert all(len(rule["resourceNames"]) == 1 for rule in child["rules"]), child["rules"]
