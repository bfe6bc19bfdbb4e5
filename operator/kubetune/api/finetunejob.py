"""FineTuneJob: base model + dataset + method + hyperparameters + resources -> a published adapter."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from .common import (
    CONDITIONS_FIELD,
    DATA_URI,
    DATA_URI_HELP,
    DNS_SUBDOMAIN,
    FreeForm,
    STORAGE_URI,
    BaseModelSource,
    ComputeResources,
    Condition,
    KubeModel,
    KubeObject,
    ObjectStorage,
    Quantity,
    Scheduling,
    SecretKeyRef,
    _check_uri_path,
    below_one,
    cel,
    check_quantity,
    decimal,
    with_rules,
)
from .template_ref import EFFECTIVE_SPEC_HELP, SPEC_HASH_HELP, AppliedTemplate
from .template_ref import FIELD as TEMPLATE_FIELD
from .early_stopping import MAX_REASON, EarlyStopping, cel_rule, too_few_evaluations
from .evaluation import EvalProgress, EvalSummary, EvaluationSpec
from .parallelism import Parallelism
from .parallelism import problem as parallelism_problem
from .parallelism import validation_rule as parallelism_rule
from .methods import (
    DEFAULT_METHOD,
    FORMATS,
    METHODS,
    checkpoint_metric_problem,
    checkpoint_metric_rules,
    format_problem,
    format_rules,
    learning_rate_help,
    options_problem,
    options_rules,
)
from .tracking import TrackingSpec, TrackingStatus

DatasetFormat = Literal[("auto", *FORMATS)]  # type: ignore[valid-type]
MethodType = Literal[tuple(METHODS)]  # type: ignore[valid-type]
AdapterType = Literal["lora", "qlora", "dora", "full"]
Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]


# dataset.columns and dataset.tags: LLaMA-Factory's dataset_info.json `columns` and `tags`, same names (camelCase on
# the wire), each the name of a field in the data. {name: description}.
DATASET_COLUMNS = {
    "prompt": "The instruction (alpaca: instruction), the prompt (preference/unpaired: prompt), or the document "
              "(text: text).",
    "query": "The input appended to the instruction (alpaca: input).",
    "response": "The answer (alpaca: output; unpaired: completion).",
    "history": "Earlier turns as [[user, assistant], ...] (alpaca: history).",
    "messages": "The list of messages (sharegpt: conversations; chatml: messages).",
    "system": "The system prompt (system).",
    "tools": "The tool descriptions (tools).",
    "chosen": "The preferred answer (preference: chosen).",
    "rejected": "The dispreferred answer (preference: rejected).",
    "kto_tag": "The desirable/undesirable flag of an unpaired answer (unpaired: label, or LLaMA-Factory's kto_tag).",
}
DATASET_TAGS = {
    "role_tag": "The message key holding the role (sharegpt: from).",
    "content_tag": "The message key holding the text (sharegpt: value).",
    "user_tag": "The role value of a user message (sharegpt: human).",
    "assistant_tag": "The role value of an assistant message (sharegpt: gpt).",
    "observation_tag": "The role value of a tool result (sharegpt: observation).",
    "function_tag": "The role value of an assistant's tool call (sharegpt: function_call).",
    "system_tag": "The role value of a system message (sharegpt: system).",
}


def _field_names(name: str, doc: str, fields: dict[str, str]) -> Any:
    """A model of optional field names (1-128 characters), one per entry of `fields`."""
    return create_model(name, __base__=KubeModel, __doc__=doc, **{
        key: (str | None, Field(default=None, description=text, min_length=1, max_length=128))
        for key, text in fields.items()})


DatasetColumns = _field_names(
    "DatasetColumns", "Which field of each record holds what, when the data's field names are not the format's "
    "own: the `columns` of a LLaMA-Factory dataset_info.json entry, under the same names. Empty fields: the "
    "format's own name (docs/data.md).", DATASET_COLUMNS)
DatasetTags = _field_names(
    "DatasetTags", "The keys and role names inside each message of sharegpt-shaped data, when they are not "
    "sharegpt's own: the `tags` of a LLaMA-Factory dataset_info.json entry, under the same names. Empty fields: "
    "sharegpt's own (from/value, human/gpt/system/observation/function_call).", DATASET_TAGS)


class Dataset(KubeModel):
    """Training data: JSONL, JSON, CSV, Parquet, or plain text (.txt, one document per line, for text data); the
    trainer validates every record before any training. The accepted shapes: docs/data.md."""

    model_config = with_rules(cel("!(has(self.validation) && has(self.validationSplit))",
                                  "dataset.validation and dataset.validationSplit are mutually exclusive"))

    train: str = Field(
        description="Training data file or folder: s3://, https://, hf://org/dataset, pvc://claim/path, or "
        "configmap://name/key for small data kept in a ConfigMap (mounted into the training pod). " + DATA_URI_HELP,
        min_length=6,
        max_length=1024,
        pattern=DATA_URI,
    )
    validation: str | None = Field(
        default=None,
        description="Held-out evaluation data (same formats). Exclusive with validationSplit.",
        max_length=1024,
        pattern=DATA_URI,
    )
    validation_split: str | None = decimal(
        "Fraction of the training data held out for evaluation, e.g. \"0.1\" (0 < x < 0.5). "
        "Exclusive with validation. Neither set: 5% (at least 1 example) is held out."
    )
    format: DatasetFormat = Field(
        default="auto",
        description="Record format: " + ", ".join(f"{name} ({fields})" for name, fields in FORMATS.items())
        + ", or auto (the method's only format, else detected from the records' fields).",
    )
    columns: DatasetColumns | None = Field(  # type: ignore[valid-type]
        default=None, description="Field names of the records when they differ from the format's own (like "
        "LLaMA-Factory's dataset_info.json columns).")
    tags: DatasetTags | None = Field(  # type: ignore[valid-type]
        default=None, description="Message keys and role names of sharegpt-shaped data when they differ from "
        "sharegpt's own (like LLaMA-Factory's dataset_info.json tags).")

    @field_validator("train", "validation")
    @classmethod
    def _no_traversal(cls, value: str | None) -> str | None:
        return _check_uri_path(value)

    @field_validator("validation_split")
    @classmethod
    def _split_range(cls, value: str | None) -> str | None:
        if value is not None and not (0 < Decimal(value) < Decimal("0.5")):
            raise ValueError(f"must be between 0 and 0.5 (exclusive), got {value}")
        return value

    @model_validator(mode="after")
    def _exclusive(self) -> Dataset:
        if self.validation is not None and self.validation_split is not None:
            raise ValueError("dataset.validation and dataset.validationSplit are mutually exclusive")
        return self


class _MethodRules(KubeModel):
    """How the model learns."""

    model_config = with_rules(*options_rules())

    @model_validator(mode="after")
    def _options_match_type(self) -> _MethodRules:
        problem = options_problem(self.type, [m for m in METHODS if getattr(self, m, None) is not None])  # type: ignore[attr-defined]
        if problem:
            raise ValueError(problem)
        return self


# method.type plus one optional method.<name> per method with options: all from the METHODS table.
Method = create_model(
    "Method",
    __base__=_MethodRules,
    __doc__="How the model learns.",
    type=(MethodType, Field(default=DEFAULT_METHOD, description="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()) + ".")),
    **{m.name: (m.options | None, Field(default=None, description=f"Options for method.type {m.name}."))
       for m in METHODS.values() if m.options is not None},
)


class Adapter(KubeModel):
    """What gets trained: a low-rank adapter or every weight."""

    type: AdapterType = Field(
        default="lora",
        description="lora; qlora (4-bit NF4 base + LoRA, needs a GPU for speed); dora (weight-decomposed LoRA: "
        "trains, but vLLM cannot serve DoRA adapters, so a ModelDeployment rejects it; set output.mergedModel "
        "to publish a merged model that serves as a baseModel; the job's Servable condition says so); "
        "full (every weight; publishes a full model, served as a baseModel).",
    )
    rank: int = Field(default=16, description="LoRA rank r.", ge=1, le=256)
    alpha: int | None = Field(default=None, description="LoRA alpha. Empty: 2 x rank.", ge=1, le=1024)
    dropout: str = decimal("LoRA dropout probability, e.g. \"0.05\".", default="0.05")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        description="Module names to adapt, or [\"all-linear\"] for every linear layer except the output head.",
        min_length=1,
        max_length=64,
        json_schema_extra={"items": {"type": "string", "maxLength": 128, "pattern": r"^[-._A-Za-z0-9*]+$"}},
    )

    _dropout_range = below_one("dropout")

    @field_validator("target_modules")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        import re

        for name in value:
            if not re.match(r"^[-._A-Za-z0-9*]{1,128}$", name):
                raise ValueError(f"{name!r} is not a module name")
        return value


class Hyperparameters(KubeModel):
    """Training settings. Empty fields get automatic defaults chosen for the method and adapter type
    (documented in docs/hyperparameters.md)."""

    epochs: int = Field(default=3, description="Passes over the training data.", ge=1, le=100)
    max_steps: int | None = Field(default=None, description="Stop after this many optimizer steps (overrides epochs).", ge=1, le=10_000_000)
    batch_size: int | None = Field(default=None, description="Per-device batch size. Empty: 8 for adapters, 4 for full.", ge=1, le=1024)
    gradient_accumulation_steps: int = Field(default=1, description="Batches accumulated per optimizer step.", ge=1, le=1024)
    learning_rate: str | None = decimal(
        "Peak learning rate, e.g. \"2e-4\". Empty: " + learning_rate_help() + "."
    )
    lr_scheduler: Scheduler = Field(default="cosine", description="Learning-rate schedule.")
    warmup_ratio: str = decimal("Fraction of steps spent warming up, e.g. \"0.03\".", default="0.03")
    max_length: int = Field(default=2048, description="Maximum tokens per example; longer ones are truncated.", ge=16, le=1_048_576)
    packing: bool | None = Field(default=None, description="Pack several short examples into one sequence (SFT/CPT). Empty: on for SFT and CPT.")
    seed: int = Field(default=42, description="Random seed for data order and initialisation.", ge=0, le=2**31 - 1)
    early_stopping: EarlyStopping | None = Field(default=None, description="Stop when the held-out eval loss (or another figure measured at every evaluation) stops improving and publish the best checkpoint (docs/hyperparameters.md#early-stopping). Empty: train all steps, publish the last.")

    @field_validator("learning_rate")
    @classmethod
    def _lr_range(cls, value: str | None) -> str | None:
        if value is not None and not (0 < Decimal(value) <= 1):
            raise ValueError(f"must be in (0, 1], got {value}")
        return value

    _warmup_range = below_one("warmup_ratio")


class Checkpointing(KubeModel):
    """Resumable checkpoints in object storage, under <output>/<namespace>/<job>/checkpoints/."""

    interval_steps: int = Field(default=100, description="Save a checkpoint every N optimizer steps.", ge=1, le=1_000_000)
    keep: int = Field(default=2, description="Keep the newest K checkpoints.", ge=1, le=100)


class Output(KubeModel):
    """Where the adapter is published: <uri>/<namespace>/<job>/ with manifest.json written last."""

    uri: str | None = Field(
        default=None,
        description="Object storage prefix, e.g. s3://models/adapters. Empty: the platform default.",
        max_length=1024,
        pattern=STORAGE_URI,
    )
    merged_model: bool = Field(default=False, description="Also publish the base model merged with the adapter.")

    @field_validator("uri")
    @classmethod
    def _no_traversal(cls, value: str | None) -> str | None:
        return _check_uri_path(value)


class Resources(ComputeResources):
    """Compute per training node."""

    nodes: int = Field(default=1, description="Training nodes (data-parallel). More than one needs gpus > 0.", ge=1, le=64)
    gpu_memory: Quantity | None = Field(
        default=None,
        description="Memory of one GPU, e.g. 80Gi: the pre-flight fails the job (ValidationFailed, with the estimate "
        "and the cheapest fix) before any GPU is requested if training would not fit in it. Empty: the platform's "
        "value for the GPU type (by the GPU product in scheduling.nodeSelector, else resources.gpuResourceName); "
        "none known: the fit is not checked.",
    )

    @field_validator("gpu_memory")
    @classmethod
    def _gpu_memory(cls, value: int | str | None) -> int | str | None:
        return check_quantity(value, "gpuMemory")


class FineTuneJobSpec(KubeModel):
    """Desired fine-tune. Once the training Job exists, only `suspend` and `cancel` take effect: other spec
    changes are ignored (a SpecChangeIgnored Warning event says so) and training goes on with the original
    spec; delete and re-create the FineTuneJob to train with a new one."""

    model_config = with_rules(cel("!has(self.resources) || self.resources.nodes == 1 || self.resources.gpus > 0",
                                  "resources.nodes > 1 needs resources.gpus > 0"), *format_rules(), cel_rule(), parallelism_rule(),
                               *checkpoint_metric_rules())

    base_model: BaseModelSource = Field(description="The pretrained model to fine-tune.")
    template: str | None = TEMPLATE_FIELD  # a FineTuneTemplate (api/template.py, docs/templates.md)
    dataset: Dataset = Field(description="Training (and optional evaluation) data.")
    method: Method = Field(default_factory=Method, description=f"Training method: {', '.join(METHODS)}.")  # type: ignore[valid-type]
    adapter: Adapter = Field(default_factory=Adapter, description="Adapter type and shape.")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters,
        description="Training settings. Empty fields get defaults chosen for the method and adapter type (docs/hyperparameters.md).",
    )
    checkpointing: Checkpointing = Field(default_factory=Checkpointing, description="Checkpoint cadence and retention.")
    output: Output = Field(default_factory=Output, description="Where the result is published.")
    tracking: TrackingSpec | None = Field(default=None, description="Experiment tracking: MLflow, TensorBoard, Weights & Biases (docs/tracking.md).")
    storage: ObjectStorage = Field(default_factory=ObjectStorage, description="Object storage connection for every s3:// URI.")
    resources: Resources = Field(default_factory=Resources, description="Compute per node.")
    parallelism: Parallelism = Field(default_factory=Parallelism, description="DDP or FSDP (sharded) training over the run's GPUs.")
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Queue, priority and placement.")
    evaluation: EvaluationSpec | None = Field(default=None, description="Task evaluation before and after training (docs/evaluation.md).")
    image: str | None = Field(
        default=None, description="Trainer image override. Empty: the platform default.", max_length=512, pattern=r"^[^\s]+$"
    )
    hub_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a Hugging Face token for gated models and datasets."
    )
    active_deadline_seconds: int | None = Field(
        default=None, description="Fail the job if it runs longer than this.", ge=60, le=30 * 24 * 3600
    )
    backoff_limit: int = Field(
        default=3, description="Retries after internal errors or crashes. User errors (bad data/config) never retry.", ge=0, le=20
    )
    suspend: bool = Field(
        default=False,
        description="Pause: stops the training pods (the trainer checkpoints first); false resumes from the last "
        "checkpoint. With a Kueue queue (scheduling.queueName), false releases only this hold: the job then "
        "waits in its queue until Kueue admits it.",
    )
    cancel: bool = Field(
        default=False,
        description="Cancel: the trainer checkpoints and stops, the training Job is removed, and the job ends "
        "Failed with reason Cancelled, keeping its status, checkpoints and metrics. Final: setting it back to "
        "false does not restart the job. No effect on a job that already finished.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> FineTuneJobSpec:
        if self.resources.nodes > 1 and self.resources.gpus == 0:
            raise ValueError("resources.nodes > 1 needs resources.gpus > 0")
        if sharding := parallelism_problem(self.parallelism.strategy, self.adapter.type):
            raise ValueError(sharding)
        problem = format_problem(self.method.type, self.dataset.format)  # type: ignore[attr-defined]
        if problem:
            raise ValueError(f"{problem}, got {self.dataset.format}")
        hp = self.hyperparameters
        if hp.early_stopping and (problem := checkpoint_metric_problem(self.method.type, hp.early_stopping.metric)):  # type: ignore[attr-defined]
            raise ValueError(problem)
        if hp.early_stopping and hp.max_steps and (problem := too_few_evaluations(
                hp.max_steps, self.checkpointing.interval_steps, hp.early_stopping.patience, f"hyperparameters.maxSteps={hp.max_steps}")):
            raise ValueError(problem)
        return self


# ----------------------------------------------------------------------------------------- status


class TrainerPhase(StrEnum):
    """What the trainer is doing now: status.progress.phase, the Phase column of `kubectl get ftj`.

    The trainer sets each where that work begins (kubetune_trainer.run), in this order. Only a resumed
    run restores a checkpoint, and it skips the baseline evaluation. EvaluatingTask (only with
    spec.evaluation) comes twice: after BaselineEvaluation (the base model) and after FinalEvaluation
    (the result). After a failure the last phase stays: it tells where the run stopped.
    """

    STARTING = "Starting"  # the trainer process is up, listing checkpoints
    VALIDATING_DATA = "ValidatingData"  # fetching the dataset and checking every record
    DOWNLOADING_MODEL = "DownloadingModel"  # bringing the base model onto local disk
    RESTORING_CHECKPOINT = "RestoringCheckpoint"  # downloading the newest checkpoint to resume from
    LOADING_MODEL = "LoadingModel"  # tokenizer and weights into memory
    TOKENIZING_DATA = "TokenizingData"  # the trainer tokenizes (and packs) the dataset
    BASELINE_EVALUATION = "BaselineEvaluation"  # the base model on the held-out data
    EVALUATING_TASK = "EvaluatingTask"  # spec.evaluation: answers generated and scored (base before, result after training)
    TRAINING = "Training"
    SAVING_CHECKPOINT = "SavingCheckpoint"  # uploading a checkpoint to object storage; training goes on after it
    FINAL_EVALUATION = "FinalEvaluation"  # the fine-tuned model on the held-out data
    PUBLISHING = "Publishing"  # saving, merging and uploading the result, manifest.json last
    DONE = "Done"  # published; the pod exits


class Progress(KubeModel):
    """Live progress, reported by the trainer at least every progress interval while it runs."""

    phase: TrainerPhase | None = Field(
        default=None,
        description=f"What the trainer is doing now, in order: {', '.join(TrainerPhase)}. "
        "After a failure: the phase it failed in.",
    )
    step: int = Field(default=0, description="Optimizer steps done.", ge=0)
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.", ge=0)
    epoch: float | None = Field(default=None, description="Epochs done (fractional).", ge=0)
    percent: int = Field(default=0, description="step / totalSteps in percent.", ge=0, le=100)
    eta_seconds: int | None = Field(default=None, description="Estimated seconds until training ends.", ge=0)
    loss: float | None = Field(default=None, description="Latest training loss.")
    eval_loss: float | None = Field(default=None, description="Latest evaluation loss.")
    evaluation: EvalProgress | None = Field(default=None, description="Phase EvaluatingTask: prompts answered so far.")
    tokens_per_second: float | None = Field(default=None, description="Training throughput.", ge=0)
    trained_tokens: int | None = Field(default=None, description="Tokens trained on so far.", ge=0)
    update_time: datetime | None = Field(
        default=None, description="When the trainer last reported. It reports every few seconds while it runs "
        "(progress.intervalSeconds of its config), so an older time means the trainer is gone or hung.")


class EvalFigures(KubeModel):
    """Evaluation on the held-out data."""

    eval_loss: float | None = Field(default=None, description="Mean token loss.")
    perplexity: float | None = Field(default=None, description="exp(evalLoss).")


class Evaluation(EvalSummary):
    """The base model before training against the result after: eval loss, and the task metrics of spec.evaluation."""

    baseline: EvalFigures | None = Field(default=None, description="Base model before training.")
    final: EvalFigures | None = Field(default=None, description="Fine-tuned model.")


MAX_CHECKPOINTS_LISTED = 100  # status.checkpoints keeps the newest ones
MAX_GPU_COUNTED_PODS = 2048  # status.gpuCountedPods: ended pods that still exist (<= nodes x attempts)


class CheckpointInfo(KubeModel):
    """A complete checkpoint in object storage."""

    step: int = Field(description="Optimizer step of the checkpoint.", ge=0)
    uri: str = Field(description="Where it is stored.", max_length=2048)


class PublishedAdapter(KubeModel):
    """The published result. Set only once its manifest.json is written."""

    uri: str = Field(description="Folder holding manifest.json and the adapter.", max_length=2048)
    manifest_sha256: str = Field(description="sha256 of manifest.json.", pattern=r"^[a-f0-9]{64}$")
    type: AdapterType | None = Field(default=None, description="Adapter type.")
    rank: int | None = Field(default=None, description="LoRA rank, as in manifest.json (absent for a full model).",
                             ge=1, le=256)
    step: int | None = Field(default=None, ge=0, description="Optimizer step of the published weights: the best checkpoint "
                             "with hyperparameters.earlyStopping, else the last step.")
    reason: str | None = Field(default=None, max_length=MAX_REASON, description="Why that step, e.g. 'best eval_loss 1.23 "
                               "at step 40 of 80; stopped early after 3 evaluations without improvement'.")


class SplitFigures(KubeModel):
    """One data split as the pre-flight counted it."""

    examples: int = Field(description="Valid examples in this split.", ge=0)
    tokens: int = Field(description="Tokens in them, before truncation.", ge=0)
    truncated: int = Field(default=0, description="Examples longer than hyperparameters.maxLength.", ge=0)
    invalid: int = Field(default=0, description="Records with problems.", ge=0)


class DataFigures(KubeModel):
    """What the pre-flight found (the CPU-only run before the training Job; condition DataValidated)."""

    format: str | None = Field(default=None, description="Record format found.", max_length=32)
    max_length: int | None = Field(default=None, description="hyperparameters.maxLength the examples were measured against.", ge=1)
    train: SplitFigures | None = Field(default=None, description="Training split.")
    validation: SplitFigures | None = Field(default=None, description="Held-out split.")
    planned_steps: int | None = Field(default=None, description="Optimizer steps the training Job will run.", ge=0)
    estimated_training_tokens: int | None = Field(default=None, description="Tokens training will see (all epochs).", ge=0)
    estimated_peak_gpu_memory: str | None = Field(default=None, description="Estimated peak memory per GPU, e.g. 17.2Gi.",
                                                  max_length=32)
    gpu_memory: str | None = Field(default=None, description="Memory of one GPU it was checked against (absent: not checked).",
                                   max_length=32)
    fits: bool | None = Field(default=None, description="Whether the estimate fits gpuMemory (absent: not checked).")
    errors: int = Field(default=0, description="Bad records found.", ge=0)
    report_uri: str | None = Field(default=None, description="The whole pre-flight report (JSON) in object storage.",
                                   max_length=2048)


class FineTuneJobStatus(KubeModel):
    """Observed state, derived from the training Job and Pods and the trainer's reports."""

    observed_generation: int | None = Field(default=None, description="The .metadata.generation last acted on.", ge=0)
    conditions: list[Condition] = CONDITIONS_FIELD
    job_name: str | None = Field(default=None, description="Name of the training batch/v1 Job.", max_length=253, pattern=DNS_SUBDOMAIN)
    start_time: datetime | None = Field(default=None, description="When training started.")
    completion_time: datetime | None = Field(default=None, description="When the job succeeded or failed.")
    attempts: int | None = Field(default=None, description="Training pods started so far.", ge=0)
    gpu_seconds: int | None = Field(
        default=None, ge=0,
        description="GPU-seconds used so far: the sum over every ended attempt (training pod) of its GPUs x the trainer "
        "container's running time (startedAt to finishedAt). An attempt is added when it ends, so a running attempt "
        "is not in it yet; once the job has finished it is the whole cost. See docs/lifecycle.md.")
    gpu_counted_pods: list[Annotated[str, Field(max_length=253)]] | None = Field(
        default=None, max_length=MAX_GPU_COUNTED_PODS,
        description="Ended training pods already added to gpuSeconds that still exist (bookkeeping, so that no attempt "
        "is added twice).")
    progress: Progress | None = Field(default=None, description="Live progress.")
    evaluation: Evaluation | None = Field(default=None, description="Before/after evaluation.")
    tracking: TrackingStatus | None = Field(default=None, description="Links to the tracked run (spec.tracking).")
    checkpoints: list[CheckpointInfo] | None = Field(default=None, description="Complete checkpoints, newest last.",
                                                     max_length=MAX_CHECKPOINTS_LISTED)
    adapter: PublishedAdapter | None = Field(default=None, description="The published adapter.")
    preflight_job_name: str | None = Field(default=None, description="Name of the pre-flight batch/v1 Job (CPU only).",
                                           max_length=253, pattern=DNS_SUBDOMAIN)
    template: AppliedTemplate | None = Field(default=None, description="The FineTuneTemplate applied (docs/templates.md).")
    effective_spec: FreeForm | None = Field(default=None, description=EFFECTIVE_SPEC_HELP)  # a FineTuneJobSpec
    spec_hash: str | None = Field(default=None, description=SPEC_HASH_HELP, max_length=64)
    data: DataFigures | None = Field(default=None, description="What the pre-flight found: examples and tokens per split, "
                                     "truncated examples, planned steps, estimated tokens and peak GPU memory.")


class FineTuneJob(KubeObject):
    """A fine-tuning run that publishes an adapter (or full model) to object storage."""

    kind: Literal["FineTuneJob"] = Field(default="FineTuneJob", description="Kind.")
    spec: FineTuneJobSpec = Field(description="Desired fine-tune.")
    status: FineTuneJobStatus | None = Field(default=None, description="Observed state.")
