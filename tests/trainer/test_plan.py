"""spec -> TRL/PEFT configs: whole-object comparisons of the one pure mapping function."""

from __future__ import annotations

import torch
from peft import LoraConfig
from transformers import BitsAndBytesConfig
from trl import DPOConfig, SFTConfig

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune_trainer.plan import Facts, TrainingPlan, plan_training, trl_args

BASE = {"baseModel": {"uri": "hf://org/model"}, "dataset": {"train": "s3://data/train.jsonl"},
        "output": {"uri": "s3://out/adapters"}}


def spec(**extra) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate({**BASE, **extra})


def common(**overrides):
    """The settings every plan shares, at their defaults for a CPU run of 1000 examples."""
    values = dict(
        output_dir="/work/trainer", seed=42, data_seed=42, num_train_epochs=3, max_steps=-1,
        per_device_train_batch_size=8, per_device_eval_batch_size=8, gradient_accumulation_steps=1,
        learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.03, max_length=2048, logging_steps=7,
        logging_first_step=True, save_strategy="steps", save_steps=100, save_total_limit=1, eval_strategy="steps",
        eval_steps=100, include_num_input_tokens_seen="non_padding", report_to="none", disable_tqdm=True,
        use_cpu=True, bf16=False, activation_checkpointing=False, activation_checkpointing_kwargs=None,
        dataloader_pin_memory=False, ddp_timeout=1800,
    )
    values.update(overrides)
    return values


def lora(**overrides) -> LoraConfig:
    values = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", bias="none",
                  task_type="CAUSAL_LM", use_dora=False)
    values.update(overrides)
    return LoraConfig(**values)


CPU = Facts(output_dir="/work/trainer", train_examples=1000, chat=True, assistant_masks=True)
GPU = Facts(output_dir="/work/trainer", train_examples=1000, device="cuda", bf16=True, chat=True, assistant_masks=True)


def test_sft_lora_defaults_on_chat_data():
    plan = plan_training(spec(), CPU)
    assert plan == TrainingPlan(
        method="sft",
        args=common(packing=True, packing_strategy="bfd", eval_packing=True, assistant_only_loss=True,
                    dataset_text_field="text"),
        peft=lora(),
        quantization=None,
        model_kwargs={"dtype": torch.float32, "trust_remote_code": False},
        summary={"learningRate": "2e-4", "batchSize": 8, "gradientAccumulationSteps": 1, "epochs": 3, "maxSteps": None,
                 "lrScheduler": "cosine", "warmupRatio": "0.03", "maxLength": 2048, "seed": 42, "precision": "fp32",
                 "gradientCheckpointing": False, "trainer": "sft", "packing": True, "packingStrategy": "bfd",
                 "assistantOnlyLoss": True,
                 "lora": {"rank": 16, "alpha": 32, "dropout": "0.05", "targetModules": ["all-linear"], "dora": False}},
    )
    # TRL accepts every key, and the object equals one written by hand.
    assert trl_args(plan) == SFTConfig(output_dir="/work/trainer", data_seed=42, num_train_epochs=3, learning_rate=2e-4,
                                       lr_scheduler_type="cosine", warmup_steps=0.03, max_length=2048, logging_steps=7,
                                       logging_first_step=True, per_device_train_batch_size=8,
                                       per_device_eval_batch_size=8, save_steps=100, save_total_limit=1,
                                       eval_strategy="steps", eval_steps=100, include_num_input_tokens_seen="non_padding",
                                       report_to="none", disable_tqdm=True, use_cpu=True, bf16=False,
                                       activation_checkpointing=False, dataloader_pin_memory=False, packing=True,
                                       eval_packing=True, assistant_only_loss=True)


def test_sft_explicit_hyperparameters_text_data_no_packing():
    hp = {"epochs": 1, "maxSteps": 500, "batchSize": 2, "gradientAccumulationSteps": 4, "learningRate": "1e-3",
          "lrScheduler": "linear", "warmupRatio": "0.1", "maxLength": 512, "packing": False, "seed": 7}
    s = spec(hyperparameters=hp, checkpointing={"intervalSteps": 50, "keep": 3},
             adapter={"type": "dora", "rank": 4, "alpha": 4, "dropout": "0", "targetModules": ["q_proj", "v_proj"]},
             baseModel={"uri": "hf://org/model", "trustRemoteCode": True})
    plan = plan_training(s, Facts(output_dir="/w", train_examples=50, chat=False, has_eval=False))
    assert plan.args == common(
        output_dir="/w", seed=7, data_seed=7, num_train_epochs=1, max_steps=500, per_device_train_batch_size=2,
        per_device_eval_batch_size=2, gradient_accumulation_steps=4, learning_rate=1e-3, lr_scheduler_type="linear",
        warmup_steps=0.1, max_length=512, logging_steps=10, save_steps=50, eval_strategy="no", eval_steps=None,
        packing=False, packing_strategy="bfd", eval_packing=False, assistant_only_loss=False, dataset_text_field="text")
    assert isinstance(trl_args(plan), SFTConfig)
    assert plan.peft == lora(r=4, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], use_dora=True)
    assert plan.model_kwargs == {"dtype": torch.float32, "trust_remote_code": True}
    assert (plan.summary["packingStrategy"], plan.summary["lora"]["dora"]) == (None, True)


