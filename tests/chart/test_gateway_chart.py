"""The chart's optional gateway (templates/gateway.yaml): off by default, its rights are exactly
kubetune.gateway.rbac's (bound per tenant and serving namespace only), restricted pods, settings the gateway
itself accepts, only /v1 exposed, NetworkPolicies."""

from __future__ import annotations

import pytest
import yaml

from kubetune.gateway.rbac import rbac_objects
from kubetune.gateway.settings import GatewaySettings

from ..security.pss import pod_spec_of, violations
from .helm import NAMESPACE, chart, find, helm, kube_validate, lint, objects, one, render

GATEWAY = {"enabled": True, "tenants": ["team-a", "team-b"],
           "settings": {"filesUri": "s3://kubetune-files/gateway", "maxFileBytes": 104857600, "coldStartSeconds": 120,
                        "baseModels": {"smollm2-135m": {"uri": "s3://models/smollm2-135m", "resources": {"gpus": 1},
                                                        "serving": {"namespace": "ml-serving", "name": "smollm2"}},
                                       "qwen-7b": {"uri": "s3://models/qwen-7b"}},
                        "job": {"output": {"uri": "s3://adapters/gateway"}}},
           "networkPolicy": {"enabled": True, "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}]},
           "ingress": {"enabled": True, "className": "nginx", "host": "llm.example.com"},
           "httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateways"}]}}
VALUES = {"gateway": GATEWAY, "platform": {"storage": {"credentialsSecret": "s3-creds"}}}
GW = "kubetune-gateway"


def gw_objects(values=VALUES):
    return [o for o in objects(values) if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "gateway"]


def test_off_by_default():
    assert gw_objects({}) == []


def test_lint_and_every_builtin_object_is_valid():
    assert lint(VALUES) == []
    for obj in gw_objects():
        if obj["kind"] != "HTTPRoute":  # a Gateway API custom resource
            kube_validate(obj)


def test_rbac_is_exactly_the_gateways_contract():
    """The chart renders what kubetune.gateway.rbac says the gateway needs, nothing more (tests/gateway run the
    gateway under those rules and fail on any denial)."""
    rendered = [o for o in gw_objects() if o["kind"] in ("ClusterRole", "Role", "RoleBinding", "ClusterRoleBinding")]
    want = rbac_objects(GW, NAMESPACE, ["team-a", "team-b"], serving=["ml-serving"])
    key = lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, rendered)) == sorted(map(key, want))
    for got, exp in zip(sorted(rendered, key=key), sorted(want, key=key)):
        assert got.get("rules") == exp.get("rules") and got.get("roleRef") == exp.get("roleRef")
        assert got.get("subjects") == exp.get("subjects")
    assert not find(gw_objects(), "ClusterRoleBinding")


def test_pod_runs_kubetune_gateway_restricted_with_settings_it_accepts():
    deployment = one(gw_objects(), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["kubetune"] and container["args"][0] == "gateway"
    assert violations(pod_spec_of(deployment)) == []
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert secrets == {"AWS_ACCESS_KEY_ID": "s3-creds", "AWS_SECRET_ACCESS_KEY": "s3-creds"}
    settings = yaml.safe_load(one(gw_objects(), "ConfigMap")["data"]["settings.yaml"])
    parsed = GatewaySettings.model_validate(settings)  # what `kubetune gateway --config` parses, strictly
    assert parsed.keys_namespace == NAMESPACE and parsed.base_models["smollm2-135m"].serving.name == "smollm2"
    assert parsed.cold_start_seconds == 120


def test_values_schema_offers_every_gateway_setting():
    """gateway.settings in values.schema.json (additionalProperties false) takes each key GatewaySettings has."""
    import json

    from .helm import CHART

    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["gateway"]["properties"]["settings"]
    assert set(schema["properties"]) == {f.alias for f in GatewaySettings.model_fields.values()}


def test_only_v1_is_exposed():
    ingress = one(gw_objects(), "Ingress")
    assert [p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]] == ["/v1"]
    route = one(gw_objects(), "HTTPRoute")
    assert route["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]


def test_network_policies():
    policies = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in find(gw_objects(), "NetworkPolicy")}
    assert set(policies) == {(NAMESPACE, GW), ("ml-serving", f"{GW}-serving")}
    assert policies[(NAMESPACE, GW)]["spec"]["ingress"][0]["from"] == GATEWAY["networkPolicy"]["from"]
    serving = policies[("ml-serving", f"{GW}-serving")]["spec"]["ingress"][0]["from"][0]
    assert serving["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"


@pytest.mark.parametrize("bad, where", [
    ({"tenants": ["Team_A"]}, "tenants"),
    ({"settings": {"filesUri": "s3://x", "filesUrl": "s3://y"}}, "filesUrl"),
    ({"settings": {"filesUri": "s3://x", "baseModels": {"m": {"uri": "s3://m", "serving": {"name": "x"}}}}}, "namespace"),
])
def test_bad_gateway_values_are_rejected(bad, where):
    with pytest.raises(Exception) as err:
        chart().validate_schema({"gateway": {**GATEWAY, **bad}})
    assert where in str(err.value)


@pytest.mark.parametrize("bad, message", [
    ({"tenants": []}, "gateway.tenants is required"),
    ({"settings": {"filesUri": ""}}, "gateway.settings.filesUri is required"),
    ({"ingress": {"enabled": True}}, "gateway.ingress.host is required"),
])
def test_missing_values_fail_the_render_naming_them(bad, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        render({"gateway": {**GATEWAY, **bad}})


def test_service_monitor_scrapes_the_gateway_with_metrics_service_monitor():
    """metrics.serviceMonitor also scrapes the gateway's /metrics (kubetune_gateway_requests_waiting wakes a
    ModelDeployment at zero: docs/scaling.md); the operator keeps its own."""
    values = {**VALUES, "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}}
    monitor = one(gw_objects(values), "ServiceMonitor")
    service = one(gw_objects(values), "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
    assert len(find(objects(values), "ServiceMonitor")) == 2 and find(gw_objects(), "ServiceMonitor") == []
