"""FineTuneTemplates (api/template.py, plan/template.py): which template a job gets, what it makes of the job's spec,
and that the result is kept once resolved. Pure functions: no API server."""

from __future__ import annotations

import copy

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.template import FineTuneTemplateSpec
from kubetune.api.validation import SpecError, parse
from kubetune.config import OperatorSettings
from kubetune.plan.finetunejob import plan
from kubetune.plan.template import apply_template, choose_template, needs_templates, source_hash

QWEN_7B = "hf://Qwen/Qwen2.5-7B-Instruct"
SETTINGS = OperatorSettings(trainer_image="registry.example/trainer:1", default_output_uri="s3://out", preflight_enabled=False)


def template(name: str = "qwen-7b", uri: str = QWEN_7B, **spec: object) -> dict:
    body = {"baseModel": {"uri": uri, "revision": "a" * 40}, "methods": ["sft", "dpo"], "adapterTypes": ["lora", "qlora"],
            "defaults": {"adapter": {"type": "qlora", "rank": 16},
                         "hyperparameters": {"maxLength": 1024, "learningRate": "1e-4", "epochs": 2},
                         "resources": {"gpus": 1, "memory": "48Gi", "gpuMemory": "22Gi"},
                         "scheduling": {"queueName": "l4-queue", "priorityClassName": "batch-low",
                                        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}},
                         "image": "registry.example/trainer:qlora"},
            "fixed": ["scheduling", "resources.gpus", "image"],
            "bounds": {"maxRank": 32, "maxEpochs": 5, "maxLength": 2048, "minLearningRate": "1e-5", "maxLearningRate": "3e-4"},
            "serving": {"name": "qwen-7b"}}
    body.update(spec)
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneTemplate",
            "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "7", "generation": 1}, "spec": body}


def job(**spec: object) -> FineTuneJobSpec:
    return parse(FineTuneJobSpec, {"baseModel": {"uri": QWEN_7B}, "dataset": {"train": "s3://data/chat.jsonl"}, **spec})


