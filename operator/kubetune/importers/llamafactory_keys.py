"""The LLaMA-Factory keys `kubetune import llamafactory` does not carry into a FineTuneJob, one row each with the
reason. docs/migrate-llamafactory.md shows the same rows (a test keeps the two in step).

OPERATOR: kubetune does this itself; nothing is lost. UNMAPPED: no kubetune equivalent; the manifest trains
without it, so review each one. A key in neither table (nor mapped by llamafactory.py) is listed as unmapped with
UNKNOWN_REASON: nothing is ever dropped silently.
"""

from __future__ import annotations

OPERATOR = "operator"
UNMAPPED = "unmapped"
DEFAULT = "default"  # not in the config: LLaMA-Factory's default written explicitly (kubetune's own differs)

UNKNOWN_REASON = "no kubetune equivalent (not a key this importer knows): not carried over"

_TRACKER = "progress goes to status.progress and events; metrics, the loss curve and training_config.json are published next to the adapter"

NOT_CARRIED: dict[str, tuple[str, str]] = {
    # ------------------------------------------------------------------ output and logging
    "output_dir": (OPERATOR, "the operator publishes to <output.uri>/<namespace>/<name>/ (manifest.json last); "
                   "checkpoints go under it too"),
    "overwrite_output_dir": (OPERATOR, "every FineTuneJob publishes into its own <namespace>/<name>/ folder"),
    "logging_dir": (OPERATOR, _TRACKER),
    "plot_loss": (OPERATOR, "the trainer always publishes a loss-curve PNG next to the adapter"),
    "save_only_model": (OPERATOR, "checkpoints always hold what a resume needs (adapter, optimizer, scheduler)"),
    "save_strategy": (OPERATOR, "checkpoints are saved every checkpointing.intervalSteps steps"),
    "resume_from_checkpoint": (OPERATOR, "the trainer resumes from the newest checkpoint in object storage by itself "
                               "after a restart or a suspend; it cannot start from a LLaMA-Factory checkpoint"),
    "do_eval": (OPERATOR, "kubetune evaluates the base model before and the result after training on the held-out data "
                "(dataset.validation or validationSplit), and at every checkpoint"),
    "overwrite_cache": (OPERATOR, "the trainer tokenizes every run afresh: there is no cache to overwrite"),
    "cache_dir": (OPERATOR, "the trainer downloads the model into its pod's own cache"),
    "dataset_dir": (OPERATOR, "read by the importer to find dataset_info.json; where the files are now is "
                    "--data-uri-prefix"),
    "ddp_timeout": (UNMAPPED, "no setting: the trainer keeps torch.distributed's default timeout; the operator sets "
                    "up multi-GPU and multi-node runs (resources.gpus, resources.nodes)"),
    "logging_steps": (UNMAPPED, "no setting: the trainer reports loss, step and ETA to status.progress every few "
                      "seconds and picks its own logging cadence"),
    "logging_first_step": (UNMAPPED, "no setting: " + _TRACKER),
    "run_name": (UNMAPPED, "no setting: the run is named after the FineTuneJob (metadata.name)"),
    # --------------------------------------------------------------- hardware and speed
    "deepspeed": (UNMAPPED, "kubetune does not use DeepSpeed: the operator runs data-parallel training over "
                  "resources.gpus and resources.nodes; set those to the GPUs this config ran on"),
    "fsdp": (UNMAPPED, "no setting: the operator picks the distribution over resources.gpus and resources.nodes"),
    "fsdp_config": (UNMAPPED, "no setting: the operator picks the distribution over resources.gpus and resources.nodes"),
    "flash_attn": (UNMAPPED, "no setting: the trainer loads the model with transformers' default attention "
                   "implementation"),
    "enable_liger_kernel": (UNMAPPED, "no kernel options: the trainer uses the stock transformers model"),
    "use_unsloth": (UNMAPPED, "no kernel options: the trainer uses the stock transformers model"),
    "use_unsloth_gc": (UNMAPPED, "no kernel options: the trainer uses the stock transformers model"),
    "gradient_checkpointing": (UNMAPPED, "follows the hardware: on for GPUs (recorded in training_config.json)"),
    "disable_gradient_checkpointing": (UNMAPPED, "follows the hardware: on for GPUs (recorded in training_config.json)"),
    "pure_bf16": (UNMAPPED, "no setting: the trainer keeps mixed precision (bf16 where the GPU supports it)"),
    "tf32": (UNMAPPED, "no setting: precision follows the hardware"),
    "preprocessing_num_workers": (UNMAPPED, "no setting: the trainer chooses its own tokenization workers"),
    "dataloader_num_workers": (UNMAPPED, "no setting: the trainer chooses its own data loader workers"),
    "infer_backend": (UNMAPPED, "inference is a ModelDeployment (vLLM), not part of training"),
    "low_cpu_mem_usage": (UNMAPPED, "no setting: the trainer loads weights its own way"),
    "upcast_layernorm": (UNMAPPED, "no setting: precision follows the hardware"),
    "upcast_lmhead_output": (UNMAPPED, "no setting: precision follows the hardware"),
    # ------------------------------------------------------------------ optimiser
    "optim": (UNMAPPED, "no setting: the trainer uses TRL's default optimizer (AdamW)"),
    "weight_decay": (UNMAPPED, "no setting: the trainer uses TRL's default weight decay"),
    "max_grad_norm": (UNMAPPED, "no setting: the trainer clips gradients at TRL's default norm"),
    "adam_beta1": (UNMAPPED, "no setting: the trainer uses TRL's default AdamW betas"),
    "adam_beta2": (UNMAPPED, "no setting: the trainer uses TRL's default AdamW betas"),
    "adam_epsilon": (UNMAPPED, "no setting: the trainer uses TRL's default AdamW epsilon"),
    "warmup_steps": (UNMAPPED, "kubetune takes a ratio: set hyperparameters.warmupRatio to warmup_steps / total steps"),
    "lr_scheduler_kwargs": (UNMAPPED, "no setting: the schedule is one of hyperparameters.lrScheduler's choices"),
    "data_seed": (UNMAPPED, "kubetune has one seed (hyperparameters.seed) for data order and initialisation"),
    "use_badam": (UNMAPPED, "no BAdam: LoRA, QLoRA, DoRA or full fine-tuning (adapter.type)"),
    "use_galore": (UNMAPPED, "no GaLore: LoRA, QLoRA, DoRA or full fine-tuning (adapter.type)"),
    "use_apollo": (UNMAPPED, "no APOLLO: LoRA, QLoRA, DoRA or full fine-tuning (adapter.type)"),
    # ------------------------------------------------------------------------ LoRA extras
    "additional_target": (UNMAPPED, "no setting: list every module to train in adapter.targetModules (embeddings "
                          "and lm_head cannot be served as a LoRA by vLLM)"),
    "use_rslora": (UNMAPPED, "no rank-stabilised LoRA: the adapter scales by alpha / rank"),
    "pissa_init": (UNMAPPED, "no PiSSA initialisation: the adapter starts from PEFT's default (B = 0)"),
    "pissa_iter": (UNMAPPED, "no PiSSA initialisation: the adapter starts from PEFT's default (B = 0)"),
    "pissa_convert": (UNMAPPED, "no PiSSA initialisation: the adapter starts from PEFT's default (B = 0)"),
    "loraplus_lr_ratio": (UNMAPPED, "no LoRA+: both LoRA matrices train at hyperparameters.learningRate"),
    "loraplus_lr_embedding": (UNMAPPED, "no LoRA+: both LoRA matrices train at hyperparameters.learningRate"),
    "lora_bf16_mode": (UNMAPPED, "no setting: adapter weights follow the training precision"),
    "create_new_adapter": (UNMAPPED, "a FineTuneJob always trains a new adapter on the base model"),
    "adapter_name_or_path": (UNMAPPED, "a FineTuneJob trains a new adapter on baseModel: it cannot continue from an "
                             "existing adapter (merge it into the model and use that as baseModel instead)"),
    "freeze_trainable_layers": (UNMAPPED, "only with finetuning_type freeze, which kubetune has not got"),
    "freeze_trainable_modules": (UNMAPPED, "only with finetuning_type freeze, which kubetune has not got"),
    "freeze_extra_modules": (UNMAPPED, "only with finetuning_type freeze, which kubetune has not got"),
    "quantization_device_map": (UNMAPPED, "no setting: the trainer places the quantized model"),
    # ------------------------------------------------------------------ preference extras
    "pref_ftx": (UNMAPPED, "no setting: DPO trains the preference loss only (ORPO, method.type orpo, adds the "
                 "SFT term)"),
    "dpo_label_smoothing": (UNMAPPED, "no setting: DPO's loss is method.dpo.lossType without label smoothing"),
    "simpo_gamma": (UNMAPPED, "only for pref_loss simpo, which kubetune has not got"),
    "pref_bco_weight": (UNMAPPED, "no setting: no BCO term"),
    "ref_model": (UNMAPPED, "the reference model is always the base model"),
    "ref_model_adapters": (UNMAPPED, "the reference model is always the base model"),
    "ref_model_quantization_bit": (UNMAPPED, "the reference model is always the base model"),
    # ------------------------------------------------------------------------ data
    "template": (UNMAPPED, "no template setting: the trainer formats chats with the base model's own chat template "
                 "(its tokenizer_config.json), which for an instruct model is the template it was trained with; a "
                 "model without one trains on text data only"),
    "max_samples": (UNMAPPED, "no setting: kubetune trains on every record: trim the file to train on fewer"),
    "streaming": (UNMAPPED, "no streaming: the trainer downloads and checks every record before training"),
    "buffer_size": (UNMAPPED, "no streaming: the trainer downloads and checks every record before training"),
    "mix_strategy": (UNMAPPED, "kubetune trains on one dataset: nothing to mix"),
    "interleave_probs": (UNMAPPED, "kubetune trains on one dataset: nothing to interleave"),
    "tokenized_path": (UNMAPPED, "no setting: the trainer tokenizes every run from the data files"),
    "neat_packing": (UNMAPPED, "no contamination-free packing: hyperparameters.packing uses TRL's packing"),
    "train_on_prompt": (UNMAPPED, "no setting: chat data trains on the assistant's turns only"),
    "mask_history": (UNMAPPED, "no setting: chat data trains on every assistant turn"),
    "default_system": (UNMAPPED, "no setting: put the system prompt into the records (a system column)"),
    "enable_thinking": (UNMAPPED, "no setting: the chat template of the base model decides"),
    "tool_format": (UNMAPPED, "no setting: the chat template of the base model decides"),
    "eval_dataset_dir": (UNMAPPED, "kubetune reads evaluation data from dataset.validation"),
    "eval_num_beams": (UNMAPPED, "no generation during training: kubetune measures the eval loss"),
    "eval_on_each_dataset": (UNMAPPED, "kubetune evaluates on one held-out set"),
    "per_device_eval_batch_size": (UNMAPPED, "no setting: evaluation batches follow hyperparameters.batchSize"),
    "eval_strategy": (UNMAPPED, "no setting: the eval loss is measured at every checkpoint "
                      "(checkpointing.intervalSteps) and before and after training"),
    "eval_steps": (UNMAPPED, "no setting: the eval loss is measured at every checkpoint "
                   "(checkpointing.intervalSteps) and before and after training"),
    "do_predict": (UNMAPPED, "no prediction run: serve the adapter with a ModelDeployment and query it"),
    "predict_with_generate": (UNMAPPED, "no prediction run: serve the adapter with a ModelDeployment and query it"),
    # ------------------------------------------------------------------------ model
    "rope_scaling": (UNMAPPED, "no setting: the model's own config.json decides"),
    "shift_attn": (UNMAPPED, "no setting: the model's own attention is used"),
    "moe_aux_loss_coef": (UNMAPPED, "no setting: the model's own config.json decides"),
    "use_fast_tokenizer": (UNMAPPED, "no setting: the trainer loads the model's tokenizer as transformers does"),
    "resize_vocab": (UNMAPPED, "no setting: the vocabulary stays the model's"),
    "new_special_tokens": (UNMAPPED, "no setting: the vocabulary stays the model's"),
    "split_special_tokens": (UNMAPPED, "no setting: the tokenizer stays the model's"),
    "image_max_pixels": (UNMAPPED, "kubetune trains text-only models"),
    "freeze_vision_tower": (UNMAPPED, "kubetune trains text-only models"),
    "use_modelscope_hub": (UNMAPPED, "kubetune reads models from the Hugging Face Hub, s3:// or pvc://, not ModelScope"),
    "use_openmind_hub": (UNMAPPED, "kubetune reads models from the Hugging Face Hub, s3:// or pvc://, not Modelers"),
    "export_dir": (UNMAPPED, "export is not training: set output.mergedModel to publish a merged model"),
    "export_size": (UNMAPPED, "export is not training: set output.mergedModel to publish a merged model"),
    "push_to_hub": (UNMAPPED, "the result goes to object storage (output.uri); ModelDeployment serves it from there"),
    "hub_model_id": (UNMAPPED, "the result goes to object storage (output.uri); ModelDeployment serves it from there"),
}

# dataset_info.json entry keys the importer does not carry (the mapped ones: file_name, hf_hub_url, cloud_file_name,
# folder, formatting, ranking, columns, tags).
ENTRY_NOT_CARRIED: dict[str, str] = {
    "subset": "no setting: kubetune reads every data file of the dataset repository (or of its folder): point "
              "dataset.train at the subset's folder, e.g. hf://datasets/org/name/<subset>",
    "split": "no setting: kubetune reads every data file of the URI; keep only that split's files there",
    "num_samples": "no setting: kubetune trains on every record: trim the file to train on fewer",
    "ms_hub_url": "kubetune does not read ModelScope: the hf_hub_url (or the uploaded file) is used",
    "om_hub_url": "kubetune does not read Modelers: the hf_hub_url (or the uploaded file) is used",
    "load_from": "kubetune reads files and the Hugging Face Hub only",
}

# Secrets: never copied, never shown.
SECRET_KEYS = {"hf_hub_token", "ms_hub_token", "om_hub_token"}
SECRET_REASON = ("a token is never copied into a spec: put it in a Secret and set spec.hubTokenSecretRef "
                 "(kubectl create secret generic hf-token --from-literal=token=...)")
