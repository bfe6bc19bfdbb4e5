"""ModelDeployment scaling children. Pure functions.

* the serving workload: the Deployment (builders/modeldeployment.py), or with resources.nodes > 1 a LeaderWorkerSet
  (leaderworkerset.x-k8s.io/v1) whose groups are one replica each: the leader pod runs Ray's head, vLLM's OpenAI
  server and the adapter-sync sidecar, the workers join the leader's Ray cluster; vLLM runs tensor parallel over
  the GPUs of a node and pipeline parallel over the nodes (vLLM's "Parallelism and Scaling" guide, and its LWS
  deployment page). Workers carry another component label, so the Service, the operator's pod index and an HPA's
  selector see the leaders only (vLLM's API server and its metrics live there).
* with spec.autoscaling: an autoscaling/v2 HorizontalPodAutoscaler (a Pods metric served by prometheus-adapter),
  or a KEDA ScaledObject (Prometheus trigger) where the platform's autoscaler setting is keda. The workload is then
  applied without `replicas`, so the autoscaler alone owns that field (server-side apply: a field the operator's
  applied configuration leaves out is not the operator's; docs/scaling.md).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from ..api import constants as c
from ..api.common import uri_scheme
from ..api.modeldeployment import ModelDeploymentSpec
from ..api.scaling import (
    CUSTOM_METRIC,
    DEFAULT_TARGET,
    GATEWAY_WAITING_LABELS,
    GATEWAY_WAITING_METRIC,
    RAY_PORT,
    VLLM_METRIC,
    ScalingMetric,
)
from ..config import OperatorSettings
from .common import Child, Parent, object_meta

LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
KEDA_API_VERSION = "keda.sh/v1alpha1"
COMPONENT_SERVING_WORKER = "serving-worker"  # a LeaderWorkerSet's worker pods (no API server, no sidecar)
# Ray's head on the leader, then the usual launcher (its args follow "$@"); vLLM's Ray executor waits for the
# workers' GPUs to join before it places the pipeline stages.
LEADER_COMMAND = ["sh", "-c", f"ray start --head --port={RAY_PORT} --disable-usage-stats && "
                  "exec python -m kubetune_serving.launch \"$@\"", "launch"]
# LWS sets LWS_LEADER_ADDRESS (the leader's stable DNS name) in every container of the group.
WORKER_COMMAND = ["sh", "-c", f"exec ray start --address=\"$LWS_LEADER_ADDRESS:{RAY_PORT}\" --block --disable-usage-stats"]
MULTI_NODE_MODEL_SCHEMES = ("hf", "pvc")


def scaling_problems(spec: ModelDeploymentSpec, settings: OperatorSettings) -> list[str]:
    """What the platform cannot run of spec.autoscaling / spec.resources.nodes (field path: problem)."""
    problems = []
    scaling = spec.autoscaling
    if scaling is not None and scaling.min_replicas == 0 and settings.autoscaler != "keda":
        problems.append("spec.autoscaling.minReplicas: 0 (scale to zero) needs KEDA; this platform's autoscaler is "
                        "a HorizontalPodAutoscaler, whose minReplicas is at least 1")
    if scaling is not None and settings.autoscaler == "keda" and not settings.prometheus_url:
        problems.append("spec.autoscaling: the platform runs KEDA but has no Prometheus URL for its trigger "
                        "(operator setting prometheus_url)")
    if spec.resources.nodes > 1:
        if not settings.leader_worker_set:
            problems.append(f"spec.resources.nodes: {spec.resources.nodes} nodes per replica need LeaderWorkerSet, "
                            "which this platform has not enabled (operator setting leader_worker_set)")
        if spec.adapters:
            problems.append("spec.adapters: LoRA adapters are not served on multi-node replicas yet: vLLM's Ray workers "
                            "on the other nodes read an adapter's files from their own disk, and only the leader's "
                            "adapter-sync sidecar fetches them (docs/scaling.md#limits)")
        if uri_scheme(spec.base_model.uri) not in MULTI_NODE_MODEL_SCHEMES:
            problems.append("spec.baseModel.uri: every node of a multi-node replica loads its share of the weights "
                            "itself: use hf:// or pvc:// (a ReadOnlyMany claim), not "
                            f"{uri_scheme(spec.base_model.uri)}://")
    return problems


def multi_node_vllm_options(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """vLLM's documented multi-node layout: tensor_parallel_size = GPUs per node, pipeline_parallel_size = nodes,
    over Ray."""
    options = spec.vllm.to_dict()
    options["tensorParallelSize"] = spec.resources.gpus
    options["extraArgs"] = [*(options.get("extraArgs") or []), "--pipeline-parallel-size", str(spec.resources.nodes),
                            "--distributed-executor-backend", "ray"]
    return options


def _container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(ctr for ctr in pod_spec["containers"] if ctr["name"] == name)


def build_leader_worker_set(parent: Parent, name: str, spec: ModelDeploymentSpec, deployment: dict[str, Any]) -> dict[str, Any]:
    """The LeaderWorkerSet of a multi-node ModelDeployment, from the Deployment the single-node path would apply
    (same pod template: the leader is that pod with Ray's head in front of the launcher)."""
    template = copy.deepcopy(deployment["spec"]["template"])
    leader = template["spec"]
    vllm = _container(leader, c.SERVING_VLLM_CONTAINER)
    vllm["command"] = list(LEADER_COMMAND)
    vllm["ports"] = [*vllm["ports"], {"name": "ray", "containerPort": RAY_PORT}]
    for env in vllm["env"]:
        if env["name"] == "KUBETUNE_VLLM_OPTIONS":
            env["value"] = json.dumps(multi_node_vllm_options(spec), sort_keys=True)
    worker_labels = {**template["metadata"]["labels"], c.LABEL_COMPONENT: COMPONENT_SERVING_WORKER}
    worker_env = [e for e in vllm["env"] if e["name"] not in ("KUBETUNE_VLLM_OPTIONS", "KUBETUNE_SERVED_MODEL_NAME")]
    worker = {
        "name": "ray-worker", "image": vllm["image"], "imagePullPolicy": vllm["imagePullPolicy"],
        "command": list(WORKER_COMMAND), "env": worker_env, "resources": vllm["resources"],
        "securityContext": vllm["securityContext"], "volumeMounts": vllm["volumeMounts"],
    }
    mounted = {m["name"] for m in vllm["volumeMounts"]}
    worker_spec = {key: value for key, value in leader.items() if key not in ("containers", "volumes")}
    worker_spec.update({"containers": [worker], "volumes": [v for v in leader["volumes"] if v["name"] in mounted]})
    lws_spec: dict[str, Any] = {
        "replicas": deployment["spec"].get("replicas"),
        "startupPolicy": "LeaderCreated",
        # Like the Deployment: a new group is Ready (its leader's sidecar has every adapter) before an old one goes.
        "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdateConfiguration": {"maxSurge": 1, "maxUnavailable": 0}},
        "leaderWorkerTemplate": {
            "size": spec.resources.nodes,
            # A lost pod loses its pipeline stage: the whole group restarts together.
            "restartPolicy": "RecreateGroupOnPodRestart",
            "leaderTemplate": template,
            "workerTemplate": {"metadata": {"labels": worker_labels,
                                            "annotations": dict(template["metadata"].get("annotations") or {})},
                               "spec": worker_spec},
        },
    }
    if lws_spec["replicas"] is None:
        del lws_spec["replicas"]
    return {"apiVersion": LWS_API_VERSION, "kind": "LeaderWorkerSet",
            "metadata": object_meta(parent, name, deployment["metadata"]["labels"]), "spec": lws_spec}


