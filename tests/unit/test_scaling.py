"""ModelDeployment scaling builders (builders/scaling.py), whole objects: the HPA, the KEDA ScaledObject, the
LeaderWorkerSet of a multi-node replica, the Deployment without replicas under an autoscaler, the stale children of
a mode switch, and the platform checks. The HPA is also validated offline against Kubernetes' own autoscaling/v2
schema (kubernetes-validate, strict); the CRD kinds are validated on the emulator (tests/emulator/test_scaling_kinds.py)."""

from __future__ import annotations

import copy
import json

import pytest

from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.validation import SpecError, parse
from kubetune.builders.modeldeployment import build_children, desired_set, resolve_spec
from kubetune.builders.scaling import handover, scaling_moves, stale_children
from kubetune.config import OperatorSettings
from kubetune.status.scaling import observed_workload, replicas_wanted

HPA_SETTINGS = OperatorSettings(serving_image="registry.example/kubetune/serving:1.0")
KEDA_SETTINGS = OperatorSettings(serving_image="registry.example/kubetune/serving:1.0", autoscaler="keda",
                                 prometheus_url="http://prometheus.monitoring:9090", leader_worker_set=True)
LWS_SETTINGS = OperatorSettings(serving_image="registry.example/kubetune/serving:1.0", leader_worker_set=True)
BODY = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "ml", "uid": "u-9", "generation": 3}}
OWNER = [{"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "name": "chat", "uid": "u-9",
          "controller": True, "blockOwnerDeletion": True}]
LABELS = {"app.kubernetes.io/managed-by": "kubetune", "app.kubernetes.io/component": "serving", "kubetune.io/modeldeployment": "chat"}
META = {"name": "chat-vllm", "namespace": "ml", "labels": LABELS, "ownerReferences": OWNER}
BASE = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-72B-Instruct"}, "resources": {"gpus": 8}, "replicas": 2}


def _children(spec: dict, settings: OperatorSettings) -> list[dict]:
    resolved = resolve_spec(parse(ModelDeploymentSpec, spec), settings)
    return build_children(BODY, resolved, settings, desired_set(1, []))


