"""examples/ are executable specs: each validates against the CRD schema (JSON Schema + CEL rules)
and the pydantic models, builds real pods under the platform defaults, and applies to the Kubernetes
API emulator with the real kubectl."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.memory import GIB, ModelShape, TrainingShape, estimate, parse_bytes
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.template import FineTuneTemplateSpec
from kubetune.api.validation import parse
from kubetune.builders import finetunejob as ftj_builders
from kubetune.builders import modeldeployment as md_builders
from kubetune.config import OperatorSettings
from kubetune.plan.template import apply_template
from kubetune_emulator.schemas import apply_defaults

from ..chart.helm import LOADER, chart, kube_validate, objects
from ..security.pss import pod_spec_of, violations

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
VALUES_FILES = {"platform-values.yaml"}  # Helm values for the chart, not objects
KNOWN_KINDS = ("FineTuneJob", "ModelDeployment", "FineTuneTemplate", "Application")
SCALING_CRD_KINDS = ("LeaderWorkerSet", "ScaledObject")  # built by ModelDeployments (builders/scaling.py)


def load(name: str) -> Any:
    docs = [d for d in yaml.load_all((EXAMPLES / name).read_text(), Loader=LOADER) if d]
    assert len(docs) == 1, f"{name}: one object per example file"
    return docs[0]


# Every YAML file under examples/ (a new one is picked up, and must be of a kind tested here).
KINDS = {str(p.relative_to(EXAMPLES)): None if p.name in VALUES_FILES else load(str(p.relative_to(EXAMPLES))).get("kind")
         for p in sorted(EXAMPLES.rglob("*.yaml"))}
CUSTOM = sorted(name for name, kind in KINDS.items() if kind in ("FineTuneJob", "ModelDeployment", "FineTuneTemplate"))
WORKLOADS = [name for name in CUSTOM if KINDS[name] != "FineTuneTemplate"]  # what the operator builds pods from
TEMPLATES = {load(name)["metadata"]["name"]: load(name) for name in CUSTOM if KINDS[name] == "FineTuneTemplate"}
MODELS = {"FineTuneJob": FineTuneJobSpec, "ModelDeployment": ModelDeploymentSpec, "FineTuneTemplate": FineTuneTemplateSpec}
CRD_FILES = {"FineTuneJob": "kubetune.io_finetunejobs.yaml", "ModelDeployment": "kubetune.io_modeldeployments.yaml",
             "FineTuneTemplate": "kubetune.io_finetunetemplates.yaml"}


def crd_schema(kind: str) -> dict[str, Any]:
    crd = yaml.load((ROOT / "crds" / CRD_FILES[kind]).read_text(), Loader=LOADER)
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def strict(schema: Any) -> Any:
    """The CRD schema as JSON Schema that also rejects unknown fields (kubectl's strict field validation)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("type") == "object" and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def cel_failures(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Evaluate every x-kubernetes-validations rule at the node it is declared on, like the API server."""
    failures = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        if not env.program(env.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(value)}):
            failures.append(f"{path or '.'}: {rule['message']}")
    if isinstance(value, dict):
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key) or (schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None)
            if sub:
                failures += cel_failures(sub, item, f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            failures += cel_failures(schema["items"], item, f"{path}[{i}]")
    return failures


def platform_settings() -> OperatorSettings:
    """What the operator reads when installed with examples/platform-values.yaml."""
    deployment = next(o for o in objects(load("platform-values.yaml")) if o["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    return OperatorSettings.from_env(env)


def subset(small: Any, big: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and subset(v, big[k]) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(small) == len(big) and all(subset(a, b) for a, b in zip(small, big))
    return small == big


def test_the_issues_examples_exist():
    assert {name: KINDS.get(name) for name in (
        "sft-lora.yaml", "qlora.yaml", "dpo.yaml", "full-finetune.yaml", "continued-pretraining.yaml",
        "model-deployment.yaml", "kueue-queued-job.yaml", "argocd-application.yaml", "platform-values.yaml")} == {
        "sft-lora.yaml": "FineTuneJob", "qlora.yaml": "FineTuneJob", "dpo.yaml": "FineTuneJob",
        "full-finetune.yaml": "FineTuneJob", "continued-pretraining.yaml": "FineTuneJob",
        "model-deployment.yaml": "ModelDeployment", "kueue-queued-job.yaml": "FineTuneJob",
        "argocd-application.yaml": "Application", "platform-values.yaml": None}
    assert load("sft-lora.yaml")["metadata"]["name"] == "support-bot"
    spec = load("kueue-queued-job.yaml")["spec"]
    assert spec["scheduling"]["queueName"] == "team-a-gpus"
    adapters = load("model-deployment.yaml")["spec"]["adapters"]
    assert [sorted(set(a) - {"name"}) for a in adapters] == [["fineTuneJobRef"], ["uri"]]
    assert [load(n)["spec"]["method"]["type"] for n in ("dpo.yaml", "continued-pretraining.yaml")] == ["dpo", "cpt"]
    assert [load(n)["spec"]["adapter"]["type"] for n in ("qlora.yaml", "full-finetune.yaml")] == ["qlora", "full"]


@pytest.mark.parametrize("name", KINDS)
def test_every_example_is_tested_and_has_a_header(name):
    assert KINDS[name] in (*KNOWN_KINDS, None) and (KINDS[name] is not None or name in VALUES_FILES), name
    header = []
    for line in (EXAMPLES / name).read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 2, f"{name}: needs a comment header saying what it does and what it needs"
    if "/" not in name:  # this folder's convention (examples/quickstart/ follows the README's)
        assert "What it does:" in "\n".join(header) and "Needs:" in "\n".join(header), name


@pytest.mark.parametrize("name", CUSTOM)
def test_example_matches_the_crd_schema(name):
    doc = load(name)
    schema = crd_schema(doc["kind"])
    jsonschema.Draft4Validator(strict(schema)).validate(doc)
    # The API server applies the schema's defaults before it evaluates CEL rules.
    assert cel_failures(schema, apply_defaults(copy.deepcopy(doc), schema)) == []


def test_schema_check_would_catch_a_typo_and_a_cel_rule():
    doc = load("dpo.yaml")
    doc["spec"]["hyperparameters"]["learningrate"] = "1e-4"
    with pytest.raises(jsonschema.ValidationError, match="learningrate"):
        jsonschema.Draft4Validator(strict(crd_schema("FineTuneJob"))).validate(doc)
    doc = load("dpo.yaml")
    doc["spec"]["dataset"]["format"] = "chatml"
    assert cel_failures(crd_schema("FineTuneJob"), doc) == [".spec: method.type dpo needs dataset.format preference or auto"]


@pytest.mark.parametrize("name", CUSTOM)
def test_example_parses_with_the_api_models(name):
    doc = load(name)
    spec = parse(MODELS[doc["kind"]], doc["spec"])
    assert subset(doc["spec"], spec.to_dict()), "the model dropped or changed a field"


def built_children(doc: dict, settings: OperatorSettings) -> list[dict]:
    """What the operator's real builders make for a manifest (in namespace team-a, no adapters resolved)."""
    body = {**doc, "metadata": {**doc["metadata"], "namespace": "team-a", "uid": "6f1d7a52-0000-4000-8000-000000000001"}}
    if doc["kind"] == "FineTuneJob":
        spec = parse(FineTuneJobSpec, doc["spec"])
        spec = apply_template(spec, TEMPLATES[spec.template]) if spec.template else spec  # as the operator does
        resolved = ftj_builders.resolve_spec(spec, settings)
        return ftj_builders.build_children(body, resolved, settings)
    resolved = md_builders.resolve_spec(parse(ModelDeploymentSpec, doc["spec"]), settings)
    return md_builders.build_children(body, resolved, settings, md_builders.desired_set(1, []))


@pytest.mark.parametrize("name", WORKLOADS)
def test_example_builds_restricted_valid_pods_with_the_platform_defaults(name):
    """The short manifests work because the chart's platform defaults fill in the rest."""
    children = built_children(load(name), platform_settings())
    for child in children:
        if child["kind"] in SCALING_CRD_KINDS:  # custom resources: tests/emulator/test_scaling_kinds.py checks them
            continue
        kube_validate(child)
        if pod_spec_of(child) is not None:
            assert violations(pod_spec_of(child)) == [], child["metadata"]["name"]
    for lws in (c for c in children if c["kind"] == "LeaderWorkerSet"):
        for role in ("leaderTemplate", "workerTemplate"):
            assert violations(lws["spec"]["leaderWorkerTemplate"][role]["spec"]) == [], role
    workload = next(c for c in children if c["kind"] in ("Job", "Deployment", "LeaderWorkerSet"))
    pod = pod_spec_of(workload) or workload["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]
    env = {e["name"]: e.get("value") or e.get("valueFrom") for c in pod["containers"] for e in c["env"]}
    assert env["KUBETUNE_S3_ENDPOINT"] == "http://minio.storage:9000"
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "kubetune-storage", "key": "AWS_SECRET_ACCESS_KEY"}}


def test_sft_lora_stays_short_thanks_to_the_platform_defaults():
    settings = platform_settings()
    resolved = ftj_builders.resolve_spec(parse(FineTuneJobSpec, load("sft-lora.yaml")["spec"]), settings)
    assert resolved.output.uri == "s3://models/adapters"
    assert resolved.image == "ghcr.io/kubetune/trainer:0.1.0"
    assert resolved.scheduling.queue_name == "default-gpus"
    assert resolved.storage.credentials_secret_ref.name == "kubetune-storage"
    queued = ftj_builders.resolve_spec(parse(FineTuneJobSpec, load("kueue-queued-job.yaml")["spec"]), settings)
    assert queued.scheduling.queue_name == "team-a-gpus"  # the manifest's queue wins over the default


def test_argocd_application_installs_this_chart():
    app = load("argocd-application.yaml")
    source = app["spec"]["source"]
    assert (ROOT / source["path"] / "Chart.yaml").exists()
    assert source["targetRevision"] == "v" + chart().metadata["appVersion"]
    values = source["helm"]["valuesObject"]
    chart().validate_schema(chart().merge_values(values))
    deployment = next(o for o in objects(values, namespace=app["spec"]["destination"]["namespace"]) if o["kind"] == "Deployment")
    assert deployment["metadata"]["namespace"] == "kubetune-system"
    assert "--namespace=team-a" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]


def test_platform_values_are_valid_chart_values():
    chart().validate_schema(chart().merge_values(load("platform-values.yaml")))
    deployment = next(o for o in objects(load("platform-values.yaml")) if o["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--namespace=team-a", "--namespace=team-b"]


def test_examples_apply_to_the_api_emulator(kubectl):
    """kubectl apply, one file at a time, like the header of each example says; then read each object
    back: nothing the example sets was pruned or rejected by the CRD schema."""
    kubectl("apply", "-f", str(ROOT / "crds"))
    kubectl("apply", "-f", str(Path(__file__).parent / "argocd-application-crd.yaml"))
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "argocd"}}))
    plurals = {"FineTuneJob": "finetunejob.kubetune.io", "ModelDeployment": "modeldeployment.kubetune.io",
               "FineTuneTemplate": "finetunetemplate.kubetune.io", "Application": "application.argoproj.io"}
    applied = 0
    for name, kind in KINDS.items():
        if kind is None:
            continue
        applied += 1
        doc = load(name)
        out = kubectl("apply", "-f", str(EXAMPLES / name)).stdout
        assert out.strip() == f"{plurals[kind]}/{doc['metadata']['name']} created", (name, out)
        namespace = doc["metadata"].get("namespace", "default")
        stored = json.loads(kubectl("get", plurals[kind], doc["metadata"]["name"], "-n", namespace, "-o", "json").stdout)
        assert subset(doc["spec"], stored["spec"]), f"{name}: the API server pruned or changed a field"
    assert applied == len(KINDS) - len(VALUES_FILES) >= 8