def scale_target(workload: dict[str, Any]) -> dict[str, str]:
    return {"apiVersion": workload["apiVersion"], "kind": workload["kind"], "name": workload["metadata"]["name"]}


def build_hpa(parent: Parent, spec: ModelDeploymentSpec, workload: dict[str, Any]) -> dict[str, Any]:
    """autoscaling/v2 HPA holding the per-pod average of one vLLM gauge at the target (a Pods metric: the custom
    metrics API, which prometheus-adapter serves with the rule in docs/scaling.md)."""
    scaling = spec.autoscaling
    assert scaling is not None
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": object_meta(parent, workload["metadata"]["name"], workload["metadata"]["labels"]),
        "spec": {
            "scaleTargetRef": scale_target(workload),
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": CUSTOM_METRIC[scaling.metric]},
                "target": {"type": "AverageValue", "averageValue": scaling.effective_target}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds}},
        },
    }


def prometheus_query(parent: Parent, spec: ModelDeploymentSpec) -> str:
    """The sum of the gauge over the deployment's vLLM servers (vLLM labels its metrics model_name=<served name>,
    the ModelDeployment's name); KEDA divides it by the replicas (AverageValue), as the HPA averages a Pods metric."""
    assert spec.autoscaling is not None
    return f'sum({VLLM_METRIC[spec.autoscaling.metric]}{{namespace="{parent.namespace}",model_name="{parent.name}"}})'


