"""ModelDeployment builders (whole objects), adapter resolution and status derivation (pure)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.sidecar import AdapterReport, DesiredAdapter, SidecarStatus
from kubetune.api.validation import parse
from kubetune.builders.modeldeployment import build_children, desired_set, resolve_spec
from kubetune.config import OperatorSettings
from kubetune.plan.modeldeployment import Resolved, resolve_adapters
from kubetune.status.modeldeployment import ServingObserved, derive_status

SETTINGS = OperatorSettings(serving_image="registry.example/kubetune/serving:1.0", storage_secret="platform-s3",
                            s3_endpoint="http://minio:9000")
BODY = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "ml", "uid": "u-9", "generation": 3}}
SPEC = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct", "revision": "main"},
        "adapters": [{"name": "support", "fineTuneJobRef": {"name": "support-bot"}}, {"name": "legal", "uri": "s3://adapters/legal"}],
        "apiKeySecretRef": {"name": "chat-key", "key": "token"}, "resources": {"gpus": 1, "memory": "24Gi"},
        "vllm": {"maxLoraRank": 32, "maxModelLen": 4096}}
OWNER = [{"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "name": "chat", "uid": "u-9",
          "controller": True, "blockOwnerDeletion": True}]
LABELS = {"app.kubernetes.io/managed-by": "kubetune", "app.kubernetes.io/component": "serving", "kubetune.io/modeldeployment": "chat"}
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)


def _children(desired=None):
    spec = resolve_spec(parse(ModelDeploymentSpec, SPEC), SETTINGS)
    return spec, build_children(BODY, spec, SETTINGS, desired or desired_set(1, []))


def test_children_and_least_privilege_role():
    _, children = _children()
    assert [(o["kind"], o["metadata"]["name"]) for o in children] == [
        ("ConfigMap", "chat-adapters"), ("ServiceAccount", "chat-serving"), ("Role", "chat-serving"),
        ("RoleBinding", "chat-serving"), ("Service", "chat"), ("Deployment", "chat-vllm")]
    assert all(o["metadata"]["ownerReferences"] == OWNER and o["metadata"]["labels"] == LABELS for o in children)
    assert children[2]["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["chat-adapters"],
                                     "verbs": ["list", "watch"]}]
    assert children[4]["spec"] == {"type": "ClusterIP", "selector": {"app.kubernetes.io/component": "serving",
                                                                     "kubetune.io/modeldeployment": "chat"},
                                   "ports": [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]}


def test_deployment_containers_whole():
    _, children = _children()
    pod = children[-1]["spec"]["template"]["spec"]
    vllm, sync = pod["containers"]
    secure = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
              "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    storage_env = [{"name": "KUBETUNE_S3_ENDPOINT", "value": "http://minio:9000"},
                   {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "platform-s3", "key": "AWS_ACCESS_KEY_ID"}}},
                   {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "platform-s3", "key": "AWS_SECRET_ACCESS_KEY"}}}]
    common = [{"name": "HOME", "value": "/var/cache/kubetune/home"}, {"name": "HF_HOME", "value": "/var/cache/kubetune/hf"},
              {"name": "PYTHONUNBUFFERED", "value": "1"}]
    api_key = {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "chat-key", "key": "token"}}}
    assert vllm == {
        "name": "vllm", "image": "registry.example/kubetune/serving:1.0", "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "kubetune_serving.launch"], "args": ["--port", "8000", "--model-cache", "/var/cache/kubetune/models"],
        "env": [*common,
                {"name": "KUBETUNE_BASE_MODEL", "value": json.dumps({"revision": "main", "trustRemoteCode": False,
                                                                     "uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"})},
                {"name": "KUBETUNE_VLLM_OPTIONS", "value": json.dumps({"dtype": "auto", "gpuMemoryUtilization": "0.9", "maxLoraRank": 32,
                                                                       "maxLoras": 4, "maxModelLen": 4096, "tensorParallelSize": 1})},
                {"name": "KUBETUNE_SERVED_MODEL_NAME", "value": "chat"},
                {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}, api_key, *storage_env],
        "ports": [{"name": "http", "containerPort": 8000}],
        "resources": {"requests": {"memory": "24Gi"}, "limits": {"memory": "24Gi", "nvidia.com/gpu": "1"}},
        "startupProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 180, "timeoutSeconds": 5},
        "lifecycle": {"preStop": {"sleep": {"seconds": 10}}},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 6, "timeoutSeconds": 5},
        "securityContext": secure,
        "volumeMounts": [{"name": "cache", "mountPath": "/var/cache/kubetune"}, {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    assert sync["command"] == ["python", "-m", "kubetune_serving.sync"]
    assert sync["args"] == ["--desired-configmap", "ml/chat-adapters", "--desired-key", "adapters.json", "--vllm-url", "http://127.0.0.1:8000",
                            "--port", "8081", "--cache-dir", "/var/cache/kubetune/adapters", "--max-lora-rank", "32",
                            "--base-model-uri", "hf://Qwen/Qwen2.5-0.5B-Instruct", "--base-model-revision", "main"]
    assert sync["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "sync"}
    assert sync["env"] == [*common, api_key, *storage_env,
                           {"name": "KUBETUNE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "chat-serving"
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_adapter_changes_do_not_change_the_pod_template_but_base_model_does():
    _, first = _children(desired_set(1, []))
    _, second = _children(desired_set(2, [DesiredAdapter(name="a", uri="s3://x/a", manifest_sha256="f" * 64)]))
    assert first[-1] == second[-1]
    assert first[0] != second[0]
    other = parse(ModelDeploymentSpec, {**SPEC, "baseModel": {"uri": "hf://Qwen/Qwen2.5-1.5B-Instruct"}})
    third = build_children(BODY, resolve_spec(other, SETTINGS), SETTINGS, desired_set(1, []))
    hash_of = lambda c: c[-1]["spec"]["template"]["metadata"]["annotations"]["kubetune.io/template-hash"]  # noqa: E731
    assert hash_of(third) != hash_of(first)


def ftj(name, conditions, adapter=None, spec=None, percent=None):
    status = {"conditions": [{"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions]}
    if adapter:
        status["adapter"] = adapter
    if percent is not None:
        status["progress"] = {"percent": percent}
    return {"metadata": {"name": name}, "spec": spec or {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}}, "status": status}


def test_resolution_states():
    spec = parse(ModelDeploymentSpec, SPEC)
    assert resolve_adapters(spec, "ml", {}) == [
        Resolved("support", "fineTuneJob/support-bot", "WaitingForFineTuneJob", message="FineTuneJob support-bot does not exist in "
                 "namespace ml (only FineTuneJobs in the same namespace can be referenced); waiting for it."),
        Resolved("legal", "s3://adapters/legal", "Loading", uri="s3://adapters/legal")]
    training = resolve_adapters(spec, "ml", {"support-bot": ftj("support-bot", [("Succeeded", "Unknown", "Training", "")], percent=40)})
    assert training[0].message == "FineTuneJob support-bot is training (40% done); the adapter is added automatically when it succeeds."
    done = resolve_adapters(spec, "ml", {"support-bot": ftj("support-bot", [("Succeeded", "True", "Completed", "")],
                                                               {"uri": "s3://out/ml/support-bot", "manifestSha256": "e" * 64})})
    assert done[0] == Resolved("support", "fineTuneJob/support-bot", "Loading", "s3://out/ml/support-bot", "e" * 64)
    failed = resolve_adapters(spec, "ml", {"support-bot": ftj("support-bot", [("Failed", "True", "OOMKilled", "Pod p was OOMKilled.")])})
    assert (failed[0].state, failed[0].message) == ("Failed", "FineTuneJob support-bot failed (OOMKilled): Pod p was OOMKilled.")


def test_status_ready_only_when_every_replica_has_the_adapter_and_names_the_pod_that_lags():
    spec = parse(ModelDeploymentSpec, {**SPEC, "replicas": 2, "adapters": [{"name": "legal", "uri": "s3://adapters/legal"}]})
    resolved = [Resolved("legal", "s3://adapters/legal", "Loading", uri="s3://adapters/legal")]
    dep = {"metadata": {"generation": 1}, "spec": {}, "status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 1, "observedGeneration": 1}}
    ready = {"type": "Ready", "status": "True"}
    pods = [{"metadata": {"name": p}, "status": {"conditions": [ready]}} for p in ("p1", "p2")]
    report = lambda state, message=None, **more: SidecarStatus(generation=4, vllm_ready=True, adapters=[  # noqa: E731
        AdapterReport(name="legal", uri="s3://adapters/legal", manifest_sha256="1" * 64, state=state, message=message)]
    ).model_copy(update=more)
    obs = ServingObserved(3, 4, dep, pods, {"p1": report("Ready"), "p2": report("Loading", "fetching")}, "http://chat.ml.svc:8000/v1", "sel")
    status = derive_status(obs, spec, resolved, None, T0).to_dict()
    assert status["adapters"] == [{"name": "legal", "source": "s3://adapters/legal", "state": "Loading", "replicasLoaded": "1/2",
                                   "uri": "s3://adapters/legal", "pods": {"p1": "Ready", "p2": "Loading"},
                                   "message": "loaded on 1/2 replicas; waiting for pod p2 Loading (fetching)"}]
    conds = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conds == {"Ready": ("False", "AdaptersLoading"), "Available": ("True", "ReplicasReady"),
                     "AdaptersReady": ("False", "AdaptersLoading"), "Progressing": ("True", "RollingOut")}
    obs.reports = {"p1": report("Ready"), "p2": report("Ready")}
    dep["status"]["updatedReplicas"] = 2
    status = derive_status(obs, spec, resolved, status, T0).to_dict()
    conds = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conds["Ready"] == ("True", "Ready") and conds["Progressing"] == ("False", "RolloutComplete")
    assert status["adaptersReady"] == "1/1"
    assert status["adapters"][0] == {"name": "legal", "source": "s3://adapters/legal", "state": "Ready", "replicasLoaded": "2/2",
                                          "uri": "s3://adapters/legal", "pods": {"p1": "Ready", "p2": "Ready"}}
    # A pod still on an older desired set does not count for an unpinned adapter.
    obs.reports = {"p1": report("Ready"), "p2": report("Ready", generation=3)}
    lagging = derive_status(obs, spec, resolved, status, T0).to_dict()["adapters"][0]
    assert (lagging["state"], lagging["replicasLoaded"], lagging["pods"]) == ("Loading", "1/2", {"p1": "Ready", "p2": "Loading"})
    assert lagging["message"] == "loaded on 1/2 replicas; waiting for pod p2 Loading (has not picked up this version yet)"
    # A replica that is not Ready (its vLLM restarting) still counts: the adapter is not on every replica.
    pods[1]["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    obs.reports = {"p1": report("Ready"), "p2": report("Loading", "vLLM is not ready", vllm_ready=False)}
    restarting = derive_status(obs, spec, resolved, status, T0).to_dict()["adapters"][0]
    assert (restarting["state"], restarting["replicasLoaded"]) == ("Loading", "1/2")
    # A sidecar that does not answer: Unknown there, named.
    obs.reports = {"p1": report("Ready"), "p2": None}
    unknown = derive_status(obs, spec, resolved, status, T0).to_dict()["adapters"][0]
    assert unknown["pods"] == {"p1": "Ready", "p2": "Unknown"} and "pod p2 Unknown (its adapter-sync sidecar does not answer)" in unknown["message"]
    # Fewer pods than spec.replicas (one not created yet, one terminating): the missing replica has nothing.
    pods[1]["metadata"]["deletionTimestamp"] = "2026-11-23T08:00:00Z"
    obs.reports = {"p1": report("Ready"), "p2": report("Ready")}
    missing = derive_status(obs, spec, resolved, status, T0).to_dict()["adapters"][0]
    assert (missing["state"], missing["replicasLoaded"], missing["pods"]) == ("Loading", "1/2", {"p1": "Ready"})
    assert missing["message"] == "loaded on 1/2 replicas; waiting for 1 replica(s) not created yet"
    # One pod rejects it: Rejected, with that pod's reason.
    del pods[1]["metadata"]["deletionTimestamp"]
    obs.reports = {"p1": report("Ready"), "p2": report("Rejected", "manifest sha256 mismatch")}
    rejected = derive_status(obs, spec, resolved, status, T0).to_dict()["adapters"][0]
    assert (rejected["state"], rejected["message"]) == ("Rejected", "pod p2 Rejected (manifest sha256 mismatch)")