# config.json of the templates' base models (the public values; tests/unit/test_memory_estimate.py checks the estimate
# against the seed figures with them).
QWEN25 = {
    "hf://Qwen/Qwen2.5-0.5B-Instruct": {"hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
                                        "num_hidden_layers": 24, "num_key_value_heads": 2, "tie_word_embeddings": True,
                                        "vocab_size": 151936},
    "hf://Qwen/Qwen2.5-7B-Instruct": {"hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
                                      "num_hidden_layers": 28, "num_key_value_heads": 4, "tie_word_embeddings": False,
                                      "vocab_size": 152064},
}


def test_the_template_examples_cover_qwen_lora_and_qlora_and_one_job_uses_them():
    covered = {(t["spec"]["baseModel"]["uri"], kind) for t in TEMPLATES.values() for kind in t["spec"]["adapterTypes"]}
    assert covered >= {(uri, kind) for uri in QWEN25 for kind in ("lora", "qlora")}
    jobs = [load(name) for name in WORKLOADS if load(name)["spec"].get("template")]
    assert [job["spec"]["template"] for job in jobs] == ["qwen2.5-7b-qlora"]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_the_largest_run_a_template_allows_fits_its_gpu(name):
    """The seed hardware figures, applied: the memory estimate (kubetune.api.memory, the pre-flight's) of the
    largest run the template's bounds allow, for each adapter type it allows, fits the memory of the GPU its
    nodeSelector asks for (the chart's platform.gpuMemory table)."""
    spec = FineTuneTemplateSpec.model_validate(TEMPLATES[name]["spec"])
    gpu = platform_settings().gpu_memory_for(None, spec.defaults.scheduling.node_selector)
    budget = parse_bytes(gpu)
    assert budget and spec.bounds.max_rank and spec.bounds.max_batch_size and spec.bounds.max_length, name
    shape = ModelShape.from_config({"architectures": ["Qwen2ForCausalLM"], **QWEN25[spec.base_model.uri]})
    for adapter in spec.adapter_types:
        largest = TrainingShape(adapter=adapter, rank=spec.bounds.max_rank, batch_size=spec.bounds.max_batch_size,
                                sequence_length=spec.bounds.max_length)
        peak = estimate(shape, largest).peak_bytes
        assert peak <= budget, f"{name} {adapter}: {peak / GIB:.1f} GiB > {gpu}"
        # and the bound is not far below what fits: one more sequence per batch would not fit
        assert estimate(shape, largest.model_copy(update={"batch_size": largest.batch_size + 1})).peak_bytes > budget \
            or adapter != spec.defaults.adapter.type, f"{name}: maxBatchSize could be larger"