def build_scaled_object(parent: Parent, spec: ModelDeploymentSpec, workload: dict[str, Any], prometheus_url: str) -> dict[str, Any]:
    """KEDA ScaledObject (keda.sh/v1alpha1) with a Prometheus trigger; minReplicaCount may be 0 (KEDA scales the
    workload to zero while the metric is at its activation threshold, 0)."""
    scaling = spec.autoscaling
    assert scaling is not None
    return {
        "apiVersion": KEDA_API_VERSION, "kind": "ScaledObject",
        "metadata": object_meta(parent, workload["metadata"]["name"], workload["metadata"]["labels"]),
        "spec": {
            "scaleTargetRef": scale_target(workload),
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "cooldownPeriod": scaling.scale_down_stabilization_seconds,
            "advanced": {"horizontalPodAutoscalerConfig": {
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds}}}},
            "triggers": [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
                "serverAddress": prometheus_url, "query": prometheus_query(parent, spec),
                "threshold": scaling.effective_target, "activationThreshold": "0"}}]
            + ([wake_trigger(parent, spec, prometheus_url)] if scaling.min_replicas == 0 else []),
        },
    }


def wake_trigger(parent: Parent, spec: ModelDeploymentSpec, prometheus_url: str) -> dict[str, Any]:
    """Scale to zero's way back: the requests the kubetune gateway holds for this ModelDeployment while it has no
    ready replica (GATEWAY_WAITING_METRIC). With no pod there is no vLLM series; this one exists, and KEDA activates
    the workload above 0. They are waiting requests in the same unit as vllm:num_requests_waiting: the threshold is
    the requestsWaiting target (the spec's, or the default when the spec scales on KV-cache usage)."""
    scaling = spec.autoscaling
    assert scaling is not None
    ns_label, md_label = GATEWAY_WAITING_LABELS
    query = f'sum({GATEWAY_WAITING_METRIC}{{{ns_label}="{parent.namespace}",{md_label}="{parent.name}"}})'
    threshold = (scaling.effective_target if scaling.metric == ScalingMetric.REQUESTS_WAITING
                 else DEFAULT_TARGET[ScalingMetric.REQUESTS_WAITING])
    return {"type": "prometheus", "name": "gateway-waiting", "metricType": "AverageValue", "metadata": {
        "serverAddress": prometheus_url, "query": query, "threshold": threshold, "activationThreshold": "0"}}


