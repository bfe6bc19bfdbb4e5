"""The one reconcile skeleton converges (handlers/reconcile.py): every child is server-side applied with the
operator's field manager on every pass, so a child deleted or edited by hand is put back, and an operator
killed between any two applies finishes the job on its next start, with no duplicate.

The emulator's server-side apply follows the API server where this relies on it (tools/kubetune_emulator/
fieldmanager.py): an apply needs a fieldManager; one that creates is authorized as create too; the manager owns
exactly what it applied, so a field it stops applying (a Service's old port) goes and fields other clients set
(a user's label) stay; force takes back a field someone else changed.
"""

from __future__ import annotations

import json
import time

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.validation import parse
from kubetune.builders import finetunejob as ftj_builders
from kubetune.builders import modeldeployment as md_builders
from kubetune.config import OperatorSettings
from kubetune.plan.modeldeployment import next_desired, resolve_adapters

from .harness import SETTINGS_ENV, Cluster, wait_for
from .test_modeldeployment import BASE, finish_finetunejob, md

SPEC = {"baseModel": BASE, "dataset": {"train": "s3://data/chat.jsonl"}}
MD_SPEC = {"baseModel": BASE, "adapters": [{"name": "legal", "uri": "s3://adapters/test/legal"}]}
MERGE = "application/merge-patch+json"
PLURALS = {"ConfigMap": "configmaps", "ServiceAccount": "serviceaccounts", "Service": "services", "Role": "roles",
           "RoleBinding": "rolebindings", "Job": "jobs", "Deployment": "deployments"}
PREFIX = {"ConfigMap": "/api/v1", "ServiceAccount": "/api/v1", "Service": "/api/v1", "Role": "/apis/rbac.authorization.k8s.io/v1",
          "RoleBinding": "/apis/rbac.authorization.k8s.io/v1", "Job": "/apis/batch/v1", "Deployment": "/apis/apps/v1"}


def path(kind: str, name: str = "") -> str:
    return f"{PREFIX[kind]}/namespaces/default/{PLURALS[kind]}" + (f"/{name}" if name else "")


def live(cluster: Cluster, kind: str, name: str) -> dict | None:
    return wait_for(lambda: cluster.raw("GET", path(kind, name)), timeout=15, what=f"{kind} {name}")


def built(cluster: Cluster, kind: str, name: str) -> list[dict]:
    """The children the operator's own builders make for a FineTuneJob or ModelDeployment, in apply order."""
    settings = OperatorSettings.from_env(SETTINGS_ENV)
    if kind == "FineTuneJob":
        body = cluster.ftj(name)
        return ftj_builders.build_children(body, ftj_builders.resolve_spec(parse(FineTuneJobSpec, body["spec"]), settings), settings)
    body = cluster.custom.get_namespaced_custom_object("kubetune.io", "v1alpha1", "default", "modeldeployments", name)
    spec = md_builders.resolve_spec(parse(ModelDeploymentSpec, body["spec"]), settings)
    return md_builders.build_children(body, spec, settings, next_desired(None, resolve_adapters(spec, "default", {})))


def put_back(cluster: Cluster, kind: str, name: str, check) -> dict:
    return wait_for(lambda: (obj := cluster.raw("GET", path(kind, name))) and check(obj) and obj, timeout=15,
                    what=f"{kind} {name} put back")


