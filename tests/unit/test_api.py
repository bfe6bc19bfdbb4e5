"""The API models: defaults, bounds, field-named errors, and the generated CRDs."""

from __future__ import annotations

from pathlib import Path

import celpy
import jsonschema
import pytest
import yaml

from kubetune.api import FineTuneJobSpec, ModelDeploymentSpec
from kubetune.api.crd import all_crds, render
from kubetune.api.validation import SpecError, parse

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"train": "s3://data/chat.jsonl"}}


def test_minimal_spec_gets_documented_defaults():
    spec = parse(FineTuneJobSpec, MINIMAL)
    assert spec.to_dict() == {
        "baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct", "trustRemoteCode": False},
        "dataset": {"train": "s3://data/chat.jsonl", "format": "auto"},
        "method": {"type": "sft"},
        "adapter": {"type": "lora", "rank": 16, "dropout": "0.05", "targetModules": ["all-linear"]},
        "hyperparameters": {"epochs": 3, "gradientAccumulationSteps": 1, "lrScheduler": "cosine",
                            "warmupRatio": "0.03", "maxLength": 2048, "seed": 42},
        "checkpointing": {"intervalSteps": 100, "keep": 2},
        "output": {"mergedModel": False},
        "storage": {},
        "resources": {"gpus": 1, "nodes": 1},
        "parallelism": {"strategy": "auto"},
        "scheduling": {},
        "backoffLimit": 3,
        "suspend": False,
        "cancel": False,
    }


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"baseModel": {"uri": "ftp://host/model"}}, "spec.baseModel.uri: 'ftp://host/model' is not a valid URI. Allowed schemes"),
        ({"dataset": {"train": "s3://data/../other/x.jsonl"}}, "spec.dataset.train: must not contain '..' path segments"),
        ({"dataset": {"train": "s3://data/x", "validation": "s3://data/v", "validationSplit": "0.1"}},
         "spec.dataset: dataset.validation and dataset.validationSplit are mutually exclusive"),
        ({"dataset": {"train": "s3://data/x", "validationSplit": "0.7"}}, "spec.dataset.validationSplit: must be between 0 and 0.5"),
        ({"hyperparameters": {"learningRate": 0.0002}}, 'spec.hyperparameters.learningRate: must be a string: quote the number, e.g. "0.0002"'),
        ({"hyperparameters": {"learningRate": "fast"}}, "spec.hyperparameters.learningRate: 'fast' is not a decimal number"),
        ({"hyperparameters": {"epochs": 0}}, "spec.hyperparameters.epochs: must be >= 1 (got 0)"),
        ({"adapter": {"rank": 1024}}, "spec.adapter.rank: must be <= 256 (got 1024)"),
        ({"adapter": {"dropout": "1"}}, "spec.adapter.dropout: must be below 1, got 1"),
        ({"hyperparameters": {"warmupRatio": "1.5"}}, "spec.hyperparameters.warmupRatio: must be below 1, got 1.5"),
        ({"adapter": {"type": "prefix"}}, "spec.adapter.type: 'prefix' is not allowed: 'lora', 'qlora', 'dora' or 'full'"),
        ({"resources": {"nodes": 2, "gpus": 0}}, "spec: resources.nodes > 1 needs resources.gpus > 0"),
        ({"resources": {"memory": "lots"}}, "spec.resources.memory: memory 'lots' is not a Kubernetes quantity"),
        ({"method": {"type": "dpo"}, "dataset": {"train": "s3://data/x", "format": "chatml"}},
         "spec: method.type dpo needs dataset.format preference or auto, got chatml"),
        ({"method": {"type": "sft", "dpo": {"beta": "0.1"}}}, "spec.method: method.dpo is only valid with method.type dpo"),
        ({"trainingSteps": 10}, "spec.trainingSteps: unknown field"),
        ({"hubTokenSecretRef": {"name": "hf"}}, "spec.hubTokenSecretRef.key: required field is missing"),
    ],
)
def test_bad_finetunejob_spec_names_the_field(patch, expected):
    with pytest.raises(SpecError) as err:
        parse(FineTuneJobSpec, {**MINIMAL, **patch})
    assert expected in str(err.value)


