"""Admission: can vLLM serve this adapter on this deployment? One function, used on both sides. Pure.

The operator runs ``admission_problems`` on what a FineTuneJob published (``AdapterFacts.from_finetunejob``)
before any pod sees the adapter: a rejected adapter never enters the desired set. The sidecar runs
the same function on the manifest.json it downloaded (``AdapterFacts.from_manifest``; the only check
for an adapter given by URI, which the operator cannot read), so both say the same words. The
sidecar then also checks the verified adapter_config.json (``adapter_config_problems``): the ground
truth of what vLLM would load, which only it has.

Every message names the value found, the value expected and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .finetunejob import Adapter, AdapterType, PublishedAdapter
from .manifest import AdapterManifest
from .modeldeployment import ModelDeploymentSpec

SERVABLE_TYPES: tuple[AdapterType, ...] = ("lora", "qlora")
# Modules whose LoRA changes the vocabulary's embedding or output head: vLLM serves neither.
VOCAB_MODULES = ("lm_head", "embed_tokens", "wte", "embed_out")
# PEFT features that change what the adapter computes and that vLLM does not implement (its
# vllm/lora/peft_helper.py refuses them too, but only as an HTTP 500 at load time).
UNSUPPORTED_PEFT_FLAGS = {
    "use_dora": "DoRA (use_dora)",
    "lora_bias": "LoRA bias (lora_bias)",
    "use_qalora": "QALoRA (use_qalora)",
    "alora_invocation_tokens": "Activated LoRA (alora_invocation_tokens)",
    "layer_replication": "layer_replication",
}


class AdmissionError(Exception):
    """vLLM can never serve this adapter as is: the adapter is Rejected; the message says why and what to do."""


@dataclass(frozen=True)
class ServingTarget:
    """What a deployment serves adapters on: from the ModelDeployment spec (operator) or the sidecar's
    flags, which the operator sets from that same spec."""

    max_lora_rank: int
    base_model_uri: str | None = None  # None: not checked
    base_model_revision: str | None = None

    @classmethod
    def of(cls, spec: ModelDeploymentSpec) -> ServingTarget:
        return cls(spec.vllm.max_lora_rank, spec.base_model.uri, spec.base_model.revision)


@dataclass(frozen=True)
class AdapterFacts:
    """What admission looks at, as published in manifest.json."""

    type: str
    rank: int | None = None
    target_modules: tuple[str, ...] = ()
    modules_to_save: tuple[str, ...] = ()
    added_tokens: int = 0
    base_model_uri: str | None = None
    base_model_revision: str | None = None

    @classmethod
    def from_manifest(cls, manifest: AdapterManifest) -> AdapterFacts:
        adapter = manifest.adapter
        return cls(type=adapter.type, rank=adapter.rank, target_modules=tuple(adapter.target_modules or ()),
                   modules_to_save=tuple(adapter.modules_to_save or ()), added_tokens=adapter.added_tokens,
                   base_model_uri=manifest.base_model.uri, base_model_revision=manifest.base_model.revision)

    @classmethod
    def from_finetunejob(cls, spec: Mapping[str, Any], published: PublishedAdapter) -> AdapterFacts:
        """From a FineTuneJob that succeeded: what it published (status.adapter, as the trainer reported it)
        and the spec it trained with, which is what the trainer wrote into manifest.json. Raises
        pydantic.ValidationError for a spec.adapter that is not one."""
        trained = Adapter.model_validate(spec.get("adapter") or {})  # the spec's defaults, as the trainer applied them
        base = spec.get("baseModel") or {}
        kind = published.type or trained.type
        lora = kind != "full"
        return cls(type=kind, rank=(published.rank or trained.rank) if lora else None,
                   target_modules=tuple(trained.target_modules) if lora else (),
                   base_model_uri=base.get("uri"), base_model_revision=base.get("revision"))


def _at(uri: str | None, revision: str | None) -> str:
    return f"{uri}@{revision}" if revision else str(uri)


def admission_problems(facts: AdapterFacts, target: ServingTarget) -> list[str]:
    """Why vLLM cannot serve the adapter on ``target``; empty when it can."""
    problems = []
    if facts.type == "full":
        problems.append("adapter type is 'full' (a fully fine-tuned model), but vLLM serves only LoRA adapters "
                        f"({', '.join(SERVABLE_TYPES)}): serve it as spec.baseModel of its own ModelDeployment instead")
    elif facts.type == "dora":
        problems.append("adapter type is 'dora', but vLLM cannot serve DoRA adapters (only "
                        f"{', '.join(SERVABLE_TYPES)}): set the FineTuneJob's spec.output.mergedModel: true and serve "
                        "the merged model it publishes as spec.baseModel of a ModelDeployment")
    elif facts.type not in SERVABLE_TYPES:
        problems.append(f"adapter type is {facts.type!r}, but vLLM serves only {', '.join(SERVABLE_TYPES)} adapters")
    if facts.rank is not None and facts.rank > target.max_lora_rank:
        problems.append(f"LoRA rank {facts.rank} exceeds spec.vllm.maxLoraRank {target.max_lora_rank}: raise "
                        f"vllm.maxLoraRank to at least {facts.rank}")
    vocab = sorted(m for m in facts.target_modules if m.rsplit(".", 1)[-1] in VOCAB_MODULES)
    if vocab:
        problems.append(f"adapter targets {vocab} (embedding/lm_head LoRA), which vLLM does not serve: train on the "
                        "attention/MLP projections only")
    if facts.modules_to_save:
        problems.append(f"adapter fully trains modules_to_save={list(facts.modules_to_save)}, but vLLM serves only "
                        "LoRA weights (modules_to_save must be empty)")
    if facts.added_tokens:
        problems.append(f"adapter adds {facts.added_tokens} tokens to the base tokenizer, but vLLM serves adapters "
                        "only with the base model's vocabulary (0 added tokens)")
    if target.base_model_uri is not None and facts.base_model_uri != target.base_model_uri or (
            target.base_model_revision is not None and facts.base_model_revision is not None
            and facts.base_model_revision != target.base_model_revision):
        problems.append(f"adapter was trained on {_at(facts.base_model_uri, facts.base_model_revision)}, but this "
                        f"deployment serves {_at(target.base_model_uri, target.base_model_revision)} (spec.baseModel): "
                        "a LoRA adapter only works on the base model it was trained on")
    return problems


def admit(facts: AdapterFacts, target: ServingTarget) -> None:
    """Raise AdmissionError naming every problem."""
    if problems := admission_problems(facts, target):
        raise AdmissionError("; ".join(problems))


def adapter_config_problems(config: Mapping[str, Any], *, max_lora_rank: int) -> list[str]:
    """Checks on the verified adapter_config.json (PEFT), the ground truth of what vLLM would load (sidecar only:
    the operator never reads object storage)."""
    problems = []
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        problems.append(f"adapter_config.json peft_type is {config.get('peft_type')!r}, but vLLM serves only 'LORA'")
    ranks = [("r", config.get("r"))] + [(f"rank_pattern[{k!r}]", v) for k, v in (config.get("rank_pattern") or {}).items()]
    for field, rank in ranks:
        if isinstance(rank, int) and rank > max_lora_rank:
            problems.append(f"adapter_config.json {field}={rank} exceeds spec.vllm.maxLoraRank {max_lora_rank}")
    to_save = config.get("modules_to_save") or []
    if to_save:
        problems.append(f"adapter_config.json modules_to_save={list(to_save)}, but vLLM serves only LoRA weights "
                        "(modules_to_save must be empty)")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    vocab = sorted(m for m in targets if str(m).rsplit(".", 1)[-1] in VOCAB_MODULES)
    if vocab:
        problems.append(f"adapter_config.json target_modules include {vocab} (embedding/lm_head LoRA), which "
                        "vLLM does not serve: train on the attention/MLP projections only")
    for flag, what in UNSUPPORTED_PEFT_FLAGS.items():
        if config.get(flag):
            problems.append(f"adapter_config.json sets {flag}={config[flag]!r}: vLLM does not support {what}")
    return problems


def admit_adapter_config(config: Mapping[str, Any], *, max_lora_rank: int) -> None:
    if problems := adapter_config_problems(config, max_lora_rank=max_lora_rank):
        raise AdmissionError("; ".join(problems))
