"""values.schema.json covers every value and rejects bad ones at install time (Helm's own validator)."""

from __future__ import annotations

import json

import pytest

from kubetune.api.common import DNS_LABEL

from .helm import CHART, ROOT, chart, helm, load_values_file

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = load_values_file(CHART / "values.yaml")


def resolve(node):
    while "$ref" in node:
        node = {**SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def leaves(value, path=()):
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    else:
        yield path


def schema_at(path):
    node = SCHEMA
    for key in path:
        node = resolve(node)
        assert node.get("type") == "object", f"{'.'.join(path)}: {key} is not under an object"
        if key in node.get("properties", {}):
            node = node["properties"][key]
        else:
            extra = node.get("additionalProperties")
            assert isinstance(extra, dict), f"{'.'.join(path)} is not described by values.schema.json"
            node = extra
    return resolve(node)


def test_every_value_is_described():
    paths = list(leaves(VALUES))
    assert len(paths) > 50
    for path in paths:
        assert schema_at(path), path


def test_every_object_rejects_unknown_keys():
    def walk(node, where):
        node = resolve(node)
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{where} accepts unknown keys"
            for key, sub in node["properties"].items():
                walk(sub, f"{where}.{key}")
    walk(SCHEMA, "values")


def test_defaults_and_examples_are_valid():
    chart().validate_schema(VALUES)
    chart().validate_schema(load_values_file(ROOT / "examples" / "platform-values.yaml"))


def test_schema_patterns_are_the_apis():
    """Names the operator later puts in labels and objects follow the same rules as the API."""
    assert schema_at(("watch", "namespaces"))["items"] == {"$ref": "#/$defs/dnsLabel"}
    assert resolve({"$ref": "#/$defs/dnsLabel"})["pattern"] == DNS_LABEL
    assert schema_at(("platform", "defaultQueue"))["pattern"] == "^$|" + DNS_LABEL


@pytest.mark.parametrize(("values", "where", "why"), [
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "must be one of"),
    ({"image": {"digest": "sha256:abc"}}, "/image/digest", "does not match pattern"),
    ({"platfrom": {}}, "", "additional properties 'platfrom' not allowed"),
    ({"platform": {"trainerImage": "ghcr.io/kubetune/trainer 0.1"}}, "/platform/trainerImage", "does not match pattern"),
    ({"platform": {"gpuResourceName": "gpu"}}, "/platform/gpuResourceName", "does not match pattern"),
    ({"platform": {"defaultOutputUri": "gs://models/adapters"}}, "/platform/defaultOutputUri", "does not match pattern"),
    ({"platform": {"defaultOutputUri": "s3://models/../other"}}, "/platform/defaultOutputUri", "not"),
    ({"platform": {"storage": {"endpoint": "minio:9000"}}}, "/platform/storage/endpoint", "does not match pattern"),
    ({"platform": {"storage": {"credentialsSecret": "Storage_Creds"}}}, "/platform/storage/credentialsSecret", "does not match pattern"),
    ({"platform": {"defaultQueue": "GPU queue"}}, "/platform/defaultQueue", "does not match pattern"),
    ({"platform": {"terminationGraceSeconds": -1}}, "/platform/terminationGraceSeconds", "minimum"),
    ({"platform": {"terminationGraceSeconds": "120"}}, "/platform/terminationGraceSeconds", "got string, want integer"),
    ({"platform": {"preflight": {"enabled": "yes"}}}, "/platform/preflight/enabled", "got string, want boolean"),
    ({"platform": {"preflight": {"memory": "4 GB"}}}, "/platform/preflight/memory", "does not match pattern"),
    ({"platform": {"preflight": {"activeDeadlineSeconds": 5}}}, "/platform/preflight/activeDeadlineSeconds", "minimum"),
    ({"platform": {"gpuMemory": {"NVIDIA-L4": "24 GB"}}}, "/platform/gpuMemory/NVIDIA-L4", "does not match pattern"),
    ({"watch": {"namespaces": ["Team_A"]}}, "/watch/namespaces/0", "does not match pattern"),
    ({"watch": {"namespaces": ["team-a", "team-a"]}}, "/watch/namespaces", "items at 0 and 1 are equal"),
    ({"crds": {"install": "yes"}}, "/crds/install", "got string, want boolean"),
    ({"operator": {"runAsUser": 0}}, "/operator/runAsUser", "minimum"),
    ({"operator": {"healthPort": 70000}}, "/operator/healthPort", "maximum"),
    ({"operator": {"resources": {"limits": {"memory": "lots"}}}}, "/operator/resources/limits/memory", "anyOf"),
    ({"metrics": {"service": {"type": "ExternalName"}}}, "/metrics/service/type", "must be one of"),
    ({"metrics": {"serviceMonitor": {"enabled": True, "interval": "often"}}}, "/metrics/serviceMonitor/interval", "does not match pattern"),
    ({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1"]}}}, "/networkPolicy/apiServer/cidrs/0", "does not match pattern"),
    ({"networkPolicy": {"serving": {"from": [{"podSelecter": {}}]}}}, "/networkPolicy/serving/from/0", "additional properties 'podSelecter'"),
])
def test_bad_values_are_rejected_naming_the_key(values, where, why):
    with pytest.raises(helm.HelmValuesError) as err:
        chart().validate_schema(chart().merge_values(values))
    assert f"at '{where}'" in str(err.value) and why in str(err.value), str(err.value)


def test_lint_fails_on_bad_values():
    report = helm.lint(str(CHART), {"platform": {"gpuResourceName": "gpu"}}, strict=True)
    assert any("/platform/gpuResourceName" in e for e in report["errors"])
