"""ModelDeployment -> desired-adapters ConfigMap, per-deployment ServiceAccount/Role/RoleBinding,
Deployment (vLLM + adapter-sync sidecar) and Service. Pure functions.

Adapters reach the pods through the ConfigMap, which the sidecar *watches* through the API (changes
arrive in well under a second; no pod restart). Everything else that shapes vLLM is hashed into a
pod-template annotation, so changing it rolls the pods (readiness-gated, maxUnavailable 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..api import constants as c
from ..api.common import local_only_problems, pvc_claim
from ..api.modeldeployment import ModelDeploymentSpec
from ..api.sidecar import DesiredAdapter, DesiredSet
from ..api.validation import SpecError
from ..config import OperatorSettings
from .common import (
    Child,
    Parent,
    child_name,
    container_security_context,
    label_value,
    object_meta,
    pod_security_context,
    pvc_volumes,
    resources,
    scheduling_fields,
    secret_env,
    service_account_token_volume,
    short_hash,
    storage_env,
    with_storage_defaults,
)
from .scaling import build_scaling, scaling_problems

TEMPLATE_HASH_ANNOTATION = "kubetune.io/template-hash"
DRAIN_SECONDS = 10  # vLLM's preStop sleep: well below terminationGracePeriodSeconds (60)
# The pod's emptyDir "cache", mounted here in both containers; the sidecar's verified adapters are in
# its adapters/ folder, constants.ADAPTER_CACHE_DIR (vLLM loads them from the same path).
CACHE_DIR = c.ADAPTER_CACHE_DIR.rsplit("/", 1)[0]


@dataclass(frozen=True)
class ServingNames:
    deployment: str
    service: str
    config_map: str
    service_account: str

    @classmethod
    def of(cls, name: str) -> ServingNames:
        serving = child_name(name, "serving")
        return cls(deployment=child_name(name, "vllm"), service=name if len(name) <= 63 else child_name(name, "svc"),
                   config_map=child_name(name, "adapters"), service_account=serving)


def labels(parent: Parent) -> dict[str, str]:
    return {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE, c.LABEL_COMPONENT: c.COMPONENT_SERVING,
            c.LABEL_MODELDEPLOYMENT: label_value(parent.name)}


def selector(parent: Parent) -> dict[str, str]:
    return {c.LABEL_COMPONENT: c.COMPONENT_SERVING, c.LABEL_MODELDEPLOYMENT: label_value(parent.name)}


def selector_string(parent: Parent) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector(parent).items()))


def endpoint(parent: Parent, spec: ModelDeploymentSpec) -> str:
    return f"http://{ServingNames.of(parent.name).service}.{parent.namespace}.svc:{spec.service.port}/v1"


def resolve_spec(spec: ModelDeploymentSpec, settings: OperatorSettings) -> ModelDeploymentSpec:
    """A copy with the platform defaults filled in."""
    data = spec.model_copy(deep=True)
    with_storage_defaults(data.storage, settings.s3_endpoint, settings.s3_region, settings.storage_secret)
    if data.resources.gpu_resource_name is None:
        data.resources.gpu_resource_name = settings.gpu_resource_name
    if data.image is None:
        data.image = settings.serving_image
    if not settings.allow_file_uris:
        problems = local_only_problems({"spec.baseModel.uri": data.base_model.uri,
                                        **{f"spec.adapters[{i}].uri": a.uri for i, a in enumerate(data.adapters)},
                                        **{f"spec.adapters[{i}].versions[{j}].uri": v.uri for i, a in enumerate(data.adapters)
                                           for j, v in enumerate(a.versions or [])}})
        if problems:
            raise SpecError(problems)
    if problems := scaling_problems(data, settings):
        raise SpecError(problems)
    return data


def desired_set(generation: int, adapters: list[DesiredAdapter]) -> DesiredSet:
    """The sidecar's desired set (kubetune.api.sidecar): only adapters that passed resolution and admission."""
    return DesiredSet(generation=generation, adapters=adapters)


def build_config_map(parent: Parent, names: ServingNames, desired: DesiredSet) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": object_meta(parent, names.config_map, labels(parent)),
            "data": {c.DESIRED_ADAPTERS_KEY: json.dumps(desired.wire(), sort_keys=True)}}


