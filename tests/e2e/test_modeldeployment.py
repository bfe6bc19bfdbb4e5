"""ModelDeployment end to end: the real operator over HTTP against the emulator.

Nothing runs pods here. Tests play the Deployment controller and kubelet (Deployment/Pod status) and
stand in for each pod's adapter-sync sidecar with a small HTTP server on a 127.0.0.x address that
serves the sidecar's `/status` protocol (the real sidecar with real vLLM is tested in tests/serving).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .harness import Cluster, job_condition, running, terminated, wait_for

MD_PLURAL = "modeldeployments"
BASE = {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}
SHA_A = "a" * 64


class FakeSidecar:
    """Serves GET /status like kubetune_serving's sidecar; the test sets what it reports."""

    def __init__(self, host: str):
        self.report = {"generation": 0, "vllmReady": True, "adapters": []}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = json.dumps(outer.report).encode()
                self.send_response(200 if self.path == "/status" else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.host, self.port = host, self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ready(self, generation: int, *adapters: tuple[str, str | None]):
        self.report = {"generation": generation, "vllmReady": True, "adapters": [
            {"name": name, "uri": "x", "manifestSha256": sha or "0" * 64, "state": "Ready"} for name, sha in adapters]}

    def close(self):
        self.server.shutdown()


@pytest.fixture
def sidecar():
    fake = FakeSidecar("127.0.0.2")
    yield fake
    fake.close()


def md(cluster: Cluster, name: str, spec: dict) -> dict:
    body = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}
    return cluster.custom.create_namespaced_custom_object("kubetune.io", "v1alpha1", cluster.ns, MD_PLURAL, body)


def get_md(cluster: Cluster, name: str) -> dict:
    return cluster.custom.get_namespaced_custom_object("kubetune.io", "v1alpha1", cluster.ns, MD_PLURAL, name)