def test_chat_without_generation_markers_trains_on_everything():
    facts = Facts(output_dir="/work/trainer", train_examples=1000, chat=True, assistant_masks=False)
    assert plan_training(spec(), facts).args["assistant_only_loss"] is False


def test_cpt_full_on_gpu():
    s = spec(method={"type": "cpt"}, adapter={"type": "full"}, dataset={"train": "s3://d/t.jsonl", "format": "text"})
    plan = plan_training(s, GPU)
    assert plan == TrainingPlan(
        method="cpt",
        args=common(per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=2e-5,
                    logging_steps=10, use_cpu=False, bf16=True, activation_checkpointing=True,
                    activation_checkpointing_kwargs={"use_reentrant": False}, dataloader_pin_memory=True,
                    packing=True, packing_strategy="bfd_split", eval_packing=True, assistant_only_loss=False,
                    dataset_text_field="text"),
        peft=None,
        quantization=None,
        model_kwargs={"dtype": torch.bfloat16, "trust_remote_code": False},
        summary=plan.summary,
    )
    assert plan.summary["precision"] == "bf16" and "lora" not in plan.summary


def test_dpo_lora_and_full_defaults():
    s = spec(method={"type": "dpo", "dpo": {"beta": "0.25", "lossType": "ipo"}})
    plan = plan_training(s, CPU)
    assert plan.method == "dpo"
    assert plan.args == common(learning_rate=5e-5, beta=0.25, loss_type=["ipo"], padding_free=False)
    assert trl_args(plan) == DPOConfig(**plan.args)
    assert plan.peft == lora()
    full = plan_training(spec(method={"type": "dpo"}, adapter={"type": "full"}), CPU)
    assert full.args == common(learning_rate=5e-6, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                               logging_steps=10, beta=0.1, loss_type=["sigmoid"], padding_free=False)
    assert full.peft is None


def test_qlora_gpu_and_cpu():
    s = spec(adapter={"type": "qlora", "rank": 8})
    gpu = plan_training(s, GPU)
    expected_bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    assert gpu.quantization.to_dict() == expected_bnb.to_dict()
    assert gpu.model_kwargs.keys() == {"dtype", "trust_remote_code", "quantization_config", "device_map"}
    assert (gpu.model_kwargs["device_map"], gpu.model_kwargs["dtype"]) == ({"": 0}, torch.bfloat16)
    assert gpu.model_kwargs["quantization_config"] is gpu.quantization
    assert gpu.peft == lora(r=8, lora_alpha=16)
    cpu = plan_training(s, CPU)
    assert cpu.quantization.to_dict() == {**expected_bnb.to_dict(), "bnb_4bit_compute_dtype": "float32"}
    assert "device_map" not in cpu.model_kwargs
    assert cpu.summary["quantization"] == "4-bit NF4, double quantization"


def test_logging_steps_scale_with_run_length():
    few = plan_training(spec(hyperparameters={"maxSteps": 30}), CPU)
    many = plan_training(spec(hyperparameters={"maxSteps": 100000}), CPU)
    assert (few.args["logging_steps"], many.args["logging_steps"]) == (1, 10)


def test_orpo_and_kto_defaults_and_options():
    from trl import KTOConfig

    orpo = plan_training(spec(method={"type": "orpo"}), CPU)
    assert orpo.args == common(learning_rate=8e-5, beta=0.1, remove_unused_columns=False,
                               include_num_input_tokens_seen="no")
    assert (orpo.method, orpo.summary["trainer"], orpo.summary["beta"]) == ("orpo", "orpo", "0.1")
    kto = plan_training(spec(method={"type": "kto", "kto": {"beta": "0.2", "desirableWeight": "1.33",
                                                            "lossType": "apo_zero_unpaired"}},
                             adapter={"type": "full"}), CPU)
    assert kto.args == common(learning_rate=5e-6, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                              logging_steps=10, beta=0.2, desirable_weight=1.33, undesirable_weight=1.0,
                              loss_type="apo_zero_unpaired")
    assert trl_args(kto) == KTOConfig(**kto.args)
    assert {k: kto.summary[k] for k in ("trainer", "beta", "desirableWeight", "undesirableWeight", "lossType")} == {
        "trainer": "kto", "beta": "0.2", "desirableWeight": "1.33", "undesirableWeight": "1.0",
        "lossType": "apo_zero_unpaired"}


def test_distributed_timeout_covers_rank_0_generating_for_the_task_evaluation():
    """With spec.evaluation, rank 0 alone generates while the other ranks wait in a barrier (evaluate.py): the
    collective timeout outlasts twice its time budget (base model and result) plus a margin."""
    assert plan_training(spec(), CPU).args["ddp_timeout"] == 1800
    long = spec(evaluation={"timeBudgetSeconds": 3600})
    assert plan_training(long, CPU).args["ddp_timeout"] == 2 * 3600 + 600
    assert plan_training(spec(evaluation={"timeBudgetSeconds": 60}), CPU).args["ddp_timeout"] == 1800
