"""ModelDeployment autoscaling end to end: the real operator over HTTP against the emulator, as the chart's
ServiceAccount (the HPA rules of the chart are exercised here). The test plays the HorizontalPodAutoscaler
controller where it says so: it scales the Deployment through its scale subresource, as the HPA does."""

from __future__ import annotations

from .harness import Cluster, wait_for
from .test_modeldeployment import BASE, get_md, md

DEPLOYMENT = "/apis/apps/v1/namespaces/default/deployments/chat-vllm"
HPA = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/chat-vllm"


def _get(cluster: Cluster, path: str) -> dict | None:
    try:
        return cluster.raw("GET", path)
    except Exception as exc:  # the kubernetes client's ApiException: 404 = absent
        if getattr(exc, "status", None) == 404:
            return None
        raise


def test_autoscaling_on_builds_an_hpa_that_owns_replicas_and_off_deletes_it(cluster, operator):
    md(cluster, "chat", {"baseModel": BASE, "replicas": 2, "autoscaling": {"minReplicas": 1, "maxReplicas": 4}})
    hpa = wait_for(lambda: _get(cluster, HPA), what="HPA")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-vllm"}
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    dep = wait_for(lambda: _get(cluster, DEPLOYMENT), what="Deployment")
    assert dep["spec"]["replicas"] == 1  # not applied: the API server's default until the HPA scales it

    # Plays the HPA controller: it scales the Deployment through the scale subresource.
    cluster.raw("PATCH", f"{DEPLOYMENT}/scale?fieldManager=kube-controller-manager", {"spec": {"replicas": 3}},
                "application/merge-patch+json")
    md_path = "/apis/kubetune.io/v1alpha1/namespaces/default/modeldeployments/chat"
    cluster.raw("PATCH", md_path, {"spec": {"service": {"port": 8080}}}, "application/merge-patch+json")  # a re-apply
    wait_for(lambda: cluster.raw("GET", "/api/v1/namespaces/default/services/chat")["spec"]["ports"][0]["port"] == 8080,
             what="the re-apply")
    assert cluster.raw("GET", DEPLOYMENT)["spec"]["replicas"] == 3  # the operator's apply left them to the HPA
    status = wait_for(lambda: (s := get_md(cluster, "chat").get("status")) and s.get("replicas") is not None and s)
    assert status["selector"] == "app.kubernetes.io/component=serving,kubetune.io/modeldeployment=chat"

    # The HPA deleted by hand comes back (its event re-applies); autoscaling off deletes it and applies replicas again.
    cluster.raw("DELETE", HPA)
    wait_for(lambda: _get(cluster, HPA), what="HPA re-applied")
    cluster.raw("PATCH", md_path, {"spec": {"autoscaling": None}}, "application/merge-patch+json")
    wait_for(lambda: _get(cluster, HPA) is None, what="HPA deleted")
    wait_for(lambda: cluster.raw("GET", DEPLOYMENT)["spec"]["replicas"] == 2, what="spec.replicas applied again")


def test_scale_to_zero_without_keda_is_refused_naming_the_field(cluster, operator):
    md(cluster, "zero", {"baseModel": BASE, "autoscaling": {"minReplicas": 0, "maxReplicas": 2}})
    failed = wait_for(lambda: next((c for c in (get_md(cluster, "zero").get("status") or {}).get("conditions") or []
                                    if c["type"] == "Ready" and c["reason"] == "ValidationFailed"), None))
    assert "spec.autoscaling.minReplicas: 0 (scale to zero) needs KEDA" in failed["message"]
    assert _get(cluster, "/apis/apps/v1/namespaces/default/deployments/zero-vllm") is None



def test_turning_autoscaling_on_hands_the_replicas_over_without_a_reset(cluster, operator, emulator):
    """Server-side apply's documented handover: a second manager applies the live replicas before the operator's
    apply leaves them out, so the API server does not reset them to 1 while the HPA has not written them yet."""
    md(cluster, "chat", {"baseModel": BASE, "replicas": 3})
    wait_for(lambda: (_get(cluster, DEPLOYMENT) or {}).get("spec", {}).get("replicas") == 3, what="3 replicas")
    emulator.reset_requests()
    cluster.raw("PATCH", "/apis/kubetune.io/v1alpha1/namespaces/default/modeldeployments/chat",
                {"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 4}}}, "application/merge-patch+json")
    wait_for(lambda: _get(cluster, HPA), what="HPA")
    dep = cluster.raw("GET", DEPLOYMENT)
    assert dep["spec"]["replicas"] == 3
    owners = {e["manager"]: e["fieldsV1"]["f:spec"] for e in dep["metadata"]["managedFields"] if "f:spec" in e["fieldsV1"]}
    assert "f:replicas" in owners["kubetune-handover-to-autoscaler"] and "f:replicas" not in owners["kubetune-operator"]
    applies = [r.query.get("fieldManager") for r in emulator.requests
               if r.method == "PATCH" and r.path.endswith("/deployments/chat-vllm")]
    assert applies[:2] == ["kubetune-handover-to-autoscaler", "kubetune-operator"]  # the handover first