def md_condition(cluster: Cluster, name: str, type_: str) -> dict | None:
    return next((c for c in (get_md(cluster, name).get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def adapter_status(cluster: Cluster, name: str, adapter: str) -> dict | None:
    return next((a for a in (get_md(cluster, name).get("status") or {}).get("adapters") or [] if a["name"] == adapter), None)


def desired(cluster: Cluster, name: str) -> dict:
    cm = cluster.raw("GET", f"/api/v1/namespaces/default/configmaps/{name}-adapters")
    return json.loads(cm["data"]["adapters.json"])


def play_ready_pod(cluster: Cluster, name: str, pod: str, sidecar: FakeSidecar) -> None:
    """Plays the Deployment controller and kubelet: one Ready pod whose sidecar is the fake."""
    dep = wait_for(lambda: cluster.raw("GET", f"/apis/apps/v1/namespaces/default/deployments/{name}-vllm"), what="Deployment")
    template = dep["spec"]["template"]
    spec = json.loads(json.dumps(template["spec"]))
    for ctr in spec["containers"]:
        if ctr["name"] == "adapter-sync":
            ctr["ports"] = [{"name": "sync", "containerPort": sidecar.port}]
    cluster.raw("POST", "/api/v1/namespaces/default/pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": pod, "namespace": "default", "labels": template["metadata"]["labels"]}, "spec": spec})
    cluster.play_pod_status(pod, {"phase": "Running", "podIP": sidecar.host, "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-23T08:00:00Z"}]})
    cluster.raw("PATCH", f"/apis/apps/v1/namespaces/default/deployments/{name}-vllm/status", {"status": {
        "observedGeneration": dep["metadata"]["generation"], "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
        "availableReplicas": 1, "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]}},
        "application/merge-patch+json")


def finish_finetunejob(cluster: Cluster, name: str, sha: str) -> None:
    """Plays the Job controller and kubelet: the FineTuneJob's trainer pod exits 0 with its report."""
    wait_for(lambda: cluster.job(f"{name}-train"), what="training Job")
    cluster.play_pod(f"{name}-train", f"{name}-p", running())
    kind = (cluster.ftj(name)["spec"].get("adapter") or {}).get("type", "lora")
    report = {"adapter": {"uri": f"s3://adapters/test/default/{name}", "manifestSha256": sha, "type": kind}}
    cluster.play_pod_status(f"{name}-p", terminated(0, json.dumps(report)))
    cluster.play_job_status(f"{name}-train", {"succeeded": 1, "conditions": [job_condition("Complete")]})
    cluster.wait_condition(name, "Succeeded", "True")


FTJ_SPEC = {"baseModel": BASE, "dataset": {"train": "s3://data/chat.jsonl"}}


def test_adapters_by_uri_and_by_finetunejob_become_ready_without_restart(cluster, operator, sidecar):
    cluster.create_ftj("tuned", FTJ_SPEC)
    md(cluster, "chat", {"baseModel": BASE, "adapters": [{"name": "by-uri", "uri": "s3://adapters/shared/legal"},
                                                         {"name": "by-job", "fineTuneJobRef": {"name": "tuned"}}]})
    waiting = wait_for(lambda: (a := adapter_status(cluster, "chat", "by-job")) and a["state"] == "WaitingForFineTuneJob" and a)
    assert "FineTuneJob tuned is" in waiting["message"] and "added automatically" in waiting["message"]
    first = desired(cluster, "chat")
    assert [a["name"] for a in first["adapters"]] == ["by-uri"]
    dep = cluster.raw("GET", "/apis/apps/v1/namespaces/default/deployments/chat-vllm")
    template_hash = dep["spec"]["template"]["metadata"]["annotations"]["kubetune.io/template-hash"]
    service = cluster.raw("GET", "/api/v1/namespaces/default/services/chat")
    assert service["spec"]["ports"][0]["port"] == 8000

    play_ready_pod(cluster, "chat", "chat-vllm-1", sidecar)
    sidecar.ready(first["generation"], ("by-uri", None))
    wait_for(lambda: adapter_status(cluster, "chat", "by-uri")["state"] == "Ready", timeout=15, what="by-uri Ready")
    assert md_condition(cluster, "chat", "Ready")["status"] == "False"
    assert md_condition(cluster, "chat", "AdaptersReady")["reason"] == "WaitingForFineTuneJob"

    finish_finetunejob(cluster, "tuned", SHA_A)
    second = wait_for(lambda: (d := desired(cluster, "chat")) and len(d["adapters"]) == 2 and d, what="desired set updated")
    assert second["generation"] == first["generation"] + 1
    assert {"name": "by-job", "uri": "s3://adapters/test/default/tuned", "manifestSha256": SHA_A} in second["adapters"]
    sidecar.ready(second["generation"], ("by-uri", None), ("by-job", SHA_A))
    ready = wait_for(lambda: (c := md_condition(cluster, "chat", "Ready")) and c["status"] == "True" and c, timeout=15, what="Ready")
    assert "http://chat.default.svc:8000/v1" in ready["message"]
    status = get_md(cluster, "chat")["status"]
    assert status["adaptersReady"] == "2/2" and status["readyReplicas"] == 1 and status["endpoint"] == "http://chat.default.svc:8000/v1"
    assert adapter_status(cluster, "chat", "by-job") == {"name": "by-job", "source": "fineTuneJob/tuned", "state": "Ready",
                                                         "replicasLoaded": "1/1", "uri": "s3://adapters/test/default/tuned", "sha256": SHA_A,
                                                         "pods": {"chat-vllm-1": "Ready"}}
    # Adding an adapter never touched the pod template: no restart.
    dep = cluster.raw("GET", "/apis/apps/v1/namespaces/default/deployments/chat-vllm")
    assert dep["spec"]["template"]["metadata"]["annotations"]["kubetune.io/template-hash"] == template_hash


def test_adapter_is_not_ready_until_every_replica_has_it(cluster, operator, sidecar):
    md(cluster, "chat", {"baseModel": BASE, "adapters": [{"name": "a", "uri": "s3://adapters/x/a"}]})
    play_ready_pod(cluster, "chat", "chat-vllm-1", sidecar)
    sidecar.report = {"generation": 1, "vllmReady": True, "adapters": [
        {"name": "a", "uri": "s3://adapters/x/a", "manifestSha256": "0" * 64, "state": "Loading"}]}
    loading = wait_for(lambda: (a := adapter_status(cluster, "chat", "a")) and a.get("message") == "loaded on 0/1 replicas; waiting for pod chat-vllm-1 Loading" and a,
                       timeout=15)
    assert loading["state"] == "Loading"
    sidecar.report = {"generation": 1, "vllmReady": True, "adapters": [
        {"name": "a", "uri": "s3://adapters/x/a", "manifestSha256": "0" * 64, "state": "Rejected",
         "message": "manifest sha256 mismatch for adapter/adapter_model.safetensors"}]}
    rejected = wait_for(lambda: (a := adapter_status(cluster, "chat", "a")) and a["state"] == "Rejected" and a, timeout=15)
    assert "sha256 mismatch" in rejected["message"]
    assert md_condition(cluster, "chat", "AdaptersReady")["reason"] == "AdapterRejected"


@pytest.mark.parametrize(("ftj_spec", "md_patch", "text"), [
    ({**FTJ_SPEC, "adapter": {"rank": 64}}, {}, "LoRA rank 64 exceeds spec.vllm.maxLoraRank 16"),
    ({**FTJ_SPEC, "baseModel": {"uri": "hf://meta-llama/Llama-3.2-1B"}}, {},
     "adapter was trained on hf://meta-llama/Llama-3.2-1B, but this deployment serves hf://Qwen/Qwen2.5-0.5B-Instruct"),
    ({**FTJ_SPEC, "adapter": {"type": "full"}}, {}, "but vLLM serves only LoRA adapters (lora, qlora): serve it as spec.baseModel of its own ModelDeployment"),
])
def test_admission_checks_reject_before_any_pod_sees_the_adapter(cluster, operator, ftj_spec, md_patch, text):
    cluster.create_ftj("tuned", ftj_spec)
    finish_finetunejob(cluster, "tuned", SHA_A)
    md(cluster, "chat", {"baseModel": BASE, "adapters": [{"name": "x", "fineTuneJobRef": {"name": "tuned"}}], **md_patch})
    rejected = wait_for(lambda: (a := adapter_status(cluster, "chat", "x")) and a["state"] == "Rejected" and a)
    assert text in rejected["message"]
    assert desired(cluster, "chat")["adapters"] == []


def test_failed_finetunejob_fails_its_adapter_with_the_jobs_reason(cluster, operator):
    cluster.create_ftj("tuned", FTJ_SPEC)
    wait_for(lambda: cluster.job("tuned-train"))
    cluster.play_pod("tuned-train", "tuned-p", terminated(1, "train.jsonl:3: messages must be a list"))
    cluster.play_job_status("tuned-train", {"failed": 1, "conditions": [job_condition("Failed", "PodFailurePolicy")]})
    md(cluster, "chat", {"baseModel": BASE, "adapters": [{"name": "x", "fineTuneJobRef": {"name": "tuned"}}]})
    expected = "FineTuneJob tuned failed (UserError): train.jsonl:3: messages must be a list"
    failed = wait_for(lambda: (a := adapter_status(cluster, "chat", "x")) and a.get("message") == expected and a, timeout=15)
    assert failed["state"] == "Failed"


def test_base_model_change_rolls_pods_and_api_key_comes_from_a_secret(cluster, operator):
    md(cluster, "chat", {"baseModel": BASE, "apiKeySecretRef": {"name": "chat-key", "key": "token"}, "replicas": 2})
    dep = wait_for(lambda: cluster.raw("GET", "/apis/apps/v1/namespaces/default/deployments/chat-vllm"))
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    for ctr in dep["spec"]["template"]["spec"]["containers"]:
        env = {e["name"]: e for e in ctr["env"]}
        assert env["VLLM_API_KEY"] == {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "chat-key", "key": "token"}}}
    before = dep["spec"]["template"]["metadata"]["annotations"]["kubetune.io/template-hash"]
    cluster.custom.patch_namespaced_custom_object("kubetune.io", "v1alpha1", "default", MD_PLURAL, "chat",
                                                  {"spec": {"baseModel": {"uri": "hf://Qwen/Qwen2.5-1.5B-Instruct"}}})
    after = wait_for(lambda: (h := cluster.raw("GET", "/apis/apps/v1/namespaces/default/deployments/chat-vllm")["spec"]["template"]
                              ["metadata"]["annotations"]["kubetune.io/template-hash"]) != before and h, what="rolled template")
    assert after != before
    # Adapter changes touch only the ConfigMap.
    cluster.custom.patch_namespaced_custom_object("kubetune.io", "v1alpha1", "default", MD_PLURAL, "chat",
                                                  {"spec": {"adapters": [{"name": "n", "uri": "s3://adapters/x/n"}]}})
    wait_for(lambda: [a["name"] for a in desired(cluster, "chat")["adapters"]] == ["n"], what="adapter in desired set")
    dep = cluster.raw("GET", "/apis/apps/v1/namespaces/default/deployments/chat-vllm")
    assert dep["spec"]["template"]["metadata"]["annotations"]["kubetune.io/template-hash"] == after


