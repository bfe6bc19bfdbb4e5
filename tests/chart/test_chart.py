"""The Helm chart, rendered by Helm's own SDK: lint, valid objects, restricted pods, the operator's
command line and platform defaults, metrics, NetworkPolicies."""

from __future__ import annotations

import pytest

from kubetune import cli
from kubetune.api import constants as c
from kubetune.config import OperatorSettings

from ..security.pss import pod_spec_of, violations
from .helm import NAMESPACE, ROOT, find, helm, kube_validate, lint, load_values_file, objects, one, render

PLATFORM_VALUES = load_values_file(ROOT / "examples" / "platform-values.yaml")
COMBOS = {
    "defaults": {},
    "namespaced": {"watch": {"namespaces": ["team-a", "team-b"]}},
    "platform-values": PLATFORM_VALUES,
    "external-identity": {"serviceAccount": {"create": False, "name": "ops-kubetune"}, "rbac": {"create": False},
                          "crds": {"install": False}, "metrics": {"enabled": False}},
    "pinned-and-placed": {"image": {"digest": "sha256:" + "a" * 64}, "imagePullSecrets": [{"name": "regcred"}],
                          "fullnameOverride": "tune", "crds": {"keep": False},
                          "operator": {"verbose": True, "priorityClassName": "system-cluster-critical",
                                       "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
                                       "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                                                        "effect": "NoSchedule"}],
                                       "podAnnotations": {"example.com/team": "ml-platform"}, "podLabels": {"team": "ml"}}},
}


def operator_container(objs):
    deployment = one(objs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container):
    assert all("value" in e and "valueFrom" not in e for e in container["env"])
    return {e["name"]: e["value"] for e in container["env"]}


@pytest.mark.parametrize("combo", COMBOS)
def test_lint_strict_is_clean(combo):
    assert lint(COMBOS[combo]) == []


@pytest.mark.parametrize("combo", COMBOS)
def test_every_rendered_object_is_valid(combo):
    objs = objects(COMBOS[combo])
    assert objs
    for obj in objs:
        if obj["kind"] == "ServiceMonitor":
            continue  # a custom resource: test_service_monitor checks it
        kube_validate(obj)


