"""An operator that died after creating some of an object's children resumes: its creates get 409
AlreadyExists, it reads what is there (get, as the chart allows) and carries on, creating only what is
missing. The half-done state is made deterministic here: the children the dead operator had created are
built by the operator's own builders and stored before `kubetune operator` starts."""

from __future__ import annotations

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.validation import parse
from kubetune.builders import finetunejob as ftj_builders
from kubetune.builders import modeldeployment as md_builders
from kubetune.config import OperatorSettings

from .harness import SETTINGS_ENV, wait_for
from .rbac import OPERATOR_USER

SPEC = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"train": "s3://data/chat.jsonl"}}
MD_SPEC = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
           "adapters": [{"name": "legal", "uri": "s3://adapters/test/legal"}]}


def test_a_resumed_operator_adopts_the_children_it_created_before_it_died(cluster, operator_process, emulator):
    settings = OperatorSettings.from_env(SETTINGS_ENV)
    ftj = cluster.create_ftj("half", SPEC)
    resolved = ftj_builders.resolve_spec(parse(FineTuneJobSpec, ftj["spec"]), settings)
    *made, _job = ftj_builders.build_children(ftj, resolved, settings)
    md = cluster.custom.create_namespaced_custom_object("kubetune.io", "v1alpha1", "default", "modeldeployments", {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "half"}, "spec": MD_SPEC})
    md_spec = md_builders.resolve_spec(parse(ModelDeploymentSpec, md["spec"]), settings)
    *md_made, _deployment = md_builders.build_children(md, md_spec, settings, {})
    made += [child for child in md_made if child["kind"] != "ConfigMap"]  # died before the adapter set was written
    uids = {(child["kind"], child["metadata"]["name"]): emulator.create(child)["metadata"]["uid"] for child in made}

    operator_process.start()
    wait_for(lambda: cluster.job("half-train"), timeout=30, what="the training Job")
    wait_for(lambda: cluster.raw("GET", "/apis/apps/v1/namespaces/default/deployments/half-vllm"), timeout=30,
             what="the serving Deployment")
    for (kind, name), uid in uids.items():  # adopted as they were: neither replaced nor duplicated
        plural = {"ConfigMap": "configmaps", "ServiceAccount": "serviceaccounts", "Service": "services"}.get(kind)
        path = (f"/api/v1/namespaces/default/{plural}/{name}" if plural else
                f"/apis/rbac.authorization.k8s.io/v1/namespaces/default/{kind.lower()}s/{name}")
        assert cluster.raw("GET", path)["metadata"]["uid"] == uid, (kind, name)
    used = emulator.used_permissions(OPERATOR_USER)
    assert {("get", "", "configmaps"), ("get", "", "serviceaccounts"), ("get", "", "services"),
            ("get", "rbac.authorization.k8s.io", "roles"), ("get", "rbac.authorization.k8s.io", "rolebindings")} <= used