def test_delete_cleans_up_serving_children(cluster, operator):
    md(cluster, "chat", {"baseModel": BASE})
    wait_for(lambda: cluster.raw("GET", "/apis/apps/v1/namespaces/default/deployments/chat-vllm"))
    cluster.custom.delete_namespaced_custom_object("kubetune.io", "v1alpha1", "default", MD_PLURAL, "chat")
    wait_for(lambda: cluster.list("/apis/apps/v1/namespaces/default/deployments") == [], what="Deployment collected")
    wait_for(lambda: all(s["metadata"]["name"] != "chat" for s in cluster.list("/api/v1/namespaces/default/services")))


def test_service_type_and_port_changes_reach_the_service_without_touching_the_pods(cluster, operator):
    md(cluster, "chat", {"baseModel": BASE})
    wait_for(lambda: cluster.raw("GET", "/apis/apps/v1/namespaces/default/deployments/chat-vllm"))
    service = cluster.raw("GET", "/api/v1/namespaces/default/services/chat")
    assert (service["spec"]["type"], service["spec"]["ports"][0]["port"]) == ("ClusterIP", 8000)
    template_hash = cluster.raw("GET", "/apis/apps/v1/namespaces/default/deployments/chat-vllm")["spec"]["template"][
        "metadata"]["annotations"]["kubetune.io/template-hash"]
    cluster.custom.patch_namespaced_custom_object("kubetune.io", "v1alpha1", "default", MD_PLURAL, "chat",
                                                  {"spec": {"service": {"type": "LoadBalancer", "port": 443}}})
    service = wait_for(lambda: (s := cluster.raw("GET", "/api/v1/namespaces/default/services/chat"))["spec"]["type"]
                       == "LoadBalancer" and s, what="Service follows spec.service")
    assert service["spec"]["ports"] == [{"name": "http", "port": 443, "targetPort": "http", "protocol": "TCP"}]
    wait_for(lambda: (get_md(cluster, "chat").get("status") or {}).get("endpoint") == "http://chat.default.svc:443/v1",
             what="endpoint in status")
    dep = cluster.raw("GET", "/apis/apps/v1/namespaces/default/deployments/chat-vllm")
    assert dep["spec"]["template"]["metadata"]["annotations"]["kubetune.io/template-hash"] == template_hash
