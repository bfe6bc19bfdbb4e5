"""A LLaMA-Factory training config (the YAML of `llamafactory-cli train`) -> a FineTuneJob manifest.

`convert(config, dataset_info, ...)` is pure: dicts in, (manifest, notes) out. Every top-level key ends up either
in the manifest (the tables and functions below say how) or in a note with the reason it is not (the
llamafactory_keys tables, or UNKNOWN_REASON). Where LLaMA-Factory's default differs from kubetune's and changes
the training (LoRA rank 8 and dropout 0, the learning rate, a linear schedule without warmup, no packing), the
LLaMA-Factory value is written so that the run trains as it did there, and a DEFAULT note says so. The result is
parsed as a FineTuneJobSpec: a field kubetune refuses (e.g. lora_rank 512) is taken out again and noted with
kubetune's message, so the manifest always passes `kubetune validate`. docs/migrate-llamafactory.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..api.common import DNS_SUBDOMAIN, MODEL_URI
from ..api.finetunejob import FineTuneJobSpec
from ..api.methods import default_learning_rate
from ..api.validation import SpecError, parse
from .build import REDACTED, Build, ImportProblem, Note, Skip, names, show, to_bool, to_decimal, to_int, to_str
from .llamafactory_data import map_datasets
from .llamafactory_keys import (
    DEFAULT,
    NOT_CARRIED,
    OPERATOR,
    SECRET_KEYS,
    SECRET_REASON,
    UNKNOWN_REASON,
    UNMAPPED,
)

STAGES = {"sft": "sft", "pt": "cpt", "dpo": "dpo", "kto": "kto"}  # LLaMA-Factory stage -> method.type
DPO_LOSSES = {"sigmoid", "ipo", "hinge"}  # pref_loss values that are method.dpo.lossType values
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
HUB_ID = re.compile(r"[A-Za-z0-9][-._A-Za-z0-9]*(/[A-Za-z0-9][-._A-Za-z0-9]*)?")
SPEC_ORDER = ("baseModel", "dataset", "method", "adapter", "hyperparameters", "checkpointing")  # as in examples/
SECRET_LIKE = re.compile(r"token|secret|passw|api_?key|credential", re.I)  # unknown keys whose value is never shown
_REQUIRED = ("baseModel.uri", "dataset.train")  # a refused value here cannot be noted away


@dataclass(frozen=True)
class Result:
    manifest: dict[str, Any]
    notes: list[Note]
    carried: dict[str, list[str]]  # LLaMA-Factory key -> the spec fields it went into

    def of_kind(self, kind: str) -> list[Note]:
        return [n for n in self.notes if n.kind == kind]


def _scheduler(value: Any) -> str:
    if value in SCHEDULERS:
        return value
    raise Skip(f"kubetune schedules with {', '.join(SCHEDULERS)} (hyperparameters.lrScheduler): the manifest "
               "keeps kubetune's default, cosine")


def _epochs(value: Any) -> int:
    try:
        return to_int(value)
    except Skip:
        raise Skip("kubetune counts whole epochs: set hyperparameters.maxSteps to the steps of this many epochs "
                   "(until then kubetune's default, 3 epochs, applies)") from None


def _max_steps(value: Any) -> int:
    steps = to_int(value)
    if steps <= 0:
        raise Skip("no step limit: kubetune's default too")
    return steps


def _targets(value: Any) -> list[str]:
    modules = names(value)
    if not modules:
        raise Skip("names no module")
    return ["all-linear"] if "all" in modules else modules


# LLaMA-Factory key -> (spec field, converter). The keys mapped by code are in _model, _method and _adapter.
SIMPLE: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "model_revision": ("baseModel.revision", to_str),
    "learning_rate": ("hyperparameters.learningRate", to_decimal),
    "num_train_epochs": ("hyperparameters.epochs", _epochs),
    "max_steps": ("hyperparameters.maxSteps", _max_steps),
    "per_device_train_batch_size": ("hyperparameters.batchSize", to_int),
    "gradient_accumulation_steps": ("hyperparameters.gradientAccumulationSteps", to_int),
    "lr_scheduler_type": ("hyperparameters.lrScheduler", _scheduler),
    "warmup_ratio": ("hyperparameters.warmupRatio", to_decimal),
    "cutoff_len": ("hyperparameters.maxLength", to_int),
    "packing": ("hyperparameters.packing", to_bool),
    "seed": ("hyperparameters.seed", to_int),
    "save_steps": ("checkpointing.intervalSteps", to_int),
    "save_total_limit": ("checkpointing.keep", to_int),
}

LORA: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "lora_rank": ("adapter.rank", to_int),
    "lora_alpha": ("adapter.alpha", to_int),
    "lora_dropout": ("adapter.dropout", to_decimal),
    "lora_target": ("adapter.targetModules", _targets),
}

# LLaMA-Factory defaults (its hparams and transformers' TrainingArguments) written when the key is absent and
# kubetune's own default differs: key -> (LLaMA-Factory value, kubetune's default for (method, adapter) or None
# when the key does not apply).
DEFAULTS: dict[str, tuple[Any, Callable[[str, str], Any]]] = {
    "lora_rank": (8, lambda m, a: 16 if a != "full" else None),
    "lora_dropout": (0, lambda m, a: "0.05" if a != "full" else None),
    "learning_rate": (5e-5, lambda m, a: default_learning_rate(m, a)),
    "per_device_train_batch_size": (8, lambda m, a: 4 if a == "full" else 8),
    "lr_scheduler_type": ("linear", lambda m, a: "cosine"),
    "warmup_ratio": (0, lambda m, a: "0.03"),
    "packing": (False, lambda m, a: True if m == "sft" else None),  # LLaMA-Factory packs only stage pt
}


def convert(config: dict[str, Any], dataset_info: dict[str, Any] | None = None, *, name: str,
            data_uri_prefix: str | None = None, model_uri: str | None = None,
            is_local_path: Callable[[str], bool] = lambda path: False) -> Result:
    """The FineTuneJob for a LLaMA-Factory training config. ImportProblem when it cannot be one (an unknown
    stage, a local model without model_uri, a dataset that cannot be found, ...)."""
    if not isinstance(config, dict):
        raise ImportProblem([f"the config must be a mapping of LLaMA-Factory keys, got {show(config)}"])
    if not re.match(DNS_SUBDOMAIN, name) or len(name) > 63:
        raise ImportProblem([f"name {name!r} is not a valid FineTuneJob name (lowercase letters, digits, '-')"])
    b = Build(config)
    _model(b, model_uri, is_local_path)
    method = _method(b)
    adapter = _adapter(b)
    map_datasets(b, dataset_info, method, data_uri_prefix)
    steps = config.get("max_steps")
    if isinstance(steps, int) and not isinstance(steps, bool) and steps <= 0:
        b.note("max_steps", steps, "no step limit (the epochs decide): kubetune's default too", OPERATOR)
    for key, (path, convert_) in SIMPLE.items():
        if key in config and key not in b.used:
            b.take(key, path, convert_)
    _defaults(b, method, adapter)
    _leftovers(b)
    _until_valid(b)
    spec = {k: b.spec[k] for k in SPEC_ORDER if k in b.spec} | b.spec
    manifest = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}
    return Result(manifest, b.notes, b.carried)


def _model(b: Build, model_uri: str | None, is_local_path: Callable[[str], bool]) -> None:
    value = b.config.get("model_name_or_path")
    if model_uri:
        if not re.match(MODEL_URI, model_uri):
            raise ImportProblem([f"--model-uri {model_uri!r} is not a model URI (hf://org/name, s3://bucket/prefix, "
                                 "pvc://claim/path)"])
        b.put("baseModel.uri", model_uri, "model_name_or_path")
    elif value is None:
        raise ImportProblem(["model_name_or_path: missing: kubetune needs the base model"])
    elif not isinstance(value, str) or not HUB_ID.fullmatch(value) or is_local_path(value):
        raise ImportProblem([f"model_name_or_path: {show(value)} is a local path, not a Hugging Face Hub id: upload "
                             "the model and pass --model-uri s3://bucket/prefix (or pvc://claim/path)"])
    else:
        b.put("baseModel.uri", f"hf://{value}", "model_name_or_path")
    if "model_revision" in b.config and not b.spec["baseModel"]["uri"].startswith("hf://"):
        b.note("model_revision", b.config["model_revision"], "a revision only applies to a Hugging Face Hub model")
    trust = b.config.get("trust_remote_code")
    if trust is True:
        b.note("trust_remote_code", trust, "not carried over: kubetune runs Python code from the model repository "
               "only when the manifest opts in. LLaMA-Factory's examples set it for every model; Llama, Qwen, Mistral "
               "and Gemma do not need it. Set baseModel.trustRemoteCode: true yourself if this model does")
    elif "trust_remote_code" in b.config:
        b.note("trust_remote_code", trust, "kubetune's default too (baseModel.trustRemoteCode: false)", OPERATOR)


def _method(b: Build) -> str:
    stage = b.config.get("stage", "sft")
    if stage not in STAGES:
        raise ImportProblem([f"stage: {show(stage)} has no kubetune method: kubetune trains sft, pt (as cpt), dpo "
                             "(and orpo: stage dpo with pref_loss orpo) and kto"])
    method = STAGES[stage]
    loss = b.config.get("pref_loss")
    if method == "dpo" and loss == "orpo":
        method = "orpo"
    elif method == "dpo" and loss is not None and loss not in DPO_LOSSES:
        raise ImportProblem([f"pref_loss: {show(loss)} has no kubetune equivalent: method dpo takes "
                             f"{', '.join(sorted(DPO_LOSSES))}; orpo is method orpo"])
    b.put("method.type", method, "stage", *(["pref_loss"] if method == "orpo" else []))
    if b.config.get("do_train", True) is not True:
        raise ImportProblem(["do_train: false: a FineTuneJob always trains (this config only evaluates or predicts)"])
    if "do_train" in b.config:
        b.note("do_train", True, "a FineTuneJob always trains", OPERATOR)
    options = {"pref_beta": "beta"} if method in ("dpo", "orpo", "kto") else {}
    if method == "dpo":
        options["pref_loss"] = "lossType"
    elif method == "kto":
        options |= {"kto_chosen_weight": "desirableWeight", "kto_rejected_weight": "undesirableWeight"}
    for key, field in options.items():
        if key in b.config:
            b.take(key, f"method.{method}.{field}", to_str if field == "lossType" else to_decimal)
    for key in ("pref_beta", "pref_loss", "kto_chosen_weight", "kto_rejected_weight"):
        if key in b.config and key not in b.used:
            b.note(key, b.config[key], f"no effect with stage {stage}: a preference option")
    return method


def _adapter(b: Build) -> str:
    kind = b.config.get("finetuning_type", "lora")
    bits = b.config.get("quantization_bit")
    if kind == "full":
        if bits is not None:
            raise ImportProblem(["quantization_bit: a quantized model trains only with finetuning_type lora "
                                 "(LLaMA-Factory refuses it too)"])
        b.put("adapter.type", "full", "finetuning_type")
        for key in [k for k in b.config if k.startswith("lora_") or k == "use_dora"]:
            b.note(key, b.config[key], "only with finetuning_type lora: this config trains every weight")
        return "full"
    if kind != "lora":
        raise ImportProblem([f"finetuning_type: {show(kind)} has no kubetune equivalent: kubetune trains lora "
                             "(also qlora and dora) or full"])
    adapter = "dora" if b.config.get("use_dora") is True else "lora"
    origin = "use_dora" if adapter == "dora" else "finetuning_type"
    quant = {k: b.config[k] for k in ("quantization_method", "quantization_type", "double_quantization") if k in b.config}
    if bits is not None:
        nf4 = (bits == 4 and quant.get("quantization_method", "bnb") == "bnb"
               and quant.get("quantization_type", "nf4") == "nf4" and quant.get("double_quantization", True) is True)
        if nf4 and adapter == "lora":
            adapter, origin = "qlora", "quantization_bit"  # with quant: kubetune's QLoRA is bitsandbytes NF4,
            # double-quantized, exactly what LLaMA-Factory's defaults for these keys describe
        else:
            why = ("DoRA trains on an unquantized model in kubetune" if adapter == "dora" else
                   "kubetune quantizes only for QLoRA: 4-bit NF4 with double quantization (bitsandbytes)")
            for key, value in {"quantization_bit": bits, **quant}.items():
                b.note(key, value, f"{why}: the manifest trains {adapter} on the unquantized model (more GPU memory)")
    else:
        for key, value in quant.items():
            b.note(key, value, "no effect without quantization_bit")
    folded = [k for k in ("finetuning_type", "use_dora", *(quant if adapter == "qlora" else ()))
              if k in b.config and k != origin]
    b.put("adapter.type", adapter, origin, *folded)
    for key, (path, convert_) in LORA.items():
        if key in b.config:
            b.take(key, path, convert_)
    return adapter


def _defaults(b: Build, method: str, adapter: str) -> None:
    for key, (lf_value, kubetune_default) in DEFAULTS.items():
        ours = kubetune_default(method, adapter)
        if key in b.config or ours is None:
            continue
        path, convert_ = {**SIMPLE, **LORA}[key]
        value = convert_(lf_value)
        if str(value).lower() == str(ours).lower():
            continue
        b.put(path, value, key)
        b.note(key, lf_value, f"not in the config: LLaMA-Factory's default {show(lf_value)} is written as {path} "
               f"(kubetune's own default is {show(ours)})", DEFAULT)


def _leftovers(b: Build) -> None:
    """Every key neither mapped nor noted yet gets its note: nothing is dropped silently."""
    for key, value in b.config.items():
        if key in b.used:
            continue
        if key in SECRET_KEYS:
            b.note(key, REDACTED, SECRET_REASON)
        elif SECRET_LIKE.search(key):
            b.note(key, REDACTED, "looks like a credential: never copied into a spec nor shown; kubetune takes "
                   "credentials from Secrets (spec.hubTokenSecretRef, storage.credentialsSecretRef)")
        elif key == "report_to":
            none = value in (None, "none", [], ["none"])
            b.note(key, value, "nothing to report to; " + NOT_CARRIED["logging_dir"][1] if none else
                   "no experiment-tracker integration: " + NOT_CARRIED["logging_dir"][1], OPERATOR if none else UNMAPPED)
        elif key == "bf16":
            b.note(key, value, "the trainer trains in bf16 where the GPU supports it, else fp32" if value else
                   "kubetune trains in bf16 where the GPU supports it (this config trained in fp32)",
                   OPERATOR if value else UNMAPPED)
        elif key == "fp16":
            b.note(key, value, "kubetune does not train in fp16: bf16 where the GPU supports it, else fp32" if value
                   else "precision follows the hardware", UNMAPPED if value else OPERATOR)
        elif key in NOT_CARRIED:
            kind, reason = NOT_CARRIED[key]
            b.note(key, value, reason, kind)
        else:
            b.note(key, value, UNKNOWN_REASON)


def _until_valid(b: Build) -> None:
    """Parse the spec as kubetune would; take each refused field out again, noted with kubetune's message."""
    problems: list[str] = []
    for _ in range(len(b.origins) + 1):
        try:
            parse(FineTuneJobSpec, b.spec)
            return
        except SpecError as exc:
            problems = exc.problems
        refused = []
        for problem in problems:
            path, _, message = problem.removeprefix("spec.").partition(": ")
            field = next((p for p in sorted(b.origins, key=len, reverse=True)
                          if path == p or path.startswith((p + ".", p + "["))), None)
            if field is None or field in _REQUIRED:
                raise ImportProblem([f"{b.origins.get(field or '', 'the manifest')}: kubetune refuses {p}"
                                     for p in problems])
            refused.append((field, message))
        for field, message in refused:
            key = b.drop(field)
            b.note(key, b.config.get(key), f"kubetune refuses it as {field}: {message}")
    raise ImportProblem(["the manifest does not validate: " + "; ".join(problems)])
