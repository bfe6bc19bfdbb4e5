"""ModelDeployment scaling on the emulator: `kubectl scale md` through the CRD's scale subresource (autoscaling/v1
Scale, GET/PUT/PATCH, as the API server serves it for custom resources), server-side apply leaving a workload's
replicas to the autoscaler that scaled it, and the built LeaderWorkerSet, KEDA ScaledObject and HPA accepted with
fieldValidation=Strict by their CRDs' schemas (tests/fixtures/thirdparty_crds.py says how those are made)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.validation import parse
from kubetune.builders.modeldeployment import build_children, desired_set, resolve_spec
from kubetune.config import OperatorSettings
from kubetune_emulator.pytest_plugin import emulator, kubectl  # noqa: F401  (fixtures)
from tests.fixtures.thirdparty_crds import leaderworkerset_crd, scaledobject_crd

ROOT = Path(__file__).resolve().parents[2]
MDS = "/apis/kubetune.io/v1alpha1/namespaces/default/modeldeployments"
APPLY = "application/apply-patch+yaml"
MD = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "chat", "namespace": "default"},
      "spec": {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "replicas": 1}}
SETTINGS = OperatorSettings(serving_image="registry.example/kubetune/serving:1.0", autoscaler="keda",
                            prometheus_url="http://prometheus.monitoring:9090", leader_worker_set=True)


def _built(spec: dict, settings: OperatorSettings = SETTINGS) -> list[dict]:
    body = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "chat", "namespace": "default", "uid": "u-1"}}
    resolved = resolve_spec(parse(ModelDeploymentSpec, spec), settings)
    children = build_children(body, resolved, settings, desired_set(1, []))
    for child in children:  # no owner in this test: the garbage collector would take owner-less children
        child["metadata"].pop("ownerReferences")
    return children


def test_kubectl_scale_md_through_the_scale_subresource(emulator, kubectl):
    emulator.apply_file(ROOT / "crds" / "kubetune.io_modeldeployments.yaml")
    assert emulator.http("POST", MDS, MD)[0] == 201
    emulator.http("PATCH", f"{MDS}/chat/status", {"status": {"replicas": 1, "selector": "app.kubernetes.io/component="
                                                             "serving,kubetune.io/modeldeployment=chat"}},
                  "application/merge-patch+json")
    resources = {r["name"]: r for r in emulator.http("GET", "/apis/kubetune.io/v1alpha1")[1]["resources"]}
    assert (resources["modeldeployments/scale"]["group"], resources["modeldeployments/scale"]["kind"]) == ("autoscaling", "Scale")

    assert "modeldeployment.kubetune.io/chat scaled" in kubectl("scale", "md", "chat", "--replicas=3").stdout
    assert emulator.get("kubetune.io", "v1alpha1", "modeldeployments", "default", "chat")["spec"]["replicas"] == 3
    code, scale = emulator.http("GET", f"{MDS}/chat/scale")
    assert code == 200 and {k: scale[k] for k in ("apiVersion", "kind", "spec", "status")} == {
        "apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 3},
        "status": {"replicas": 1, "selector": "app.kubernetes.io/component=serving,kubetune.io/modeldeployment=chat"}}

    put = dict(scale, spec={"replicas": 4})  # PUT carries the Scale's resourceVersion: a stale one conflicts
    assert emulator.http("PUT", f"{MDS}/chat/scale", put)[1]["spec"]["replicas"] == 4
    assert emulator.http("PUT", f"{MDS}/chat/scale", dict(scale, spec={"replicas": 5}))[0] == 409
    code, body = emulator.http("PATCH", f"{MDS}/chat/scale", {"spec": {"replicas": 99}}, "application/merge-patch+json")
    assert code == 422 and "spec.replicas" in body["message"]  # the CRD's maximum (64) holds through /scale too
    assert emulator.get("kubetune.io", "v1alpha1", "modeldeployments", "default", "chat")["spec"]["replicas"] == 4
    assert kubectl("scale", "md", "chat", "--replicas=-1", check=False).returncode != 0


def test_an_apply_without_replicas_leaves_them_to_the_autoscaler_that_set_them(emulator):
    """What the operator relies on when spec.autoscaling is on (docs/scaling.md): its applied Deployment has no
    replicas; the HPA's scale update owns them. Without such an owner, the field goes and is defaulted to 1."""
    with_replicas = _built(MD["spec"], OperatorSettings())[-1]
    without = copy.deepcopy(with_replicas)
    del without["spec"]["replicas"]
    path = "/apis/apps/v1/namespaces/default/deployments/chat-vllm"
    apply = f"{path}?fieldManager=kubetune&force=true"

    assert emulator.http("PATCH", apply, with_replicas, APPLY)[0] == 201
    assert emulator.http("PATCH", f"{path}/scale?fieldManager=kube-controller-manager", {"spec": {"replicas": 5}},
                         "application/merge-patch+json")[0] == 200  # the HPA scales it
    code, dep = emulator.http("PATCH", apply, without, APPLY)
    assert code == 200 and dep["spec"]["replicas"] == 5
    owners = {(e["manager"], e["operation"]): json.dumps(e["fieldsV1"]) for e in dep["metadata"]["managedFields"]}
    assert '"f:replicas"' in owners[("kube-controller-manager", "Update")]
    assert '"f:replicas"' not in owners[("kubetune", "Apply")]
    code, dep = emulator.http("PATCH", apply, without, APPLY)  # stays so on every later apply
    assert dep["spec"]["replicas"] == 5

    emulator.delete("apps", "v1", "deployments", "default", "chat-vllm")
    assert emulator.http("PATCH", apply, {**with_replicas, "spec": {**with_replicas["spec"], "replicas": 3}}, APPLY)[0] == 201
    assert emulator.http("PATCH", apply, without, APPLY)[1]["spec"]["replicas"] == 1  # given up, nobody else owns it