def refused(spec: FineTuneJobSpec, tmpl: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        apply_template(spec, tmpl)
    return info.value.problems


def test_defaults_fill_what_the_job_leaves_unset_and_the_job_keeps_what_it_sets():
    out = apply_template(job(adapter={"rank": 8}, hyperparameters={"epochs": 4}), template())
    assert (out.adapter.type, out.adapter.rank, out.hyperparameters.epochs) == ("qlora", 8, 4)  # the job's rank, epochs
    assert (out.hyperparameters.max_length, out.hyperparameters.learning_rate) == (1024, "1e-4")  # the template's
    assert (out.scheduling.queue_name, out.scheduling.priority_class_name) == ("l4-queue", "batch-low")
    assert out.scheduling.node_selector == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert (out.resources.memory, out.resources.gpu_memory, out.image) == ("48Gi", "22Gi", "registry.example/trainer:qlora")
    assert (out.base_model.revision, out.template) == ("a" * 40, "qwen-7b")
    assert out.dataset.train == "s3://data/chat.jsonl" and out.hyperparameters.seed == 42  # untouched: built-in default


def test_a_value_equal_to_the_builtin_default_counts_as_unset():
    """The API server writes the CRD's defaults into the stored job: maxLength 2048 and rank 16 may not be the user's."""
    out = apply_template(job(hyperparameters={"maxLength": 2048, "learningRate": "2e-4"}, adapter={"rank": 16}), template())
    assert (out.hyperparameters.max_length, out.hyperparameters.learning_rate) == (1024, "2e-4")


def test_fixed_fields_cannot_be_overridden():
    problems = refused(job(scheduling={"queueName": "fast-lane"}, image="evil/trainer:1", resources={"gpus": 4}), template())
    assert problems == ["spec.image: fixed to registry.example/trainer:qlora by FineTuneTemplate qwen-7b",
                        "spec.resources.gpus: fixed to 1 by FineTuneTemplate qwen-7b",
                        "spec.scheduling.queueName: fixed to l4-queue by FineTuneTemplate qwen-7b"]
    problems = refused(job(scheduling={"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}), template())
    assert problems == ['spec.scheduling.nodeSelector: fixed to {"nvidia.com/gpu.product": "NVIDIA-L4"} by FineTuneTemplate qwen-7b']
    # The same value is fine; a field of a fixed object the template does not give stays the job's.
    out = apply_template(job(scheduling={"queueName": "l4-queue"}, resources={"gpus": 1, "cpu": 8, "memory": "64Gi"}), template())
    assert (out.resources.cpu, out.resources.memory) == (8, "64Gi")  # memory is a default, not fixed
    assert refused(job(baseModel={"uri": QWEN_7B, "revision": "main"}), template()) == [
        f"spec.baseModel.revision: fixed to {'a' * 40} by FineTuneTemplate qwen-7b"]


def test_bounds_are_checked_with_the_bound_in_the_message():
    assert refused(job(adapter={"rank": 64}), template()) == ["spec.adapter.rank: 64 exceeds the maximum 32 of FineTuneTemplate qwen-7b"]
    problems = refused(job(hyperparameters={"epochs": 9, "maxLength": 4096, "learningRate": "5e-6"}), template())
    assert problems == ["spec.hyperparameters.epochs: 9 exceeds the maximum 5 of FineTuneTemplate qwen-7b",
                        "spec.hyperparameters.maxLength: 4096 exceeds the maximum 2048 of FineTuneTemplate qwen-7b",
                        "spec.hyperparameters.learningRate: 5e-6 is below the minimum 1e-5 of FineTuneTemplate qwen-7b"]
    assert apply_template(job(adapter={"rank": 32}), template()).adapter.rank == 32  # the bound itself is allowed
    # An automatic learning rate is checked too (DPO with LoRA defaults to 5e-5).
    tmpl = template(defaults={}, fixed=None, bounds={"minLearningRate": "1e-4"})
    problems = refused(job(method={"type": "dpo"}, dataset={"train": "s3://d/p.jsonl"}), tmpl)
    assert problems == ["spec.hyperparameters.learningRate: 5e-5 (the automatic rate of dpo with lora; set it) is below "
                        "the minimum 1e-4 of FineTuneTemplate qwen-7b"]


def test_methods_adapter_types_and_base_model_are_checked():
    problems = refused(job(method={"type": "kto"}, adapter={"type": "full"}), template())
    assert problems == ["spec.method.type: kto is not allowed by FineTuneTemplate qwen-7b (allowed: sft, dpo)",
                        "spec.adapter.type: full is not allowed by FineTuneTemplate qwen-7b (allowed: lora, qlora)"]
    assert refused(job(baseModel={"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}), template()) == [
        f"spec.baseModel.uri: FineTuneTemplate qwen-7b is for {QWEN_7B}, not hf://Qwen/Qwen2.5-0.5B-Instruct"]


def test_method_options_apply_only_to_their_method():
    tmpl = template(defaults={"method": {"type": "dpo", "dpo": {"beta": "0.2"}}, "adapter": {"rank": 16}}, fixed=None)
    assert apply_template(job(dataset={"train": "s3://d/p.jsonl"}), tmpl).method.dpo.beta == "0.2"
    sft = apply_template(job(method={"type": "sft"}), tmpl)  # sft = the built-in default: counts as unset
    assert sft.method.type == "dpo"
    tmpl["spec"]["methods"] = ["sft", "dpo", "orpo"]
    orpo = apply_template(job(method={"type": "orpo"}), tmpl)
    assert (orpo.method.type, orpo.method.dpo) == ("orpo", None)


def test_choice_by_name_or_by_base_model_and_ambiguity():
    small = template("qwen-small", "hf://Qwen/Qwen2.5-0.5B-Instruct")
    lora, qlora = template("qwen-7b-lora"), template("qwen-7b-qlora")
    assert choose_template(job(), [small, lora])["metadata"]["name"] == "qwen-7b-lora"
    assert choose_template(job(baseModel={"uri": "hf://meta-llama/Llama-3.1-8B"}), [small, lora]) is None
    with pytest.raises(SpecError) as info:
        choose_template(job(), [qlora, small, lora])
    assert info.value.problems == [f"spec.template: required: the FineTuneTemplates qwen-7b-lora, qwen-7b-qlora all apply "
                                   f"to {QWEN_7B}; name one"]
    assert choose_template(job(template="qwen-7b-qlora"), [qlora])["metadata"]["name"] == "qwen-7b-qlora"
    with pytest.raises(SpecError, match="spec.template: no FineTuneTemplate named 'qwen-9b'"):
        choose_template(job(template="qwen-9b"), [])


def test_an_inconsistent_template_is_refused_naming_the_template():
    bad = template(fixed=["adapter.alpha"], bounds={"maxRank": 8})
    problems = refused(job(), bad)
    assert problems == ["FineTuneTemplate qwen-7b is invalid: spec: fixed: 'adapter.alpha' is not set in defaults; "
                        "bounds.maxRank: the default adapter.rank 16 is out of bounds (8): set defaults.adapter.rank"]
    with pytest.raises(ValueError, match="the default adapter.type lora is not allowed"):
        FineTuneTemplateSpec.model_validate({"baseModel": {"uri": QWEN_7B}, "adapterTypes": ["qlora"]})


def test_the_effective_spec_is_resolved_once_and_kept():
    body = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bot", "namespace": "team-a"},
            "spec": {"baseModel": {"uri": QWEN_7B}, "dataset": {"train": "s3://data/chat.jsonl"}, "adapter": {"rank": 8}}}
    assert needs_templates(body["spec"], {}, job_exists=False, ended=False)
    first = plan(body, SETTINGS, None, {}, templates=[template()])
    assert first.resolved.adapter.type == "qlora" and first.template.serving.namespace == "team-a"  # same namespace
    assert (first.template.name, first.template.resource_version) == ("qwen-7b", "7")
    status = {"effectiveSpec": first.resolved.to_dict(), "specHash": first.source_hash, "template": first.template.to_dict()}
    assert first.source_hash == source_hash(body["spec"])
    # The template is edited: a later pass reads no template and keeps what was resolved.
    assert not needs_templates(body["spec"], status, job_exists=False, ended=False)
    edited = template()
    edited["spec"]["defaults"]["adapter"]["type"] = "lora"
    again = plan(body, SETTINGS, None, status, templates=None)
    assert again.resolved == first.resolved and again.template == first.template
    # suspend and cancel stay the job's own; another spec before the training Job exists resolves again.
    suspended = plan({**body, "spec": {**body["spec"], "suspend": True}}, SETTINGS, None, status)
    assert suspended.resolved.suspend and suspended.resolved.adapter.type == "qlora"
    changed = copy.deepcopy(body)
    changed["spec"]["adapter"]["rank"] = 4
    assert needs_templates(changed["spec"], status, job_exists=False, ended=False)
    assert plan(changed, SETTINGS, None, status, templates=[edited]).resolved.adapter.type == "lora"
    # Once the training Job exists, the kept spec runs and the change is reported as ignored.
    live = {"metadata": {"name": "bot-train", "annotations": {}}}
    kept = plan(changed, SETTINGS, live, status)
    assert kept.resolved.adapter.rank == 8 and kept.spec_change_ignored


def test_a_modeldeployment_admits_the_adapter_by_the_spec_that_ran():
    """Admission reads the job's effective spec: the base model revision the template pinned (the job's own spec
    names none, which admission would accept on any revision)."""
    from kubetune.api.modeldeployment import ModelDeploymentSpec
    from kubetune.plan.modeldeployment import resolve_adapters

    md = parse(ModelDeploymentSpec, {"baseModel": {"uri": QWEN_7B, "revision": "b" * 40},
                                     "adapters": [{"name": "bot", "fineTuneJobRef": {"name": "bot"}}]})
    ftj = {"metadata": {"name": "bot", "namespace": "ml", "uid": "u"}, "spec": job().to_dict(),
           "status": {"conditions": [{"type": "Succeeded", "status": "True"}],
                      "effectiveSpec": apply_template(job(), template()).to_dict(),
                      "adapter": {"uri": "s3://out/ml/bot", "manifestSha256": "e" * 64, "type": "qlora", "rank": 16}}}
    [resolved] = resolve_adapters(md, "ml", {"bot": ftj})
    assert resolved.state == "Rejected" and "a" * 40 in resolved.message, resolved
    del ftj["status"]["effectiveSpec"]
    assert resolve_adapters(md, "ml", {"bot": ftj})[0].state == "Loading"
