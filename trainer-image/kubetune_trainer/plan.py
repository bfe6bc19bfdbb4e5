"""spec -> TRL/PEFT configs: one pure function, `plan_training`. Every automatic default lives here.

Automatic defaults (docs/trainer.md lists them too):
- learning rate: per method, with an adapter or full (kubetune.api.methods.METHODS)
- batch size: 8 with adapters, 4 for full fine-tuning
- LoRA alpha: 2 x rank; target modules ["all-linear"] -> every linear layer except the output head
- method-specific TRL arguments (packing, assistant-only loss, beta, ...): the method's row in methods.py
- precision: bf16 on GPUs that support it, else fp32; gradient checkpointing on GPU only
- QLoRA: 4-bit NF4 with double quantisation, compute dtype = training precision
- evaluation and checkpoint every checkpointing.intervalSteps; logging every <= 10 steps
- parallelism: FSDP arguments (sharding.fsdp_args) when the run shards (kubetune.api.parallelism.decide)
- hyperparameters.earlyStopping: the best checkpoint by its metric (eval_loss by default) is loaded at the end (early_stopping.py)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.methods import default_learning_rate

from . import early_stopping
from .methods import TRAINERS, load
from .sharding import fsdp_args


@dataclass(frozen=True)
class Facts:
    """What the mapping needs beyond the spec, found by the caller (device, data, template)."""

    output_dir: str
    train_examples: int
    device: Literal["cpu", "cuda"] = "cpu"
    bf16: bool = False
    chat: bool = False  # the records are conversational (messages)
    assistant_masks: bool = False  # the chat template marks assistant turns with {% generation %}
    rendered_chat: bool = False  # records with tools, calls or weights: kubetune_trainer.chat tokenizes and masks them
    has_eval: bool = True
    local_rank: int = 0  # this process's GPU on the pod in a distributed run
    parallelism: str = "single"  # kubetune.api.parallelism.Decision.strategy: single, ddp or fsdp (sharding.py)


@dataclass
class TrainingPlan:
    method: str  # method.type: its row in methods.TRAINERS names the TRL trainer and config
    # keyword arguments of the method's TRL config (trl.SFTConfig, ...): a dict, because those constructors
    # probe the hardware (bf16 on a CPU raises); `trl_args(plan)` builds the object on the machine that trains.
    args: dict[str, Any]
    peft: Any  # peft.LoraConfig | None (full fine-tune)
    quantization: Any  # transformers.BitsAndBytesConfig | None
    model_kwargs: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)  # effective settings, camelCase, for people


def default_batch_size(adapter: str) -> int:
    return 4 if adapter == "full" else 8


def logging_steps(spec: FineTuneJobSpec, train_examples: int) -> int:
    """About 50 log points per run, at most every 10 steps."""
    hp = spec.hyperparameters
    per_step = (hp.batch_size or default_batch_size(spec.adapter.type)) * hp.gradient_accumulation_steps
    steps = hp.max_steps or math.ceil(max(train_examples, 1) / per_step) * hp.epochs
    return max(1, min(10, steps // 50))


def plan_training(spec: FineTuneJobSpec, facts: Facts) -> TrainingPlan:
    """The TRL trainer config, PEFT config, quantization config and model kwargs for a spec."""
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    hp, adapter, method = spec.hyperparameters, spec.adapter, spec.method.type
    gpu = facts.device == "cuda"
    lr = hp.learning_rate or default_learning_rate(method, adapter.type)
    batch = hp.batch_size or default_batch_size(adapter.type)
    interval = spec.checkpointing.interval_steps
    dtype = torch.bfloat16 if facts.bf16 else torch.float32
    common: dict[str, Any] = dict(
        output_dir=facts.output_dir,
        seed=hp.seed,
        data_seed=hp.seed,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps or -1,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=float(Decimal(lr)),
        lr_scheduler_type=hp.lr_scheduler,
        warmup_steps=float(Decimal(hp.warmup_ratio)),
        max_length=hp.max_length,
        logging_steps=logging_steps(spec, facts.train_examples),
        logging_first_step=True,
        save_strategy="steps",
        save_steps=interval,
        save_total_limit=1,  # local copy only: object storage keeps checkpointing.keep
        eval_strategy="steps" if facts.has_eval else "no",
        eval_steps=interval if facts.has_eval else None,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        use_cpu=not gpu,
        bf16=facts.bf16,
        activation_checkpointing=gpu,
        activation_checkpointing_kwargs={"use_reentrant": False} if gpu else None,
        dataloader_pin_memory=gpu,
        # rank 0 alone generates for spec.evaluation (evaluate.py) while the other ranks wait in a barrier
        ddp_timeout=max(1800, 2 * spec.evaluation.time_budget_seconds + 600) if spec.evaluation else 1800,
    )
    summary: dict[str, Any] = {
        "learningRate": lr, "batchSize": batch, "gradientAccumulationSteps": hp.gradient_accumulation_steps,
        "epochs": hp.epochs, "maxSteps": hp.max_steps, "lrScheduler": hp.lr_scheduler,
        "warmupRatio": hp.warmup_ratio, "maxLength": hp.max_length, "seed": hp.seed,
        "precision": "bf16" if facts.bf16 else "fp32", "gradientCheckpointing": gpu,
    }
    if facts.parallelism == "fsdp":
        common |= fsdp_args(gpu)
        summary["gradientCheckpointing"] = gpu  # FSDP's own activation checkpointing (sharding.fsdp_args)
    if facts.parallelism != "single":
        summary["parallelism"] = facts.parallelism
    own, own_summary = TRAINERS[method].args(spec, facts)
    stopping, stopping_summary = early_stopping.trl_args(spec, facts.has_eval)
    args = {**common, **own, **stopping}
    summary |= own_summary | stopping_summary
    peft_config = None
    if adapter.type != "full":
        targets = adapter.target_modules
        peft_config = LoraConfig(
            r=adapter.rank,
            lora_alpha=adapter.alpha or 2 * adapter.rank,
            lora_dropout=float(Decimal(adapter.dropout)),
            target_modules="all-linear" if targets == ["all-linear"] else list(targets),
            bias="none",
            task_type="CAUSAL_LM",
            use_dora=adapter.type == "dora",
        )
        summary["lora"] = {"rank": adapter.rank, "alpha": adapter.alpha or 2 * adapter.rank,
                           "dropout": adapter.dropout, "targetModules": list(targets), "dora": adapter.type == "dora"}
    quantization = None
    model_kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": spec.base_model.trust_remote_code}
    if adapter.type == "qlora":
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        model_kwargs["quantization_config"] = quantization
        if gpu:
            model_kwargs["device_map"] = {"": facts.local_rank}  # one process per GPU: never spread a 4-bit model
        summary["quantization"] = "4-bit NF4, double quantization"
    return TrainingPlan(method=method, args=args, peft=peft_config,
                        quantization=quantization, model_kwargs=model_kwargs, summary=summary)


def trl_args(plan: TrainingPlan):
    """The TRL config object of a plan (validated by TRL against this machine)."""
    return load(TRAINERS[plan.method].config)(**plan.args)
