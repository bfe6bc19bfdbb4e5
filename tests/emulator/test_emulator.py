"""The Kubernetes API emulator, driven over real HTTP by raw requests, the kubernetes client, kubectl and kopf."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from kubetune_emulator import Emulator
from kubetune_emulator.pytest_plugin import emulator, find_kubectl, kubectl  # noqa: F401  (fixtures)

WIDGETS = "/apis/example.com/v1/namespaces/default/widgets"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
JOBS = "/apis/batch/v1/namespaces/default/jobs"
JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j1"},
       "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wg"]},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                                                     "statusReplicasPath": ".status.replicas"}},
            "additionalPrinterColumns": [
                {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}],
        }],
    },
}


GADGETS = "/apis/example.com/v1/namespaces/default/gadgets"
GADGET_CRD = json.loads(json.dumps(CRD).replace("widget", "gadget").replace("Widget", "Gadget").replace('"wg"', '"gd"'))
GADGET_CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = {"type": "object", "properties": {
    "spec": {"type": "object", "required": ["size"], "properties": {
        "size": {"type": "integer", "minimum": 1},
        "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"}}},
    "status": {"type": "object", "properties": {"phase": {"type": "string"}}}}}


def watch(emu: Emulator, path: str, **params: str) -> list[tuple[str, str]]:
    """(type, name) of every event until the server ends the stream (after timeoutSeconds)."""
    return [(e["type"], e["object"]["metadata"].get("name", "")) for e in emu.watch_events(path, **params)]


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def configmap(name: str, labels: dict[str, str] | None = None, owners: list[dict[str, Any]] | None = None,
              ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels or {}}
    if owners:
        meta["ownerReferences"] = owners
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


def owner(obj: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"]}


@pytest.fixture
def crd(emulator: Emulator) -> dict[str, Any]:
    status, body = emulator.http("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", CRD)
    assert status == 201, body
    return body


def test_namespaces_exist_and_are_listed(emulator: Emulator) -> None:
    kubernetes.config.load_kube_config()
    names = [ns.metadata.name for ns in kubernetes.client.CoreV1Api().list_namespace().items]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]
    status, body = emulator.http("GET", "/api/v1/namespaces/default")
    assert (status, body["status"]["phase"], body["kind"]) == (200, "Active", "Namespace")
    status, body = emulator.http("POST", "/api/v1/namespaces/nowhere/configmaps", configmap("x"))
    assert (status, body["reason"], body["message"]) == (404, "NotFound", 'namespaces "nowhere" not found')
    assert emulator.internal_errors == []


def test_kubernetes_client_job_children_and_watch(emulator: Emulator) -> None:
    kubernetes.config.load_kube_config()
    client = kubernetes.client
    batch, core = client.BatchV1Api(), client.CoreV1Api()
    job = batch.create_namespaced_job("default", JOB)
    owner_ref = client.V1OwnerReference(api_version="batch/v1", kind="Job", name="j1", uid=job.metadata.uid)
    core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="j1-config", owner_references=[owner_ref])))
    done = batch.patch_namespaced_job_status("j1", "default", {"status": {"succeeded": 1}})  # as the controller
    assert (done.status.succeeded, done.metadata.generation, done.spec.backoff_limit) == (1, 1, 6)

    events: list[tuple[str, str]] = []
    watcher = threading.Thread(target=lambda: events.extend(
        (e["type"], e["object"].metadata.name)
        for e in kubernetes.watch.Watch().stream(core.list_namespaced_config_map, "default", timeout_seconds=1)))
    watcher.start()
    time.sleep(0.2)
    batch.delete_namespaced_job("j1", "default", propagation_policy="Background")
    watcher.join()
    assert events == [("ADDED", "j1-config"), ("DELETED", "j1-config")]  # garbage-collected with its Job
    assert core.list_namespaced_config_map("default").items == []


def test_metadata_semantics_on_create_and_update(emulator: Emulator, crd: dict[str, Any]) -> None:
    status, created = emulator.http("POST", WIDGETS, widget("w1", size=1))
    meta = created["metadata"]
    assert status == 201
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["uid"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert (meta["generation"], meta["namespace"]) == (1, "default")
    rv1 = int(meta["resourceVersion"])

    _, spec_changed = emulator.http("PATCH", f"{WIDGETS}/w1", {"spec": {"size": 2}}, "application/merge-patch+json")
    _, labelled = emulator.http("PATCH", f"{WIDGETS}/w1", {"metadata": {"labels": {"a": "b"}}},
                                "application/merge-patch+json")
    _, unchanged = emulator.http("PATCH", f"{WIDGETS}/w1", {"metadata": {"labels": {"a": "b"}}},
                                 "application/merge-patch+json")
    assert spec_changed["metadata"]["generation"] == 2
    assert labelled["metadata"]["generation"] == 2  # metadata-only changes keep the generation
    assert int(spec_changed["metadata"]["resourceVersion"]) > rv1
    assert int(labelled["metadata"]["resourceVersion"]) > int(spec_changed["metadata"]["resourceVersion"])
    assert unchanged["metadata"]["resourceVersion"] == labelled["metadata"]["resourceVersion"]  # a no-op write
    assert spec_changed["metadata"]["uid"] == meta["uid"]

    status, generated = emulator.http("POST", CONFIGMAPS, {"metadata": {"generateName": "cm-"}, "data": {}})
    assert status == 201
    assert re.fullmatch(r"cm-[a-z0-9]{5}", generated["metadata"]["name"])
    assert "generation" not in generated["metadata"]  # like a real ConfigMap

    status, bad = emulator.http("POST", CONFIGMAPS, configmap("Bad_Name"))
    assert (status, bad["reason"]) == (422, "Invalid")


def test_conflicts_and_not_found_are_status_objects(emulator: Emulator, crd: dict[str, Any]) -> None:
    _, first = emulator.http("POST", WIDGETS, widget("w1", size=1))
    status, again = emulator.http("POST", WIDGETS, widget("w1", size=1))
    assert (status, again["kind"], again["reason"], again["code"]) == (409, "Status", "AlreadyExists", 409)
    assert again["message"] == 'widgets.example.com "w1" already exists'

    _, current = emulator.http("PATCH", f"{WIDGETS}/w1", {"spec": {"size": 2}}, "application/merge-patch+json")
    stale = dict(first, spec={"size": 3})  # carries the resourceVersion from before the patch
    status, body = emulator.http("PUT", f"{WIDGETS}/w1", stale)
    assert (status, body["reason"]) == (409, "Conflict")
    stale_patch = {"metadata": {"resourceVersion": first["metadata"]["resourceVersion"]}, "spec": {"size": 4}}
    status, body = emulator.http("PATCH", f"{WIDGETS}/w1", stale_patch, "application/merge-patch+json")
    assert (status, body["reason"]) == (409, "Conflict")
    status, replaced = emulator.http("PUT", f"{WIDGETS}/w1", dict(current, spec={"size": 5}))
    assert (status, replaced["spec"], replaced["metadata"]["generation"]) == (200, {"size": 5}, 3)

    status, body = emulator.http("GET", f"{WIDGETS}/missing")
    assert (status, body["kind"], body["status"], body["reason"], body["code"]) == (404, "Status", "Failure",
                                                                                   "NotFound", 404)
    assert body["message"] == 'widgets.example.com "missing" not found'
    status, body = emulator.http("PATCH", f"{WIDGETS}/w1", {"spec": {"size": 6}},
                                 "application/strategic-merge-patch+json")
    assert status == 415  # custom resources do not take strategic merge patches


def test_json_patch_failing_test_op_is_422(emulator: Emulator, crd: dict[str, Any]) -> None:
    _, created = emulator.http("POST", WIDGETS, widget("w1", size=1))
    rv = created["metadata"]["resourceVersion"]
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": "999999"},
           {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/x"]}]
    status, body = emulator.http("PATCH", f"{WIDGETS}/w1", ops, "application/json-patch+json")
    assert (status, body["reason"]) == (422, "Invalid")
    assert emulator.http("GET", f"{WIDGETS}/w1")[1]["metadata"]["resourceVersion"] == rv

    ops[0]["value"] = rv
    status, body = emulator.http("PATCH", f"{WIDGETS}/w1", ops, "application/json-patch+json")
    assert (status, body["metadata"]["finalizers"]) == (200, ["example.com/x"])


def test_status_subresource_is_isolated(emulator: Emulator, crd: dict[str, Any]) -> None:
    emulator.http("POST", WIDGETS, dict(widget("w1", size=1), status={"ignored": True}))
    _, main = emulator.http("PATCH", f"{WIDGETS}/w1", {"spec": {"size": 2}, "status": {"phase": "Nope"}},
                            "application/merge-patch+json")
    assert ("status" in main, main["spec"], main["metadata"]["generation"]) == (False, {"size": 2}, 2)
    _, sub = emulator.http("PATCH", f"{WIDGETS}/w1/status", {"spec": {"size": 9}, "status": {"phase": "Ready"}},
                           "application/merge-patch+json")
    assert (sub["spec"], sub["status"], sub["metadata"]["generation"]) == ({"size": 2}, {"phase": "Ready"}, 2)

    job = dict(JOB, status={"succeeded": 7})
    status, created = emulator.http("POST", JOBS, job)
    assert (status, "status" in created, created["metadata"]["generation"]) == (201, False, 1)
    _, done = emulator.http("PATCH", f"{JOBS}/j1/status", {"status": {"succeeded": 1}}, "application/merge-patch+json")
    assert (done["status"], done["metadata"]["generation"]) == ({"succeeded": 1}, 1)


def test_builtin_job_defaulting_and_validation(emulator: Emulator) -> None:
    status, created = emulator.http("POST", JOBS, JOB)
    uid = created["metadata"]["uid"]
    assert status == 201
    assert created["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    assert created["spec"]["template"]["metadata"]["labels"] == {
        "batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": "j1",
        "controller-uid": uid, "job-name": "j1"}
    assert (created["spec"]["backoffLimit"], created["spec"]["completions"]) == (6, 1)
    status, body = emulator.http("PATCH", f"{JOBS}/j1",
                                 {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "other"}]}}}},
                                 "application/strategic-merge-patch+json")
    assert (status, body["message"]) == (422, 'Job.batch "j1" is invalid: spec.template: Invalid value: '
                                               "field is immutable")
    no_policy = json.loads(json.dumps(JOB).replace('"restartPolicy": "Never", ', "").replace("j1", "j2"))
    status, body = emulator.http("POST", JOBS, no_policy)
    assert (status, "spec.template.spec.restartPolicy: Unsupported value: 'Always'" in body["message"]) == (422, True)


def test_crd_schema_prunes_defaults_and_validates(emulator: Emulator) -> None:
    assert emulator.http("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", GADGET_CRD)[0] == 201
    gadget = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g1"},
              "spec": {"size": 2, "extra": "pruned"}}
    status, created = emulator.http("POST", GADGETS, gadget)
    assert (status, created["spec"]) == (201, {"size": 2, "mode": "fast"})
    _, patched = emulator.http("PATCH", f"{GADGETS}/g1/status", {"status": {"phase": "Up", "returned": {"x": 1}}},
                               "application/merge-patch+json")
    assert patched["status"] == {"phase": "Up"}  # like handler return values that the schema does not declare
    status, body = emulator.http("PATCH", f"{GADGETS}/g1", {"spec": {"size": 0, "mode": "warp"}},
                                 "application/merge-patch+json")
    assert (status, [(c["field"], c["message"].split(":")[0]) for c in body["details"]["causes"]]) == (
        422, [("spec.mode", "Invalid value"), ("spec.size", "Invalid value")])
    status, body = emulator.http("POST", GADGETS, dict(gadget, metadata={"name": "g2"}, spec={}))
    assert (status, body["message"]) == (422, 'Gadget.example.com "g2" is invalid: spec.size: Required value')


@pytest.mark.emulator(check_schemas=False)
def test_schema_checks_can_be_turned_off(emulator: Emulator) -> None:
    emulator.http("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", GADGET_CRD)
    gadget = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {"size": 0, "x": 1}}
    status, created = emulator.http("POST", GADGETS, gadget)
    assert (status, created["spec"], emulator.check_schemas) == (201, {"size": 0, "x": 1}, False)


def test_label_and_field_selectors(emulator: Emulator) -> None:
    for name, labels in [("a", {"app": "x", "tier": "web"}), ("b", {"app": "x", "tier": "db"}),
                         ("c", {"app": "y"}), ("d", {})]:
        assert emulator.http("POST", CONFIGMAPS, configmap(name, labels))[0] == 201

    def names(**params: str) -> list[str]:
        status, body = emulator.http("GET", f"{CONFIGMAPS}?{urllib.parse.urlencode(params)}")
        assert status == 200, body
        return [item["metadata"]["name"] for item in body["items"]]

    assert names(labelSelector="app=x") == ["a", "b"]
    assert names(labelSelector="app==x,tier!=web") == ["b"]
    assert names(labelSelector="app in (x, y),tier notin (db)") == ["a", "c"]
    assert names(labelSelector="tier") == ["a", "b"]
    assert names(labelSelector="!app") == ["d"]
    assert names(fieldSelector="metadata.name=c") == ["c"]
    assert names(fieldSelector="metadata.namespace=default,metadata.name!=a", labelSelector="app") == ["b", "c"]
    assert emulator.http("GET", f"{CONFIGMAPS}?labelSelector=app%20in%20x")[0] == 400
    status, page = emulator.http("GET", f"{CONFIGMAPS}?limit=3")
    assert ([i["metadata"]["name"] for i in page["items"]], page["metadata"]["remainingItemCount"]) == (
        ["a", "b", "c"], 1)
    token = urllib.parse.quote(page["metadata"]["continue"])
    assert [i["metadata"]["name"] for i in emulator.http("GET", f"{CONFIGMAPS}?limit=3&continue={token}")[1]["items"]] \
        == ["d"]


def test_watch_sends_only_newer_events(emulator: Emulator) -> None:
    emulator.http("POST", CONFIGMAPS, configmap("old", {"app": "x"}))
    _, listing = emulator.http("GET", CONFIGMAPS)
    since = listing["metadata"]["resourceVersion"]
    emulator.http("POST", CONFIGMAPS, configmap("new", {"app": "x"}))
    emulator.http("PATCH", f"{CONFIGMAPS}/old", {"data": {"k": "2"}}, "application/merge-patch+json")
    emulator.http("PATCH", f"{CONFIGMAPS}/new", {"metadata": {"labels": {"app": "z"}}}, "application/merge-patch+json")

    assert watch(emulator, CONFIGMAPS, resourceVersion=since) == [
        ("ADDED", "new"), ("MODIFIED", "old"), ("MODIFIED", "new")]
    assert watch(emulator, CONFIGMAPS, resourceVersion=since, labelSelector="app=x") == [
        ("ADDED", "new"), ("MODIFIED", "old"), ("DELETED", "new")]  # "new" stopped matching
    assert watch(emulator, CONFIGMAPS) == [("ADDED", "new"), ("ADDED", "old")]  # no RV: the current state
    initial = watch(emulator, CONFIGMAPS, sendInitialEvents="true", resourceVersionMatch="NotOlderThan",
                    allowWatchBookmarks="true")
    assert [event[0] for event in initial] == ["ADDED", "ADDED", "BOOKMARK"]

    live: list[tuple[str, str]] = []
    rv_now = emulator.http("GET", CONFIGMAPS)[1]["metadata"]["resourceVersion"]
    thread = threading.Thread(target=lambda: live.extend(watch(emulator, CONFIGMAPS, resourceVersion=rv_now,
                                                              timeout_seconds=1)))
    thread.start()
    time.sleep(0.2)
    emulator.http("DELETE", f"{CONFIGMAPS}/old")
    thread.join()
    assert live == [("DELETED", "old")]


def test_watch_from_a_compacted_resource_version_gets_410(emulator: Emulator, monkeypatch: Any) -> None:
    from kubetune_emulator import store
    monkeypatch.setattr(store, "EVENT_LOG_LIMIT", 2)  # keep only the last two configmap events
    created = [emulator.http("POST", CONFIGMAPS, configmap(name))[1] for name in "abcd"]
    since = created[0]["metadata"]["resourceVersion"]
    events = emulator.watch_events(CONFIGMAPS, resourceVersion=since)
    assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in events] == [("ERROR", 410, "Expired")]
    assert watch(emulator, CONFIGMAPS, resourceVersion=created[2]["metadata"]["resourceVersion"]) == [("ADDED", "d")]


def test_in_process_access_and_kmock_history(emulator: Emulator, tmp_path: Any) -> None:
    manifest = tmp_path / "all.yaml"
    manifest.write_text(json.dumps(CRD) + "\n---\n" + json.dumps(widget("w1", size=1)))
    emulator.apply_file(manifest)
    emulator.apply(widget("w1", size=2))
    emulator.patch("example.com", "v1", "widgets", "default", "w1", {"status": {"phase": "Done"}},
                   subresource="status")
    status, body = emulator.http("GET", f"{WIDGETS}/w1")
    assert (status, body["spec"], body["status"], body["metadata"]["generation"]) == (
        200, {"size": 2}, {"phase": "Done"}, 2)
    assert [item["metadata"]["name"] for item in emulator.list("example.com", "v1", "widgets")] == ["w1"]
    history = emulator.handler.objects["example.com/v1/widgets", "default", "w1"].history
    assert [version["spec"]["size"] for version in history] == [1, 2, 2]
    emulator.delete("example.com", "v1", "widgets", "default", "w1")
    assert emulator.get("example.com", "v1", "widgets", "default", "w1") is None
    assert emulator.requests[-1].path == f"{WIDGETS}/w1"  # in-process calls are not HTTP requests


def test_strategic_merge_patch_merges_lists_by_key() -> None:
    from kubetune_emulator.patching import strategic_merge_patch
    current = {"metadata": {"finalizers": ["a"]},
               "spec": {"containers": [{"name": "main", "image": "v1", "ports": [{"containerPort": 80}]},
                                       {"name": "side", "image": "s1"}]}}
    patch = {"metadata": {"finalizers": ["b"]},
             "spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "main"}],
                      "containers": [{"name": "main", "image": "v2"}, {"name": "side", "$patch": "delete"}]}}
    assert strategic_merge_patch(current, patch) == {
        "metadata": {"finalizers": ["a", "b"]},
        "spec": {"containers": [{"name": "main", "image": "v2", "ports": [{"containerPort": 80}]}]}}


def test_finalizers_delay_deletion_until_removed(emulator: Emulator, crd: dict[str, Any]) -> None:
    body = widget("w1", size=1)
    body["metadata"]["finalizers"] = ["example.com/cleanup"]
    _, created = emulator.http("POST", WIDGETS, body)
    status, deleting = emulator.http("DELETE", f"{WIDGETS}/w1")
    meta = deleting["metadata"]
    assert (status, meta["finalizers"], meta["generation"]) == (200, ["example.com/cleanup"], 2)
    assert meta["deletionTimestamp"] and int(meta["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    status, body = emulator.http("PATCH", f"{WIDGETS}/w1", {"metadata": {"finalizers": ["a/b", "example.com/cleanup"]}},
                                 "application/merge-patch+json")
    assert (status, "no new finalizers" in body["message"]) == (422, True)

    events_from = created["metadata"]["resourceVersion"]
    status, _ = emulator.http("PATCH", f"{WIDGETS}/w1", {"metadata": {"finalizers": None}},
                              "application/merge-patch+json")
    assert status == 200
    assert emulator.http("GET", f"{WIDGETS}/w1")[0] == 404
    assert watch(emulator, WIDGETS, resourceVersion=events_from) == [("MODIFIED", "w1"), ("DELETED", "w1")]


def test_owner_references_are_garbage_collected(emulator: Emulator, crd: dict[str, Any]) -> None:
    _, parent = emulator.http("POST", WIDGETS, widget("parent"))
    _, other = emulator.http("POST", WIDGETS, widget("other"))
    _, child = emulator.http("POST", CONFIGMAPS, configmap("child", owners=[owner(parent)]))
    emulator.http("POST", CONFIGMAPS, configmap("grandchild", owners=[owner(child)]))
    emulator.http("POST", CONFIGMAPS, configmap("shared", owners=[owner(parent), owner(other)]))
    emulator.http("POST", CONFIGMAPS, configmap("unrelated"))

    assert emulator.http("DELETE", f"{WIDGETS}/parent")[0] == 200
    names = [item["metadata"]["name"] for item in emulator.http("GET", CONFIGMAPS)[1]["items"]]
    assert names == ["shared", "unrelated"]
    shared = emulator.http("GET", f"{CONFIGMAPS}/shared")[1]
    assert shared["metadata"]["ownerReferences"] == [owner(other)]

    _, orphaner = emulator.http("POST", WIDGETS, widget("orphaner"))
    emulator.http("POST", CONFIGMAPS, configmap("orphan", owners=[owner(orphaner)]))
    emulator.http("DELETE", f"{WIDGETS}/orphaner", {"propagationPolicy": "Orphan"})
    status, orphan = emulator.http("GET", f"{CONFIGMAPS}/orphan")
    assert (status, "ownerReferences" in orphan["metadata"]) == (200, False)


def test_namespace_deletion_removes_its_objects(emulator: Emulator) -> None:
    assert emulator.http("POST", "/api/v1/namespaces", {"metadata": {"name": "team"}})[0] == 201
    emulator.http("POST", "/api/v1/namespaces/team/configmaps", configmap("c1"))
    status, terminating = emulator.http("DELETE", "/api/v1/namespaces/team")
    assert (status, terminating["status"]["phase"]) == (200, "Terminating")
    assert emulator.http("GET", "/api/v1/namespaces/team")[0] == 404
    assert emulator.http("GET", "/api/v1/namespaces/team/configmaps/c1")[0] == 404
    assert emulator.http("DELETE", "/api/v1/namespaces/default")[0] == 403


def test_crd_makes_the_kind_discoverable_and_served(emulator: Emulator) -> None:
    assert emulator.http("GET", "/apis/example.com/v1")[0] == 404
    assert emulator.http("GET", WIDGETS)[0] == 404
    status, crd_obj = emulator.http("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", CRD)
    assert status == 201
    assert {c["type"]: c["status"] for c in crd_obj["status"]["conditions"]} == {
        "NamesAccepted": "True", "Established": "True"}

    groups = {g["name"]: g["preferredVersion"]["version"] for g in emulator.http("GET", "/apis")[1]["groups"]}
    assert groups["example.com"] == "v1"
    resources = {r["name"]: r for r in emulator.http("GET", "/apis/example.com/v1")[1]["resources"]}
    assert sorted(resources) == ["widgets", "widgets/scale", "widgets/status"]
    assert (resources["widgets"]["kind"], resources["widgets"]["shortNames"], resources["widgets"]["namespaced"]) \
        == ("Widget", ["wg"], True)
    assert emulator.http("POST", WIDGETS, widget("w1", replicas=2))[0] == 201

    _, scale = emulator.http("GET", f"{WIDGETS}/w1/scale")
    assert (scale["kind"], scale["spec"]["replicas"]) == ("Scale", 2)
    _, scaled = emulator.http("PATCH", f"{WIDGETS}/w1/scale", {"spec": {"replicas": 5}},
                              "application/merge-patch+json")
    assert (scaled["spec"]["replicas"], emulator.http("GET", f"{WIDGETS}/w1")[1]["spec"]["replicas"]) == (5, 5)

    assert emulator.http("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com"
                         )[0] == 200
    assert emulator.http("GET", "/apis/example.com/v1")[0] == 404
    assert emulator.http("GET", WIDGETS)[0] == 404
    assert emulator.handler.store.objects[("example.com", "widgets")] == {}  # its objects went with it


def test_kubectl_apply_get_patch_wait_delete(emulator: Emulator, kubectl: Any, tmp_path: Any) -> None:
    manifest = tmp_path / "widget.yaml"
    crd_file = tmp_path / "crd.json"
    crd_file.write_text(json.dumps(CRD))
    manifest.write_text("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 1}\n")
    assert "created" in kubectl("apply", "-f", str(crd_file)).stdout
    assert kubectl("apply", "-f", str(manifest)).stdout.strip() == "widget.example.com/w1 created"
    manifest.write_text(manifest.read_text().replace("size: 1", "size: 2"))
    assert kubectl("apply", "-f", str(manifest)).stdout.strip() == \
        "widget.example.com/w1 configured"
    got = json.loads(kubectl("get", "wg", "w1", "-o", "json").stdout)
    assert (got["spec"], got["metadata"]["generation"]) == ({"size": 2}, 2)

    kubectl("patch", "widget", "w1", "--subresource=status", "--type=merge",
            "-p", '{"status": {"conditions": [{"type": "Ready", "status": "True"}]}}')
    assert kubectl("wait", "--for=condition=Ready", "widget/w1", "--timeout=5s").stdout.strip() == \
        "widget.example.com/w1 condition met"
    assert kubectl("get", "widgets").stdout.split() == ["NAME", "READY", "w1", "True"]

    base = [str(find_kubectl()), "--kubeconfig", emulator.kubeconfig, "--cache-dir", str(tmp_path / "cache")]
    stream = subprocess.Popen([*base, "get", "widgets", "-w", "--no-headers"], stdout=subprocess.PIPE, text=True)
    try:
        assert stream.stdout is not None
        assert stream.stdout.readline().split() == ["w1", "True"]
    finally:
        stream.kill()
        stream.wait()

    kubectl("patch", "widget", "w1", "--type=merge", "-p", '{"metadata": {"finalizers": ["example.com/x"]}}')
    kubectl("delete", "widget", "w1", "--wait=false")
    assert json.loads(kubectl("get", "widget", "w1", "-o", "json").stdout)["metadata"]["deletionTimestamp"]
    kubectl("patch", "widget", "w1", "--type=json", "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]')
    assert "NotFound" in kubectl("get", "widget", "w1", check=False).stderr
    assert emulator.internal_errors == []


def test_request_counter_counts_every_request(emulator: Emulator) -> None:
    emulator.http("GET", "/version")
    emulator.reset_requests()
    assert emulator.requests == []
    emulator.http("POST", CONFIGMAPS, configmap("a"))
    emulator.http("PATCH", f"{CONFIGMAPS}/a", {"data": {"x": "y"}}, "application/merge-patch+json")
    emulator.http("GET", f"{CONFIGMAPS}?labelSelector=app")
    emulator.http("GET", "/api/v1/namespaces/default/configmaps/missing")
    assert [(r.method, r.path, r.verb) for r in emulator.requests] == [
        ("POST", CONFIGMAPS, "create"), ("PATCH", f"{CONFIGMAPS}/a", "patch"), ("GET", CONFIGMAPS, "list"),
        ("GET", f"{CONFIGMAPS}/missing", "get")]
    assert emulator.requests[2].query == {"labelSelector": "app"}
    assert emulator.request_counts() == {("create", "configmaps"): 1, ("patch", "configmaps"): 1,
                                         ("list", "configmaps"): 1, ("get", "configmaps"): 1}


def test_kmock_reactions_can_inject_faults(emulator: Emulator) -> None:
    emulator.http("POST", CONFIGMAPS, configmap("a"))
    emulator.handler["get /api/v1/namespaces/default/configmaps/a"][:1] << 503  # once, then served normally
    assert emulator.http("GET", f"{CONFIGMAPS}/a")[0] == 503
    status, body = emulator.http("GET", f"{CONFIGMAPS}/a")
    assert (status, body["data"]) == (200, {"k": "v"})


def test_cli_serves_until_sigterm(tmp_path: Any) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen([sys.executable, "-m", "kubetune_emulator", "--port", "0", "--kubeconfig",
                                str(kubeconfig)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert f"server: {url}" in kubeconfig.read_text()
        with urllib.request.urlopen(f"{url}/api/v1/namespaces/default", timeout=5) as response:
            assert json.loads(response.read())["metadata"]["name"] == "default"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_kopf_operator_handles_the_lifecycle(emulator: Emulator, crd: dict[str, Any], request: pytest.FixtureRequest) -> None:
    import kopf
    from kopf.testing import KopfRunner

    registry = kopf.OperatorRegistry()
    handled: list[str] = []

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create("example.com", "v1", "widgets", registry=registry)
    def created(spec: Any, patch: Any, **_: Any) -> None:
        handled.append("create")
        patch.status["observedSize"] = spec["size"]

    @kopf.on.delete("example.com", "v1", "widgets", registry=registry)
    def deleted(name: str, **_: Any) -> None:
        handled.append(f"delete {name}")

    def wait_for(predicate: Any) -> Any:
        for _ in range(100):
            if result := predicate():
                return result
            time.sleep(0.05)
        raise AssertionError("timed out")

    settings = kopf.OperatorSettings()
    settings.posting.enabled = False
    # KopfRunner makes its registry the process-wide default; give kubetune's back afterwards.
    previous_registry = kopf.get_default_registry()
    request.addfinalizer(lambda: kopf.set_default_registry(previous_registry))
    with KopfRunner(["run", "--standalone", "--namespace", "default"], registry=registry, settings=settings,
                    timeout=10) as runner:
        wait_for(lambda: any(r.verb == "watch" and r.resource == "widgets.example.com" for r in emulator.requests))
        emulator.http("POST", WIDGETS, widget("w1", size=3))
        obj = wait_for(lambda: (o := emulator.get("example.com", "v1", "widgets", "default", "w1"))
                       and o.get("status", {}).get("observedSize") and o)
        assert obj["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
        assert obj["status"]["observedSize"] == 3
        status, deleting = emulator.http("DELETE", f"{WIDGETS}/w1")
        assert (status, bool(deleting["metadata"]["deletionTimestamp"])) == (200, True)
        wait_for(lambda: emulator.get("example.com", "v1", "widgets", "default", "w1") is None)
    assert runner.exit_code == 0
    assert handled == ["create", "delete w1"]
    assert emulator.internal_errors == []


@pytest.mark.parametrize(("kind", "spec", "field", "message"), [
    ("finetunejobs", {"baseModel": {"uri": "hf://org/m"}, "dataset": {"train": "s3://d/t.jsonl"},
                      "resources": {"nodes": 2, "gpus": 0}},
     "spec", 'Invalid value: "object": resources.nodes > 1 needs resources.gpus > 0'),
    ("finetunejobs", {"baseModel": {"uri": "hf://org/m"},
                      "dataset": {"train": "s3://d/t.jsonl", "validation": "s3://d/v.jsonl", "validationSplit": "0.1"}},
     "spec.dataset", 'Invalid value: "object": '),
    ("modeldeployments", {"baseModel": {"uri": "hf://org/m"},
                          "adapters": [{"name": "a", "uri": "s3://b/a", "fineTuneJobRef": {"name": "j"}}]},
     "spec.adapters[0]", 'Invalid value: "object": '),
])
def test_crd_cel_rules_reject_like_the_api_server(emulator: Emulator, kind, spec, field, message) -> None:
    """The kubetune CRDs' x-kubernetes-validations run in the emulator (cel-python), with the rule's
    message at the field of the rule, as `kubectl apply` shows it from a real API server."""
    for crd in ("kubetune.io_finetunejobs.yaml", "kubetune.io_modeldeployments.yaml"):
        emulator.apply_file(Path(__file__).resolve().parents[2] / "crds" / crd)
    body = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob" if kind == "finetunejobs" else "ModelDeployment",
            "metadata": {"name": "x"}, "spec": spec}
    status, error = emulator.http("POST", f"/apis/kubetune.io/v1alpha1/namespaces/default/{kind}", body)
    assert status == 422, error
    assert [(c["field"], c["message"].startswith(message)) for c in error["details"]["causes"]] == [(field, True)], error
    good = {**spec, "resources": {"nodes": 2, "gpus": 8}} if "resources" in spec else None
    if good is not None:
        assert emulator.http("POST", f"/apis/kubetune.io/v1alpha1/namespaces/default/{kind}", {**body, "spec": good})[0] == 201


def test_a_secrets_string_data_is_folded_into_data_on_create_and_update(emulator):
    """The API server's Secret strategy: `stringData` is write-only, merged into `data` (base64, winning over
    a `data` key of the same name) on create and on update; readers only ever see `data`."""
    import base64

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "default"},
              "data": {"a": base64.b64encode(b"old").decode(), "b": base64.b64encode(b"kept").decode()},
              "stringData": {"a": "new"}}
    created = emulator.create(secret)
    assert "stringData" not in created
    assert {k: base64.b64decode(v).decode() for k, v in created["data"].items()} == {"a": "new", "b": "kept"}
    stored = emulator.get("", "v1", "secrets", "default", "s")
    assert "stringData" not in stored and base64.b64decode(stored["data"]["a"]) == b"new"
    updated = emulator.patch("", "v1", "secrets", "default", "s", {"stringData": {"c": "added"}})
    assert "stringData" not in updated
    assert base64.b64decode(updated["data"]["c"]) == b"added" and base64.b64decode(updated["data"]["b"]) == b"kept"
    applied = emulator.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t", "namespace": "default"},
                              "stringData": {"key": "by-apply"}})  # server-side apply, as kubectl apply --server-side
    assert "stringData" not in applied and base64.b64decode(applied["data"]["key"]) == b"by-apply"