def build_scaling(parent: Parent, spec: ModelDeploymentSpec, settings: OperatorSettings,
                  deployment: dict[str, Any]) -> list[dict[str, Any]]:
    """[autoscaler?, workload]: the workload last (apply order). `deployment`: builders.modeldeployment's Deployment."""
    workload = copy.deepcopy(deployment)
    if spec.autoscaling is not None:
        workload["spec"].pop("replicas", None)  # the autoscaler's field
    if spec.resources.nodes > 1:
        workload = build_leader_worker_set(parent, workload["metadata"]["name"], spec, workload)
    if spec.autoscaling is None:
        return [workload]
    if settings.autoscaler == "keda":
        return [build_scaled_object(parent, spec, workload, settings.prometheus_url or ""), workload]
    return [build_hpa(parent, spec, workload), workload]


# The kinds one of which builds a ModelDeployment's workload or autoscaler: a child of the kinds not built this time
# (a mode switch: autoscaling off, HPA <-> KEDA, single <-> multi-node) is deleted once observed.
SCALING_KINDS = {"Deployment": "apps/v1", "LeaderWorkerSet": LWS_API_VERSION,
                 "HorizontalPodAutoscaler": "autoscaling/v2", "ScaledObject": KEDA_API_VERSION}


def built_kinds(spec: ModelDeploymentSpec, settings: OperatorSettings) -> set[str]:
    """The scaling kinds build_scaling makes for this spec."""
    kinds = {"LeaderWorkerSet" if spec.resources.nodes > 1 else "Deployment"}
    if spec.autoscaling is not None:
        kinds.add("ScaledObject" if settings.autoscaler == "keda" else "HorizontalPodAutoscaler")
    return kinds


def stale_children(name: str, spec: ModelDeploymentSpec, settings: OperatorSettings,
                   observed: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The observed scaling children (kind -> object) of kinds this spec no longer builds, named `name` (the
    workload's name, which the autoscalers share: KEDA's own HPA, keda-hpa-<name>, is never one of them)."""
    wanted = built_kinds(spec, settings)
    return [{"apiVersion": SCALING_KINDS[kind], "kind": kind,
             "metadata": {"name": child["metadata"]["name"], "namespace": child["metadata"]["namespace"]}}
            for kind, child in sorted(observed.items())
            if kind not in wanted and kind in SCALING_KINDS and child["metadata"]["name"] == name]


HANDOVER_MANAGER = "kubetune-handover-to-autoscaler"


def _owned_by_operator(workload: dict[str, Any], field_path: tuple[str, ...]) -> bool:
    for entry in workload["metadata"].get("managedFields") or []:
        if entry.get("manager") == c.FIELD_MANAGER and entry.get("operation") == "Apply":
            node = entry.get("fieldsV1") or {}
            for element in field_path:
                node = node.get(element) if isinstance(node, dict) else None
            if node is not None:
                return True
    return False


def handover(spec: ModelDeploymentSpec, kind: str, workload: dict[str, Any] | None) -> dict[str, Any] | None:
    """Kubernetes' documented way to hand a field to an autoscaler under server-side apply ("Transferring
    ownership"): before the operator's apply leaves `replicas` out for the first time, a second field manager applies
    just the live value, so the field keeps an owner and is not reset to its default (1) until the autoscaler
    writes it. None when there is nothing to hand over (no autoscaling, no workload yet, the operator does not own
    the field)."""
    if spec.autoscaling is None or workload is None or not _owned_by_operator(workload, ("f:spec", "f:replicas")):
        return None
    replicas = (workload.get("spec") or {}).get("replicas")
    if replicas is None:
        return None
    meta = workload["metadata"]
    return {"apiVersion": SCALING_KINDS[kind], "kind": kind, "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": replicas}}


def scaling_moves(name: str, spec: ModelDeploymentSpec, settings: OperatorSettings,
                  observed: dict[str, dict[str, Any]]) -> list[Child]:
    """What one reconcile does before applying the workload: delete the stale children, hand the replicas over."""
    moves = [Child(stale, delete=True) for stale in stale_children(name, spec, settings, observed)]
    kind = "LeaderWorkerSet" if spec.resources.nodes > 1 else "Deployment"
    if (manifest := handover(spec, kind, observed.get(kind))) is not None:
        moves.append(Child(manifest, field_manager=HANDOVER_MANAGER))
    return moves