def test_a_serving_child_deleted_or_edited_by_hand_is_put_back(cluster, operator):
    md(cluster, "chat", MD_SPEC)
    children = [(child["kind"], child["metadata"]["name"]) for child in built(cluster, "ModelDeployment", "chat")]
    assert {kind for kind, _ in children} == {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Service", "Deployment"}
    for kind, name in children:
        uid = live(cluster, kind, name)["metadata"]["uid"]
        cluster.raw("DELETE", path(kind, name))
        put_back(cluster, kind, name, lambda obj, uid=uid: obj["metadata"]["uid"] != uid)

    # Edited: what the operator applies is taken back; what someone else added stays.
    cluster.raw("PATCH", path("Service", "chat"), {"metadata": {"labels": {"team": "a"}}, "spec": {
        "ports": [{"name": "http", "port": 8000, "targetPort": 9999, "protocol": "TCP"}]}}, MERGE)
    svc = put_back(cluster, "Service", "chat", lambda obj: obj["spec"]["ports"][0]["targetPort"] == "http")
    assert svc["metadata"]["labels"]["team"] == "a"
    cluster.raw("PATCH", path("Role", "chat-serving"), {"rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]}, MERGE)
    put_back(cluster, "Role", "chat-serving", lambda obj: obj["rules"][0]["verbs"] == ["list", "watch"])
    cluster.raw("PATCH", path("ConfigMap", "chat-adapters"), {"data": {"adapters.json": "{}"}}, MERGE)
    put_back(cluster, "ConfigMap", "chat-adapters", lambda obj: json.loads(obj["data"]["adapters.json"]).get("adapters"))
    cluster.raw("PATCH", path("Deployment", "chat-vllm"), {"spec": {"replicas": 5}}, MERGE)
    put_back(cluster, "Deployment", "chat-vllm", lambda obj: obj["spec"]["replicas"] == 1)


def test_a_service_keeps_only_the_port_the_spec_names(cluster, operator):
    """A field the operator stops applying goes (server-side apply removes what its manager no longer owns):
    the old port of a changed spec.service.port does not linger next to the new one."""
    md(cluster, "chat", MD_SPEC)
    live(cluster, "Service", "chat")
    cluster.custom.patch_namespaced_custom_object("kubetune.io", "v1alpha1", "default", "modeldeployments", "chat",
                                                  {"spec": {"service": {"port": 443}}})
    svc = put_back(cluster, "Service", "chat", lambda obj: [p["port"] for p in obj["spec"]["ports"]] == [443])
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


def test_a_training_child_deleted_or_edited_by_hand_is_put_back_but_a_finished_job_is_not_rerun(cluster, operator):
    cluster.create_ftj("bot", SPEC)
    children = [(child["kind"], child["metadata"]["name"]) for child in built(cluster, "FineTuneJob", "bot")]
    for kind, name in children:  # the Job too: deleted before the run ended, it is created again
        uid = live(cluster, kind, name)["metadata"]["uid"]
        cluster.raw("DELETE", path(kind, name))
        put_back(cluster, kind, name, lambda obj, uid=uid: obj["metadata"]["uid"] != uid)
    config = live(cluster, "ConfigMap", "bot-trainer-config")["data"]
    cluster.raw("PATCH", path("ConfigMap", "bot-trainer-config"), {"data": {c.TRAINER_CONFIG_KEY: "{}"}}, MERGE)
    put_back(cluster, "ConfigMap", "bot-trainer-config", lambda obj: obj["data"] == config)

    finish_finetunejob(cluster, "bot", "b" * 64)
    cluster.raw("DELETE", path("Job", "bot-train"))  # cleaned up after the run (a TTL, a user)
    cluster.raw("DELETE", path("Role", "bot-trainer"))
    put_back(cluster, "Role", "bot-trainer", lambda obj: True)  # the reconcile ran ...
    time.sleep(0.5)
    assert cluster.jobs() == []  # ... and did not train again
    assert cluster.condition("bot", "Succeeded")["status"] == "True"


def test_an_operator_killed_between_any_two_applies_converges_without_duplicates(cluster, operator_process, emulator):
    """The half-done states are made deterministic: for every k, a parent whose first k children (in apply order)
    the dead operator had created, stored before `kubetune operator` starts. Each ends with every child, once,
    the ones already there adopted as they were (same uid) and brought to the desired state."""
    made: dict[tuple[str, str], str] = {}
    parents = []
    for kind, count in (("FineTuneJob", 5), ("ModelDeployment", 6)):
        for k in range(count + 1):
            name = f"{'ftj' if kind == 'FineTuneJob' else 'md'}-{k}"
            cluster.create_ftj(name, SPEC) if kind == "FineTuneJob" else md(cluster, name, MD_SPEC)
            children = built(cluster, kind, name)
            assert len(children) == count
            for child in children[:k]:
                if child["kind"] == "ConfigMap":  # left half-written: drift the next pass repairs
                    child = {**child, "data": {key: "{}" for key in child["data"]}}
                made[(child["kind"], child["metadata"]["name"])] = emulator.create(child)["metadata"]["uid"]
            parents.append((kind, name, children))

    operator_process.start()
    for kind, name, children in parents:
        for child in children:
            obj = live(cluster, child["kind"], child["metadata"]["name"])
            key = (child["kind"], child["metadata"]["name"])
            assert made.get(key, obj["metadata"]["uid"]) == obj["metadata"]["uid"], key
            if child["kind"] == "ConfigMap":
                put_back(cluster, "ConfigMap", child["metadata"]["name"], lambda o, want=child["data"]: o["data"] == want)
    label = {"FineTuneJob": c.LABEL_FINETUNEJOB, "ModelDeployment": c.LABEL_MODELDEPLOYMENT}
    for kind, name, children in parents:
        for child_kind in {child["kind"] for child in children}:
            found = cluster.raw("GET", path(child_kind) + f"?labelSelector={label[kind]}={name}")["items"]
            assert len(found) == 1, (name, child_kind, [o["metadata"]["name"] for o in found])


def test_training_progress_does_not_replan_the_deployments_that_wait_for_it(cluster, operator, emulator):
    """The ModelDeployment controller acts on a FineTuneJob's outcome (published adapter, terminal conditions),
    not on each of its trainer's progress patches (every few seconds per job)."""
    cluster.create_ftj("tuned", SPEC)
    md(cluster, "chat", {"baseModel": BASE, "adapters": [{"name": "bot", "fineTuneJobRef": {"name": "tuned"}}]})
    live(cluster, "Deployment", "chat-vllm")
    time.sleep(1.0)  # the creation's own events settle
    emulator.reset_requests()
    for percent in (10, 20, 30, 40):
        cluster.patch_ftj_status("tuned", {"status": {"progress": {"percent": percent, "step": percent, "totalSteps": 100}}})
        time.sleep(0.2)
    time.sleep(1.0)
    applies = [r for r in emulator.requests if r.method == "PATCH" and r.query.get("fieldManager") == c.FIELD_MANAGER]
    assert applies == []

    finish_finetunejob(cluster, "tuned", "b" * 64)  # the outcome changed: the adapter joins the desired set
    wait_for(lambda: json.loads(live(cluster, "ConfigMap", "chat-adapters")["data"]["adapters.json"])["adapters"],
             timeout=15, what="the published adapter in the desired set")