def test_kube_validate_rejects_a_typo():
    """The validation above is strict: an unknown field fails it."""
    deployment = one(objects(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(Exception, match="imagePulPolicy"):
        kube_validate(deployment)


@pytest.mark.parametrize("combo", COMBOS)
def test_every_pod_meets_the_restricted_profile(combo):
    workloads = [o for o in objects(COMBOS[combo]) if pod_spec_of(o) is not None]
    assert [o["kind"] for o in workloads] == ["Deployment"]
    for workload in workloads:
        assert violations(pod_spec_of(workload)) == []


def test_default_release_inventory():
    objs = objects()
    assert sorted((o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objs) == [
        ("ClusterRole", "kubetune", None),
        ("ClusterRoleBinding", "kubetune", None),
        ("CustomResourceDefinition", "finetunejobs.kubetune.io", None),
        ("CustomResourceDefinition", "finetunetemplates.kubetune.io", None),
        ("CustomResourceDefinition", "modeldeployments.kubetune.io", None),
        ("Deployment", "kubetune", NAMESPACE),
        ("Service", "kubetune-metrics", NAMESPACE),
        ("ServiceAccount", "kubetune", NAMESPACE),
    ]


def test_operator_deployment_defaults():
    objs = objects()
    deployment = one(objs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "kubetune"
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    container = operator_container(objs)
    assert container["image"] == "ghcr.io/kubetune/operator:0.1.0"
    assert container["command"] == ["kubetune"]
    assert container["args"] == ["operator", "--liveness=http://0.0.0.0:8080/healthz"]
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]


def test_probes_use_kopfs_health_endpoint():
    container = operator_container(objects({"operator": {"healthPort": 18080}}))
    assert "--liveness=http://0.0.0.0:18080/healthz" in container["args"]
    assert {"name": "health", "containerPort": 18080, "protocol": "TCP"} in container["ports"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


@pytest.mark.parametrize(("values", "expected"), [
    ({}, {"namespace": None, "liveness": "http://0.0.0.0:8080/healthz", "verbose": False}),
    ({"watch": {"namespaces": ["team-a", "team-b"]}, "operator": {"verbose": True}},
     {"namespace": ["team-a", "team-b"], "liveness": "http://0.0.0.0:8080/healthz", "verbose": True}),
])
def test_operator_command_line_is_accepted_by_the_cli(monkeypatch, values, expected):
    """The rendered command runs `kubetune operator` with the watch scope the values ask for."""
    seen = []
    monkeypatch.setattr(cli, "_operator", lambda args: seen.append(args) or 0)
    container = operator_container(objects(values))
    assert container["command"] == ["kubetune"]
    assert cli.main(container["args"]) == 0
    assert {k: getattr(seen[0], k) for k in expected} == expected


# Env vars the chart sets for operator features that OperatorSettings does not read yet (see docs/install.md).
PENDING_OPERATOR_ENV: set[str] = set()
# Settings only `kubetune local` sets: a cluster operator must never accept file:// URIs.
LOCAL_ONLY_OPERATOR_ENV = {"KUBETUNE_ALLOW_FILE_URIS"}


def test_platform_values_reach_the_operator_settings():
    env = env_of(operator_container(objects(PLATFORM_VALUES)))
    settings = OperatorSettings.from_env(env)
    assert settings == OperatorSettings(
        trainer_image="ghcr.io/kubetune/trainer:0.1.0", serving_image="ghcr.io/kubetune/serving:0.1.0",
        image_pull_policy="IfNotPresent", gpu_resource_name="nvidia.com/gpu", default_output_uri="s3://models/adapters",
        s3_endpoint="http://minio.storage:9000", s3_region="us-east-1", storage_secret="kubetune-storage",
        default_queue="default-gpus", termination_grace_seconds=300, metrics_port=9090, autoscaler="keda",
        prometheus_url="http://prometheus-operated.monitoring.svc:9090", leader_worker_set=True)
    fields = {"KUBETUNE_" + name.upper() for name in OperatorSettings.model_fields}
    assert {k for k in env if k.startswith("KUBETUNE_")} - fields == PENDING_OPERATOR_ENV
    # Every platform default has a value in the chart; the local-only ones never do.
    assert fields - LOCAL_ONLY_OPERATOR_ENV <= set(env)
    assert not LOCAL_ONLY_OPERATOR_ENV & set(env)


def test_chart_defaults_are_the_operators_defaults():
    """An install with no values behaves like the operator with no env (nothing unset is set)."""
    env = env_of(operator_container(objects()))
    # The chart always serves metrics (its Service points at them); everything else is the operator's default.
    assert OperatorSettings.from_env(env) == OperatorSettings(metrics_port=9090)
    assert "KUBETUNE_DEFAULT_OUTPUT_URI" not in env and "KUBETUNE_STORAGE_SECRET" not in env


def test_no_secret_values_in_operator_env():
    """The storage Secret is passed by name; nothing in the operator's env is a credential."""
    env = env_of(operator_container(objects(PLATFORM_VALUES)))
    assert env["KUBETUNE_STORAGE_SECRET"] == "kubetune-storage"
    assert not any(word in name for name in env for word in ("KEY", "TOKEN", "PASSWORD"))


@pytest.mark.parametrize(("values", "image"), [
    ({}, "ghcr.io/kubetune/operator:0.1.0"),
    ({"image": {"tag": "0.2.0-rc.1"}}, "ghcr.io/kubetune/operator:0.2.0-rc.1"),
    ({"image": {"tag": "0.2.0", "digest": "sha256:" + "b" * 64}}, "ghcr.io/kubetune/operator@sha256:" + "b" * 64),
    ({"image": {"repository": "registry.example.com/mirror/kubetune-operator"}},
     "registry.example.com/mirror/kubetune-operator:0.1.0"),
])
def test_operator_image_reference(values, image):
    assert operator_container(objects(values))["image"] == image


def test_metrics_service_selects_the_operator_pod():
    objs = objects()
    service = one(objs, "Service", "kubetune-metrics")
    pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in operator_container(objs)["ports"]
    assert env_of(operator_container(objs))["KUBETUNE_METRICS_PORT"] == "9090"
    assert find(objs, "ServiceMonitor") == []
    disabled = objects({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    assert find(disabled, "Service") == [] and find(disabled, "ServiceMonitor") == []
    assert "KUBETUNE_METRICS_PORT" not in env_of(operator_container(disabled))


def test_service_monitor():
    objs = objects({"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}}})
    monitor = one(objs, "ServiceMonitor")
    service = one(objs, "Service", "kubetune-metrics")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}]


def test_placement_and_pull_secrets_are_passed_through():
    objs = objects(COMBOS["pinned-and-placed"])
    deployment = one(objs, "Deployment", "tune")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"example.com/team": "ml-platform"}
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["spec"]["tolerations"][0]["key"] == "node-role.kubernetes.io/control-plane"
    assert operator_container(objs)["args"][-1] == "--verbose"


def test_external_service_account_needs_a_name():
    objs = objects(COMBOS["external-identity"])
    assert find(objs, "ServiceAccount") == [] and find(objs, "ClusterRole") == []
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops-kubetune"
    with pytest.raises(helm.HelmRenderError, match="serviceAccount.name is required when serviceAccount.create is false"):
        render({"serviceAccount": {"create": False}})


# --------------------------------------------------------------------------------- NetworkPolicies


def policies(values):
    return {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects(values) if o["kind"] == "NetworkPolicy"}


def test_network_policies_are_off_by_default():
    assert find(objects(), "NetworkPolicy") == []


def test_network_policies_per_namespace():
    got = policies(PLATFORM_VALUES)
    assert sorted(got) == [("team-a", "kubetune-preflight"), ("team-a", "kubetune-serving"), ("team-a", "kubetune-trainer"),
                           ("team-b", "kubetune-preflight"), ("team-b", "kubetune-serving"), ("team-b", "kubetune-trainer")]
    serving = got[("team-a", "kubetune-serving")]["spec"]
    assert serving["podSelector"] == {"matchLabels": {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE, c.LABEL_COMPONENT: c.COMPONENT_SERVING}}
    assert serving["policyTypes"] == ["Ingress"]
    api, sync = serving["ingress"]
    # The OpenAI API port, from the configured peers only.
    assert api["ports"] == [{"port": c.SERVING_VLLM_PORT, "protocol": "TCP"}]
    assert api["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}]
    # The adapter-sync status port, from the operator pod only.
    assert sync["ports"] == [{"port": c.SERVING_SYNC_PORT, "protocol": "TCP"}]
    assert sync["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
                             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kubetune",
                                                             "app.kubernetes.io/instance": "kubetune",
                                                             "app.kubernetes.io/component": "operator"}}}]


def test_trainer_egress_goes_to_dns_api_storage_and_hub_only():
    trainer = policies(PLATFORM_VALUES)[("team-b", "kubetune-trainer")]["spec"]
    assert trainer["policyTypes"] == ["Ingress", "Egress"]
    peers, dns, api, storage, hub = trainer["egress"]
    selector = {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE, c.LABEL_COMPONENT: c.COMPONENT_TRAINER}
    assert trainer["podSelector"] == {"matchLabels": selector}
    assert peers == {"to": [{"podSelector": {"matchLabels": selector}}]}
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert dns["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                          "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    assert api == {"to": [{"ipBlock": {"cidr": "172.18.0.2/32"}}],
                   "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}
    assert storage == {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "storage"}},
                               "podSelector": {"matchLabels": {"app": "minio"}}}],
                       "ports": [{"port": 9000, "protocol": "TCP"}]}
    assert hub == {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]}}],
                   "ports": [{"port": 443, "protocol": "TCP"}]}
    own, metrics = trainer["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": selector}}]}
    assert metrics["ports"] == [{"port": c.TRAINER_METRICS_PORT, "protocol": "TCP"}]


