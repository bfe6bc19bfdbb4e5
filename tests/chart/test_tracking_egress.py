"""networkPolicy.tracking: training pods (only they) may reach the experiment tracking servers spec.tracking names
(docs/tracking.md); nothing is opened unless the platform lists them."""

from __future__ import annotations

from .helm import kube_validate, objects

BASE = {"enabled": True, "namespaces": ["ml"], "apiServer": {"cidrs": ["10.0.0.1/32"]}, "storage": {"cidrs": ["10.1.0.0/16"]}}
MLFLOW_NS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mlflow"}}}


def _egress(tracking: dict | None) -> dict[str, list]:
    values = {"networkPolicy": {**BASE, **({"tracking": tracking} if tracking is not None else {})}}
    rendered = [o for o in objects(values) if o["kind"] == "NetworkPolicy"]
    for policy in rendered:
        kube_validate(policy)
    return {o["metadata"]["name"]: o["spec"].get("egress", []) for o in rendered}


def test_tracking_servers_are_reachable_from_training_pods_only():
    egress = _egress({"peers": [MLFLOW_NS], "cidrs": ["192.168.7.0/24"], "ports": [5000]})
    rule = {"to": [{"ipBlock": {"cidr": "192.168.7.0/24"}}, MLFLOW_NS], "ports": [{"port": 5000, "protocol": "TCP"}]}
    assert egress["kubetune-trainer"].count(rule) == 1
    assert rule not in egress["kubetune-preflight"]  # the pre-flight tracks nothing


def test_no_tracking_egress_unless_servers_are_listed():
    default, listed = _egress(None), _egress({"peers": [MLFLOW_NS]})
    assert len(listed["kubetune-trainer"]) == len(default["kubetune-trainer"]) + 1
    assert listed["kubetune-trainer"][-1]["ports"] == [{"port": 443, "protocol": "TCP"}, {"port": 5000, "protocol": "TCP"}]
    assert _egress({"cidrs": [], "peers": []}) == default