def build_service_account(parent: Parent, names: ServingNames) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": object_meta(parent, names.service_account, labels(parent)),
            "automountServiceAccountToken": False}


def build_role(parent: Parent, names: ServingNames) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": object_meta(parent, names.service_account, labels(parent)),
            "rules": [{
                # The sidecar watches the desired adapter set in this one ConfigMap, nothing else.
                "apiGroups": [""], "resources": ["configmaps"], "resourceNames": [names.config_map],
                "verbs": ["list", "watch"]}]}


def build_role_binding(parent: Parent, names: ServingNames) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": object_meta(parent, names.service_account, labels(parent)),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.service_account},
            "subjects": [{"kind": "ServiceAccount", "name": names.service_account, "namespace": parent.namespace}]}


def build_service(parent: Parent, names: ServingNames, spec: ModelDeploymentSpec) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": object_meta(parent, names.service, labels(parent)),
            "spec": {"type": spec.service.type, "selector": selector(parent),
                     "ports": [{"name": "http", "port": spec.service.port, "targetPort": "http", "protocol": "TCP"}]}}


def _api_key_env(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    ref = spec.api_key_secret_ref
    return [secret_env("VLLM_API_KEY", ref.name, ref.key)] if ref else []


def _probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 5}


def build_deployment(parent: Parent, names: ServingNames, spec: ModelDeploymentSpec, settings: OperatorSettings,
                     adapter_uris: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """`adapter_uris`: the resolved adapters' folders (the desired set), for the claims the sidecar mounts. A
    claim no pod mounts yet changes the pod template (pods roll once); adapters on a mounted claim do not."""
    image = spec.image or settings.serving_image
    # pvc:// claims, read-only: the base model in vLLM's container, the adapters in the sidecar's (it copies
    # each verified adapter into the shared cache, which is where vLLM loads it from).
    model_claim = pvc_claim(spec.base_model.uri)
    model_volumes, model_mounts = pvc_volumes({model_claim: True} if model_claim else {})
    adapter_claims = {claim: True for uri in [*(a.uri for a in spec.adapters), *adapter_uris] if (claim := pvc_claim(uri))}
    adapter_volumes, adapter_mounts = pvc_volumes(adapter_claims)
    common_env = [{"name": "HOME", "value": f"{CACHE_DIR}/home"}, {"name": "HF_HOME", "value": f"{CACHE_DIR}/hf"},
                  {"name": "PYTHONUNBUFFERED", "value": "1"}]
    hub = [secret_env(c.ENV_HF_TOKEN, spec.hub_token_secret_ref.name, spec.hub_token_secret_ref.key)] if spec.hub_token_secret_ref else []
    base_model = json.dumps(spec.base_model.to_dict(), sort_keys=True)
    vllm = {
        "name": c.SERVING_VLLM_CONTAINER,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "kubetune_serving.launch"],
        "args": ["--port", str(c.SERVING_VLLM_PORT), "--model-cache", f"{CACHE_DIR}/models"],
        "env": [*common_env,
                {"name": "KUBETUNE_BASE_MODEL", "value": base_model},
                {"name": "KUBETUNE_VLLM_OPTIONS", "value": json.dumps(spec.vllm.to_dict(), sort_keys=True)},
                {"name": "KUBETUNE_SERVED_MODEL_NAME", "value": parent.name},
                {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"},
                *_api_key_env(spec), *hub, *storage_env(spec.storage)],
        "ports": [{"name": "http", "containerPort": c.SERVING_VLLM_PORT}],
        "resources": resources(spec.resources.cpu, spec.resources.memory, spec.resources.gpus,
                               spec.resources.gpu_resource_name or settings.gpu_resource_name),
        "startupProbe": _probe("/health", "http", 10, 180),
        # A deleted pod (a roll, a scale-down) leaves the Service's endpoints while vLLM still serves: requests sent
        # before every proxy saw the change finish, then SIGTERM (docs/scaling.md).
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
        "livenessProbe": _probe("/health", "http", 10, 6),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "cache", "mountPath": CACHE_DIR}, {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "dshm", "mountPath": "/dev/shm"}, *model_mounts],
    }
    sync_args = ["--desired-configmap", f"{parent.namespace}/{names.config_map}", "--desired-key", c.DESIRED_ADAPTERS_KEY,
                 "--vllm-url", f"http://127.0.0.1:{c.SERVING_VLLM_PORT}", "--port", str(c.SERVING_SYNC_PORT),
                 "--cache-dir", c.ADAPTER_CACHE_DIR,
                 "--max-lora-rank", str(spec.vllm.max_lora_rank), "--base-model-uri", spec.base_model.uri]
    if spec.base_model.revision:
        sync_args += ["--base-model-revision", spec.base_model.revision]
    sync = {
        "name": c.SERVING_SYNC_CONTAINER,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "kubetune_serving.sync"],
        "args": sync_args,
        "env": [*common_env, *_api_key_env(spec), *hub, *storage_env(spec.storage),  # hub: hf:// adapters
                # which desired-set trial entries (gates, docs/promotion.md) are this pod's to run
                {"name": c.ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": "sync", "containerPort": c.SERVING_SYNC_PORT}],
        # Not Ready until vLLM is up and every desired adapter is restored: a new or restarted pod
        # receives no traffic before it serves the whole set.
        "readinessProbe": _probe(c.SYNC_READYZ_PATH, "sync", 2, 1),
        "livenessProbe": _probe(c.SYNC_HEALTHZ_PATH, "sync", 10, 6),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "cache", "mountPath": CACHE_DIR}, {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True},
                         *adapter_mounts],
    }
    template_hash = short_hash({"image": image, "baseModel": spec.base_model.to_dict(), "vllm": spec.vllm.to_dict(),
                                "resources": spec.resources.to_dict(), "scheduling": spec.scheduling.to_dict(),
                                "apiKey": spec.api_key_secret_ref.to_dict() if spec.api_key_secret_ref else None,
                                "storage": spec.storage.to_dict(), "hub": spec.hub_token_secret_ref.to_dict() if spec.hub_token_secret_ref else None,
                                **({"pvcClaims": sorted({*adapter_claims, *([model_claim] if model_claim else [])})}
                                   if adapter_claims or model_claim else {})}, 16)
    pod_labels = labels(parent)
    if spec.scheduling.queue_name:
        # Kueue's deployment integration (https://kueue.sigs.k8s.io/docs/tasks/run/deployment/): the label on the
        # Deployment selects the LocalQueue; on the pod template, each pod is queued as its own Workload.
        pod_labels[c.LABEL_KUEUE_QUEUE] = spec.scheduling.queue_name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(parent, names.deployment, pod_labels),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(parent)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {TEMPLATE_HASH_ANNOTATION: template_hash}},
                "spec": {
                    "serviceAccountName": names.service_account,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    "terminationGracePeriodSeconds": 60,
                    "containers": [vllm, sync],
                    "volumes": [{"name": "cache", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
                                {"name": "dshm", "emptyDir": {"medium": "Memory"}}, service_account_token_volume(),
                                *model_volumes, *(v for v in adapter_volumes if v["name"] not in {m["name"] for m in model_volumes})],
                    **scheduling_fields(spec.scheduling),
                },
            },
        },
    }


def build_children(body: dict[str, Any], spec: ModelDeploymentSpec, settings: OperatorSettings,
                   desired: dict[str, Any]) -> list[dict[str, Any]]:
    """Every child in creation order; the workload (Deployment or LeaderWorkerSet, builders/scaling.py) after what
    it mounts and runs as, and after its autoscaler."""
    parent = Parent.of(body)
    names = ServingNames.of(parent.name)
    return [build_config_map(parent, names, desired), build_service_account(parent, names), build_role(parent, names),
            build_role_binding(parent, names), build_service(parent, names, spec),
            *build_scaling(parent, spec, settings, build_deployment(parent, names, spec, settings, [a.uri for a in desired.adapters]))]


def desired_children(body: dict[str, Any], spec: ModelDeploymentSpec, settings: OperatorSettings,
                     desired: DesiredSet) -> list[Child]:
    """The children one reconcile applies, in order: all of them by server-side apply (every field here is
    mutable; a changed pod template rolls the pods)."""
    return [Child(child) for child in build_children(body, spec, settings, desired)]