def test_hpa_on_waiting_requests_and_the_deployment_leaves_replicas_to_it():
    children = _children({**BASE, "autoscaling": {"minReplicas": 1, "maxReplicas": 6}}, HPA_SETTINGS)
    hpa, deployment = children[-2:]
    assert hpa == {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": META,
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-vllm"},
                 "minReplicas": 1, "maxReplicas": 6,
                 "metrics": [{"type": "Pods", "pods": {"metric": {"name": "vllm_num_requests_waiting"},
                                                       "target": {"type": "AverageValue", "averageValue": "5"}}}],
                 "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}}}
    assert deployment["kind"] == "Deployment" and "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    without = _children(BASE, HPA_SETTINGS)
    assert without[-1]["spec"]["replicas"] == 2 and [c["kind"] for c in without].count("HorizontalPodAutoscaler") == 0
    assert {k: v for k, v in without[-1]["spec"].items() if k != "replicas"} == deployment["spec"]  # nothing else moves


def test_hpa_is_valid_for_kubernetes_own_schema():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    hpa = _children({**BASE, "autoscaling": {"minReplicas": 2, "maxReplicas": 4, "metric": "kvCacheUsage",
                                             "target": "0.75"}}, HPA_SETTINGS)[-2]
    assert hpa["spec"]["metrics"][0]["pods"] == {"metric": {"name": "vllm_kv_cache_usage_perc"},
                                                 "target": {"type": "AverageValue", "averageValue": "0.75"}}
    kubernetes_validate.validate(hpa, "1.34.0", strict=True)
    broken = copy.deepcopy(hpa)
    broken["spec"]["metrics"][0]["pods"]["target"]["averageValues"] = "1"  # a typo the schema must catch
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.34.0", strict=True)


def test_keda_scaled_object_with_a_prometheus_trigger_may_scale_to_zero():
    children = _children({**BASE, "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "target": "2",
                                                  "scaleDownStabilizationSeconds": 600}}, KEDA_SETTINGS)
    scaled, deployment = children[-2:]
    assert scaled == {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": META,
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-vllm"},
                 "minReplicaCount": 0, "maxReplicaCount": 3, "cooldownPeriod": 600,
                 "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}}}},
                 "triggers": [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
                     "serverAddress": "http://prometheus.monitoring:9090",
                     "query": 'sum(vllm:num_requests_waiting{namespace="ml",model_name="chat"})',
                     "threshold": "2", "activationThreshold": "0"}},
                     # the way back from zero: requests the gateway holds while no replica is ready
                     {"type": "prometheus", "name": "gateway-waiting", "metricType": "AverageValue", "metadata": {
                      "serverAddress": "http://prometheus.monitoring:9090",
                      "query": 'sum(kubetune_gateway_requests_waiting{deployment_namespace="ml",modeldeployment="chat"})',
                      "threshold": "2", "activationThreshold": "0"}}]}}
    assert "replicas" not in deployment["spec"]
    # never at zero: no wake trigger; on KV-cache usage the gateway's waiting requests keep their own unit
    warm = _children({**BASE, "autoscaling": {"minReplicas": 1, "maxReplicas": 3}}, KEDA_SETTINGS)[-2]
    assert [t.get("name") for t in warm["spec"]["triggers"]] == [None]
    cache = _children({**BASE, "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "metric": "kvCacheUsage"}},
                      KEDA_SETTINGS)[-2]["spec"]["triggers"]
    assert [(t["metadata"]["threshold"], t["metadata"]["query"].split("{")[0]) for t in cache] == [
        ("0.8", "sum(vllm:kv_cache_usage_perc"), ("5", "sum(kubetune_gateway_requests_waiting")]


def test_the_platform_refuses_what_it_cannot_run_naming_the_field():
    with pytest.raises(SpecError, match=r"spec\.autoscaling\.minReplicas: 0 \(scale to zero\) needs KEDA"):
        _children({**BASE, "autoscaling": {"minReplicas": 0, "maxReplicas": 2}}, HPA_SETTINGS)
    with pytest.raises(SpecError, match=r"spec\.resources\.nodes: 2 nodes per replica need LeaderWorkerSet"):
        _children({**BASE, "resources": {"gpus": 8, "nodes": 2}}, HPA_SETTINGS)
    with pytest.raises(SpecError, match=r"spec\.baseModel\.uri: .*use hf:// or pvc://.*not s3://"):
        _children({**BASE, "baseModel": {"uri": "s3://models/qwen"}, "resources": {"gpus": 8, "nodes": 2}}, LWS_SETTINGS)
    with pytest.raises(SpecError, match=r"spec\.adapters: LoRA adapters are not served on multi-node replicas yet"):
        _children({**BASE, "resources": {"gpus": 8, "nodes": 2}, "adapters": [{"name": "a", "uri": "s3://b/a"}]}, LWS_SETTINGS)
    with pytest.raises(SpecError, match=r"spec\.autoscaling: the platform runs KEDA but has no Prometheus URL"):
        _children({**BASE, "autoscaling": {"maxReplicas": 2}}, OperatorSettings(autoscaler="keda"))
    for bad, field in [({"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}, "minReplicas must not exceed"),
                       ({"autoscaling": {"maxReplicas": 2, "metric": "kvCacheUsage", "target": "80"}}, "fraction 0-1"),
                       ({"autoscaling": {"maxReplicas": 2, "target": "0"}}, "must be above 0"),
                       ({"resources": {"gpus": 0, "nodes": 2}}, "nodes > 1 needs resources.gpus > 0")]:
        with pytest.raises(SpecError, match=field):
            parse(ModelDeploymentSpec, {**BASE, **bad})


def test_multi_node_replica_is_a_leader_worker_set_as_vllm_documents():
    spec = {**BASE, "resources": {"gpus": 8, "nodes": 2, "memory": "512Gi"}, "vllm": {"maxModelLen": 32768}}
    children = _children(spec, LWS_SETTINGS)
    assert [c["kind"] for c in children][-2:] == ["Service", "LeaderWorkerSet"]
    lws = children[-1]
    single = _children({**spec, "resources": {"gpus": 8, "memory": "512Gi"}}, LWS_SETTINGS)[-1]
    leader = copy.deepcopy(single["spec"]["template"])
    vllm = leader["spec"]["containers"][0]
    options = {**json.loads(next(e["value"] for e in vllm["env"] if e["name"] == "KUBETUNE_VLLM_OPTIONS")),
               "tensorParallelSize": 8, "extraArgs": ["--pipeline-parallel-size", "2", "--distributed-executor-backend", "ray"]}
    vllm["command"] = ["sh", "-c", 'ray start --head --port=6379 --disable-usage-stats && exec python -m kubetune_serving.launch "$@"',
                       "launch"]
    vllm["ports"].append({"name": "ray", "containerPort": 6379})
    next(e for e in vllm["env"] if e["name"] == "KUBETUNE_VLLM_OPTIONS")["value"] = json.dumps(options, sort_keys=True)
    leader["metadata"]["annotations"] = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]["annotations"]
    worker_env = [e for e in vllm["env"] if e["name"] not in ("KUBETUNE_VLLM_OPTIONS", "KUBETUNE_SERVED_MODEL_NAME")]
    worker_volumes = [v for v in leader["spec"]["volumes"] if v["name"] in ("cache", "tmp", "dshm")]
    pod_fields = {k: v for k, v in leader["spec"].items() if k not in ("containers", "volumes")}
    assert lws == {
        "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "metadata": META,
        "spec": {
            "replicas": 2, "startupPolicy": "LeaderCreated",
            "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdateConfiguration": {"maxSurge": 1, "maxUnavailable": 0}},
            "leaderWorkerTemplate": {
                "size": 2, "restartPolicy": "RecreateGroupOnPodRestart", "leaderTemplate": leader,
                "workerTemplate": {
                    "metadata": {"labels": {**LABELS, "app.kubernetes.io/component": "serving-worker"},
                                 "annotations": leader["metadata"]["annotations"]},
                    "spec": {**pod_fields, "volumes": worker_volumes, "containers": [{
                        "name": "ray-worker", "image": "registry.example/kubetune/serving:1.0", "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", 'exec ray start --address="$LWS_LEADER_ADDRESS:6379" --block --disable-usage-stats'],
                        "env": worker_env, "resources": vllm["resources"], "securityContext": vllm["securityContext"],
                        "volumeMounts": vllm["volumeMounts"]}]}}}}}
    # The sidecar (and its token) on the leader only; the leader's labels are the Service's selector, the workers' are not.
    assert [c["name"] for c in leader["spec"]["containers"]] == ["vllm", "adapter-sync"]
    service = children[-2]
    assert all(leader["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items())
    worker_labels = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["metadata"]["labels"]
    assert not all(worker_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert leader["metadata"]["annotations"] != single["spec"]["template"]["metadata"]["annotations"]  # a new template hash


def test_autoscaled_multi_node_targets_the_leader_worker_set():
    children = _children({**BASE, "resources": {"gpus": 8, "nodes": 2}, "autoscaling": {"maxReplicas": 4}}, KEDA_SETTINGS)
    scaled, lws = children[-2:]
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
                                                "name": "chat-vllm"}
    assert "replicas" not in lws["spec"]


def test_a_mode_switch_deletes_the_children_of_kinds_no_longer_built():
    def observed(*kinds):
        return {kind: {"metadata": {"name": "chat-vllm", "namespace": "ml"}} for kind in kinds}

    plain = resolve_spec(parse(ModelDeploymentSpec, BASE), LWS_SETTINGS)
    scaled = resolve_spec(parse(ModelDeploymentSpec, {**BASE, "autoscaling": {"maxReplicas": 3}}), LWS_SETTINGS)
    multi = resolve_spec(parse(ModelDeploymentSpec, {**BASE, "resources": {"gpus": 8, "nodes": 2}}), LWS_SETTINGS)
    ref = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "chat-vllm", "namespace": "ml"}}
    assert stale_children("chat-vllm", plain, LWS_SETTINGS, observed("Deployment", "HorizontalPodAutoscaler")) == [ref]
    assert stale_children("chat-vllm", scaled, LWS_SETTINGS, observed("Deployment", "HorizontalPodAutoscaler")) == []
    assert stale_children("chat-vllm", multi, LWS_SETTINGS, observed("Deployment", "LeaderWorkerSet")) == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "chat-vllm", "namespace": "ml"}}]
    assert stale_children("chat-vllm", plain, LWS_SETTINGS, {"HorizontalPodAutoscaler": {  # not ours by name
        "metadata": {"name": "keda-hpa-chat-vllm", "namespace": "ml"}}}) == []