def test_built_leader_worker_set_scaled_object_and_hpa_pass_their_schemas_strictly(emulator):
    for crd in (leaderworkerset_crd(), scaledobject_crd()):
        assert emulator.http("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)[0] == 201
    spec = {**MD["spec"], "resources": {"gpus": 8, "nodes": 2}, "autoscaling": {"minReplicas": 0, "maxReplicas": 4}}
    *_, scaled, lws = _built(spec)
    hpa = _built({**MD["spec"], "autoscaling": {"maxReplicas": 4}}, OperatorSettings())[-2]
    for obj, plural in [(lws, "leaderworkersets"), (scaled, "scaledobjects"), (hpa, "horizontalpodautoscalers")]:
        group_version = obj["apiVersion"]
        url = f"/apis/{group_version}/namespaces/default/{plural}"
        code, stored = emulator.http("POST", f"{url}?fieldValidation=Strict", obj)
        assert code == 201, stored
        if plural != "leaderworkersets":  # (defaults added: below)
            assert stored["spec"] == obj["spec"]
        code, applied = emulator.http("PATCH", f"{url}/{obj['metadata']['name']}?fieldManager=kubetune&force=true", obj, APPLY)
        assert code == 200, applied
    stored = emulator.get("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", "default", "chat-vllm")
    template = stored["spec"]["leaderWorkerTemplate"]
    assert template["leaderTemplate"] == lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]  # nothing pruned
    assert template["workerTemplate"] == lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]
    assert stored["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"] == {"maxSurge": 1, "maxUnavailable": 0, "partition": 0}

    # The schemas bite: a misspelt pod field, a bad enum, a trigger without metadata.
    typo = copy.deepcopy(lws)
    typo["metadata"]["name"] = "typo"
    typo["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["comand"] = ["ray"]
    code, body = emulator.http("POST", "/apis/leaderworkerset.x-k8s.io/v1/namespaces/default/leaderworkersets"
                                       "?fieldValidation=Strict", typo)
    assert code == 400 and 'unknown field "spec.leaderWorkerTemplate.workerTemplate.spec.containers[0].comand"' in body["message"]
    enum = copy.deepcopy(lws)
    enum["metadata"]["name"] = "enum"
    enum["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Always"
    code, body = emulator.http("POST", "/apis/leaderworkerset.x-k8s.io/v1/namespaces/default/leaderworkersets", enum)
    assert code == 422 and "spec.leaderWorkerTemplate.restartPolicy" in body["message"]
    bare = copy.deepcopy(scaled)
    bare["metadata"]["name"] = "bare"
    del bare["spec"]["triggers"][0]["metadata"]
    code, body = emulator.http("POST", "/apis/keda.sh/v1alpha1/namespaces/default/scaledobjects", bare)
    assert code == 422 and "spec.triggers[0].metadata: Required value" in body["message"]


def test_leader_worker_set_scale_subresource_selects_the_leaders(emulator):
    """The HPA or KEDA reads a LeaderWorkerSet's pods through its scale subresource's selector (status.hpaPodSelector,
    the leaders: where vLLM's API server and metrics are)."""
    emulator.http("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", leaderworkerset_crd())
    lws = _built({**MD["spec"], "resources": {"gpus": 8, "nodes": 2}})[-1]
    url = "/apis/leaderworkerset.x-k8s.io/v1/namespaces/default/leaderworkersets/chat-vllm"
    assert emulator.http("PATCH", f"{url}?fieldManager=kubetune&force=true", lws, APPLY)[0] == 201
    emulator.http("PATCH", f"{url}/status", {"status": {"replicas": 1, "hpaPodSelector": "leaderworkerset.sigs.k8s.io/name="
                                                       "chat-vllm,leaderworkerset.sigs.k8s.io/worker-index=0"}},
                  "application/merge-patch+json")
    scale = emulator.http("GET", f"{url}/scale")[1]
    assert scale["spec"] == {"replicas": 1} and scale["status"]["selector"].endswith("worker-index=0")
