"""Multi-node ModelDeployment end to end: `kubetune operator` as a subprocess (the platform setting leader_worker_set is
read when the handlers are imported, so it needs its own process), as the chart's ServiceAccount with the chart's RBAC
rendered with platform.scaling.leaderWorkerSet=true, against the emulator with LWS's CRD installed
(tests/fixtures/thirdparty_crds.py). The test plays the LeaderWorkerSet controller and kubelet: it writes the
LeaderWorkerSet's status and creates its leader pod, whose adapter-sync sidecar is the fake of test_modeldeployment."""

from __future__ import annotations

import json

from tests.fixtures.thirdparty_crds import leaderworkerset_crd

from .harness import Cluster, OperatorProcess, wait_for
from .rbac import CHART_VALUES, install_operator_rbac
from .test_modeldeployment import BASE, FakeSidecar, get_md, md, sidecar  # noqa: F401  (sidecar is a fixture)

LWS = "/apis/leaderworkerset.x-k8s.io/v1/namespaces/default/leaderworkersets/big-vllm"
DEPLOYMENT = "/apis/apps/v1/namespaces/default/deployments/big-vllm"


def _get(emulator, path: str) -> dict | None:
    code, body = emulator.http("GET", path)
    return body if code == 200 else None


def _play_leader(emulator, lws: dict, sidecar: FakeSidecar) -> None:
    """Plays the LWS controller and kubelet: group 0's leader pod, Ready, and the LeaderWorkerSet's status."""
    template = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    spec = json.loads(json.dumps(template["spec"]))
    for ctr in spec["containers"]:
        if ctr["name"] == "adapter-sync":
            ctr["ports"] = [{"name": "sync", "containerPort": sidecar.port}]
    labels = {**template["metadata"]["labels"], "leaderworkerset.sigs.k8s.io/name": "big-vllm",
              "leaderworkerset.sigs.k8s.io/worker-index": "0"}
    assert emulator.http("POST", "/api/v1/namespaces/default/pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "big-vllm-0", "namespace": "default", "labels": labels}, "spec": spec})[0] == 201
    emulator.http("PATCH", "/api/v1/namespaces/default/pods/big-vllm-0/status", {"status": {
        "phase": "Running", "podIP": sidecar.host, "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-23T08:00:00Z"}]}}, "application/merge-patch+json")
    emulator.http("PATCH", f"{LWS}/status", {"status": {
        "observedGeneration": lws["metadata"]["generation"], "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
        "hpaPodSelector": "leaderworkerset.sigs.k8s.io/name=big-vllm,leaderworkerset.sigs.k8s.io/worker-index=0",
        "conditions": [{"type": "Available", "status": "True", "reason": "AllGroupsReady", "message": "",
                        "lastTransitionTime": "2026-11-23T08:00:00Z"}]}}, "application/merge-patch+json")


def test_two_nodes_per_replica_run_on_a_leader_worker_set_and_one_node_on_a_deployment_again(
        cluster: Cluster, emulator, tmp_path, sidecar):  # noqa: F811
    assert emulator.http("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", leaderworkerset_crd())[0] == 201
    values = {**CHART_VALUES, "platform": {"scaling": {"leaderWorkerSet": True}}}
    kubeconfig = install_operator_rbac(emulator, tmp_path / "lws-operator.kubeconfig", values)
    operator = OperatorProcess(kubeconfig, tmp_path / "operator.log", {"KUBETUNE_LEADER_WORKER_SET": "true"}).start()
    try:
        md(cluster, "big", {"baseModel": BASE, "replicas": 1, "resources": {"gpus": 8, "nodes": 2}})
        lws = wait_for(lambda: _get(emulator, LWS), timeout=30, what="LeaderWorkerSet")
        assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2 and _get(emulator, DEPLOYMENT) is None
        assert [c["name"] for c in lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"]] == ["ray-worker"]

        sidecar.ready(1)
        _play_leader(emulator, lws, sidecar)
        ready = wait_for(lambda: next((c for c in (get_md(cluster, "big").get("status") or {}).get("conditions") or []
                                       if c["type"] == "Ready" and c["status"] == "True"), None), timeout=20, what="Ready")
        assert "1/1 replicas" in next(c for c in get_md(cluster, "big")["status"]["conditions"] if c["type"] == "Available")["message"]
        assert ready["reason"] == "Ready" and get_md(cluster, "big")["status"]["readyReplicas"] == 1

        # Back to one node per replica: the Deployment replaces the LeaderWorkerSet.
        cluster.raw("PATCH", "/apis/kubetune.io/v1alpha1/namespaces/default/modeldeployments/big",
                    {"spec": {"resources": {"gpus": 8, "nodes": 1}}}, "application/merge-patch+json")
        wait_for(lambda: _get(emulator, DEPLOYMENT), timeout=20, what="Deployment")
        wait_for(lambda: _get(emulator, LWS) is None, timeout=20, what="LeaderWorkerSet deleted")
    finally:
        operator.kill()
    assert "Traceback" not in operator.log(), operator.log()[-3000:]