def test_status_counts_against_the_autoscaler_s_replicas():
    scaled = parse(ModelDeploymentSpec, {**BASE, "autoscaling": {"minReplicas": 2, "maxReplicas": 6}})
    deployment = {"metadata": {"name": "chat-vllm"}, "spec": {"replicas": 5}}
    assert observed_workload(scaled, {"Deployment": deployment}) is deployment
    assert replicas_wanted(scaled, deployment).replicas == 5
    assert replicas_wanted(scaled, None).replicas == 2  # not created yet: the autoscaler's floor
    plain = parse(ModelDeploymentSpec, BASE)
    assert replicas_wanted(plain, deployment).replicas == 2
    multi = parse(ModelDeploymentSpec, {**BASE, "resources": {"gpus": 8, "nodes": 2}})
    assert observed_workload(multi, {"Deployment": deployment}) is None


def test_the_replicas_are_handed_over_only_while_the_operator_owns_them():
    scaled = resolve_spec(parse(ModelDeploymentSpec, {**BASE, "autoscaling": {"maxReplicas": 3}}), HPA_SETTINGS)
    plain = resolve_spec(parse(ModelDeploymentSpec, BASE), HPA_SETTINGS)

    def deployment(owner_fields):
        return {"metadata": {"name": "chat-vllm", "namespace": "ml", "managedFields": [
            {"manager": "kubetune-operator", "operation": "Apply", "fieldsV1": {"f:spec": owner_fields}}]},
            "spec": {"replicas": 4}}

    owns = deployment({"f:replicas": {}, "f:template": {}})
    gave_up = deployment({"f:template": {}})
    assert handover(scaled, "Deployment", owns) == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                    "metadata": {"name": "chat-vllm", "namespace": "ml"}, "spec": {"replicas": 4}}
    assert handover(scaled, "Deployment", gave_up) is None  # handed over already (or the autoscaler took it)
    assert handover(plain, "Deployment", owns) is None and handover(scaled, "Deployment", None) is None
    moves = scaling_moves("chat-vllm", scaled, HPA_SETTINGS, {"Deployment": owns})
    assert [(m.manifest["kind"], m.field_manager, m.delete) for m in moves] == [
        ("Deployment", "kubetune-handover-to-autoscaler", False)]