def test_preflight_pods_get_the_trainers_egress_and_no_ingress():
    got = policies(PLATFORM_VALUES)
    preflight, trainer = got[("team-b", "kubetune-preflight")]["spec"], got[("team-b", "kubetune-trainer")]["spec"]
    assert preflight["podSelector"] == {"matchLabels": {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE, c.LABEL_COMPONENT: c.COMPONENT_PREFLIGHT}}
    assert preflight["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in preflight
    assert preflight["egress"] == trainer["egress"][1:]  # DNS, API server, storage, hub: not the other training pods


def test_air_gapped_trainer_has_no_hub_egress():
    values = {"networkPolicy": {"enabled": True, "namespaces": ["ml"], "apiServer": {"cidrs": ["10.0.0.1/32"]},
                                "storage": {"cidrs": ["10.1.0.0/16"]}, "hub": {"cidrs": []}}}
    trainer = policies(values)[("ml", "kubetune-trainer")]["spec"]
    assert [rule.get("ports", [{}])[0].get("port") for rule in trainer["egress"]] == [None, 53, 443, 443]
    assert all("0.0.0.0/0" not in str(rule) for rule in trainer["egress"])
    assert len(trainer["ingress"]) == 1  # no metrics scraping unless peers are given


@pytest.mark.parametrize(("network_policy", "message"), [
    ({"apiServer": {"cidrs": ["10.0.0.1/32"]}, "storage": {"cidrs": ["10.1.0.0/16"]}},
     "networkPolicy.enabled needs networkPolicy.namespaces"),
    ({"namespaces": ["ml"], "storage": {"cidrs": ["10.1.0.0/16"]}}, "networkPolicy.apiServer.cidrs is required"),
    ({"namespaces": ["ml"], "apiServer": {"cidrs": ["10.0.0.1/32"]}},
     "networkPolicy.storage.cidrs or networkPolicy.storage.peers is required"),
])
def test_network_policies_refuse_to_render_half_configured(network_policy, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        render({"networkPolicy": {"enabled": True, **network_policy}})


def test_notes_describe_the_install():
    default = render()["kubetune/templates/NOTES.txt"]
    assert "Watch scope: all namespaces." in default
    assert "(none: every FineTuneJob must set spec.output.uri)" in default
    platform = render(PLATFORM_VALUES)["kubetune/templates/NOTES.txt"]
    assert "Watch scope: namespaces team-a, team-b." in platform
    assert 'Secret "kubetune-storage" (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)' in platform
    assert "NetworkPolicies restrict training and serving pods in: team-a, team-b." in platform