def test_bad_modeldeployment_spec_names_the_field():
    base = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}}
    cases = [
        ({"adapters": [{"name": "Support_Bot", "uri": "s3://a/b"}]}, "spec.adapters[0].name: 'Support_Bot' must be lowercase"),
        ({"adapters": [{"name": "a"}]}, "spec.adapters[0]: adapter 'a': set exactly one of fineTuneJobRef, uri or versions"),
        ({"adapters": [{"name": "a", "uri": "s3://a/b"}, {"name": "a", "uri": "s3://a/c"}]}, "spec: adapters: duplicate name(s) a"),
        ({"vllm": {"maxLoras": 8, "maxCpuLoras": 4}}, "spec.vllm: vllm.maxCpuLoras must be >= vllm.maxLoras"),
        ({"vllm": {"tensorParallelSize": 4}, "resources": {"gpus": 2}}, "spec: vllm.tensorParallelSize must not exceed resources.gpus"),
        ({"vllm": {"gpuMemoryUtilization": "1.5"}}, "spec.vllm.gpuMemoryUtilization: must be in (0, 1], got 1.5"),
    ]
    for patch, expected in cases:
        with pytest.raises(SpecError) as err:
            parse(ModelDeploymentSpec, {**base, **patch})
        assert expected in str(err.value), (patch, str(err.value))


def test_checked_in_crds_match_the_models():
    for filename, crd in all_crds().items():
        assert (ROOT / "crds" / filename).read_text() == render(crd), f"crds/{filename} drifted: run `kubetune crds`"


def _walk(node, path=""):
    yield path, node
    if isinstance(node, dict):
        for key, sub in (node.get("properties") or {}).items():
            yield from _walk(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("name", sorted(all_crds()))
def test_crd_schema_is_structural_documented_and_bounded(name):
    crd = all_crds()[name]
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    if "status" in schema["properties"]:  # a kind with a status writes it through the status subresource
        assert version["subresources"]["status"] == {}
    else:  # FineTuneTemplate: configuration (no status), cluster-scoped, stored exactly as written (no defaults)
        assert (name, crd["spec"]["scope"], version["subresources"]) == ("kubetune.io_finetunetemplates.yaml", "Cluster", {})
        assert [path for path, node in _walk(schema) if "default" in node] == []
    for path, node in _walk(schema["properties"]["spec"], "spec"):
        assert "$ref" not in node and "title" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert "type" in node, f"{path} has no type"
        assert node.get("description") or path.endswith("[]") or path.endswith("}"), f"{path} has no description"
        if node["type"] == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path} is an unbounded string"
        if node["type"] == "array":
            assert "maxItems" in node, f"{path} is an unbounded list"


def test_examples_of_cel_rules_agree_with_pydantic():
    """Each CEL rule in the CRD, evaluated with a real CEL interpreter, rejects what pydantic rejects."""
    env = celpy.Environment()
    spec_schema = all_crds()["kubetune.io_finetunejobs.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [(r["rule"], r["message"]) for r in spec_schema["x-kubernetes-validations"]]
    rules += [(r["rule"], r["message"]) for r in spec_schema["properties"]["dataset"]["x-kubernetes-validations"]]
    samples = [
        {**MINIMAL, "resources": {"nodes": 2, "gpus": 0}},
        {**MINIMAL, "resources": {"nodes": 2, "gpus": 8}},
        {**MINIMAL, "method": {"type": "dpo"}, "dataset": {"train": "s3://d/x", "format": "chatml"}},
        {**MINIMAL, "method": {"type": "dpo"}, "dataset": {"train": "s3://d/x", "format": "preference"}},
        {**MINIMAL, "method": {"type": "cpt"}, "dataset": {"train": "s3://d/x", "format": "alpaca"}},
        {**MINIMAL, "dataset": {"train": "s3://d/x", "validation": "s3://d/v", "validationSplit": "0.1"}},
        MINIMAL,
    ]
    for sample in samples:
        cel_ok = True
        for rule, _ in rules:
            target = sample["dataset"] if rule.startswith("!(has(self.validation)") else sample
            if not env.program(env.compile(rule)).evaluate({"self": celpy.json_to_cel(target)}):
                cel_ok = False
        try:
            parse(FineTuneJobSpec, sample)
            pydantic_ok = True
        except SpecError:
            pydantic_ok = False
        assert cel_ok == pydantic_ok, sample


def test_crds_validate_examples_of_valid_objects():
    schema = all_crds()["kubetune.io_finetunejobs.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    obj = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x"},
           "spec": parse(FineTuneJobSpec, MINIMAL).to_dict()}
    jsonschema.validate(obj, schema)
    obj["spec"]["adapter"]["rank"] = 0
    with pytest.raises(jsonschema.ValidationError, match="minimum"):
        jsonschema.validate(obj, schema)


def test_crd_yaml_round_trips():
    for filename in all_crds():
        text = (ROOT / "crds" / filename).read_text()
        assert yaml.safe_load(text) == all_crds()[filename]
