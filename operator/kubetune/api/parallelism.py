"""spec.parallelism: data-parallel (DDP) or sharded (FSDP) training, and the rule that chooses. Pure: pydantic only.

Every process of a DDP run holds the whole model, its gradients and its optimizer state; FSDP (PyTorch Fully
Sharded Data Parallel, FSDP2, through the Trainer's accelerate integration) shards all three over every process
of the run (the GPUs of a pod and the pods of a multi-node run) and gathers one decoder layer at a time.

The rule (`decide`), with N = training processes in total (resources.gpus x resources.nodes on GPUs):

- N = 1: one process, nothing to shard (whatever the strategy says);
- strategy ddp / fsdp: as said (QLoRA cannot be sharded: its 4-bit base weights are not floating point tensors
  FSDP can shard, so `strategy: fsdp` with `adapter.type: qlora` is refused at validation);
- strategy auto: FSDP for a full fine-tune (the whole model + AdamW state on every GPU is what limits full
  fine-tunes), or when the memory estimate of one process (kubetune.api.memory) exceeds one GPU; QLoRA and
  adapters that fit stay DDP (nothing worth sharding: the frozen base is read, not trained).

Memory per GPU under FSDP (`fsdp_estimate`): accelerate keeps the sharded trainable parameters in fp32 when
training in bf16 (the master copy) and computes in bf16, so a trainable parameter costs 4 (fp32 weight) + 4
(fp32 gradient) + 8 (AdamW's two fp32 moments) = 16 bytes, divided by N; frozen parameters (the base of a LoRA)
cost their compute precision / N. On top, unsharded: the embeddings and output head (the root unit, gathered for
the whole step) and two decoder layers (the one running and the one prefetched) in the compute precision, one
layer's fp32 gradients before the reduce-scatter, the activations (as for DDP), and the optimizer step's temporary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import Field

from .common import KubeModel, cel
from .memory import CUDA_CONTEXT_BYTES, DTYPE_BYTES, FRAGMENTATION, MemoryEstimate, ModelShape, TrainingShape, estimate, gib, params_text

FSDP_STATE_BYTES = 4 + 4 + 8  # fp32 master weight + fp32 gradient + AdamW's two fp32 moments, per trainable parameter
PREFETCHED_LAYERS = 2  # the decoder layer running and the next one, all-gathered


class Strategy(StrEnum):
    AUTO = "auto"
    DDP = "ddp"
    FSDP = "fsdp"


class Parallelism(KubeModel):
    """How the training processes share the work (docs/trainer.md, "Sharded training (FSDP)")."""

    strategy: Strategy = Field(
        default=Strategy.AUTO,
        description="auto: FSDP (parameters, gradients and optimizer state sharded over every GPU of the run) for a "
        "full fine-tune on more than one GPU in total, or when one GPU cannot hold the run (memory estimate); DDP "
        "(every GPU holds the whole model) otherwise. ddp / fsdp: force one. One GPU in total: neither. QLoRA is "
        "never sharded.",
    )


def validation_rule() -> dict[str, str]:
    """The CEL rule of FineTuneJobSpec for `problem` (the API server's half of the same check)."""
    return cel("!has(self.parallelism) || self.parallelism.strategy != 'fsdp' || !has(self.adapter) "
               "|| self.adapter.type != 'qlora'", PROBLEM_QLORA)


PROBLEM_QLORA = ("parallelism.strategy: fsdp cannot shard QLoRA's 4-bit base weights; use adapter.type lora with "
                 "fsdp, or strategy auto/ddp with qlora")


def problem(strategy: str, adapter: str) -> str | None:
    """A spec error (the field and what to do), or None."""
    return PROBLEM_QLORA if strategy == Strategy.FSDP and adapter == "qlora" else None


Chosen = Literal["single", "ddp", "fsdp"]


@dataclass(frozen=True)
class Decision:
    strategy: Chosen
    reason: str  # one clause for the log and the effective settings


def decide(strategy: str, adapter: str, world_size: int, fits_one_gpu: bool | None = None) -> Decision:
    """The strategy of a run of `world_size` processes. `fits_one_gpu`: the memory estimate of one process against
    one GPU (None: not known, e.g. on CPU or without the model's config)."""
    if world_size <= 1:
        return Decision("single", "one training process: nothing to shard")
    if strategy == Strategy.DDP:
        return Decision("ddp", "spec.parallelism.strategy is ddp")
    if strategy == Strategy.FSDP:
        return Decision("fsdp", "spec.parallelism.strategy is fsdp")
    if adapter == "qlora":
        return Decision("ddp", "QLoRA's 4-bit base is not sharded")
    if adapter == "full":
        return Decision("fsdp", f"a full fine-tune over {world_size} processes shards weights, gradients and AdamW state")
    if fits_one_gpu is False:
        return Decision("fsdp", "one process would not fit one GPU (memory estimate)")
    return Decision("ddp", "every process holds the frozen base and the adapter (fits one GPU)")


def layer_parameters(shape: ModelShape) -> int:
    """Parameters of one decoder layer (its linear layers, norms and biases): one FSDP unit."""
    h = shape.hidden_size
    bias = (shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim if shape.qkv_bias else 0
    return shape.linear_parameters() // shape.num_layers + 2 * h + bias


def fsdp_estimate(shape: ModelShape, training: TrainingShape, world_size: int) -> MemoryEstimate:
    """Peak memory of one FSDP process out of `world_size` (the terms in the module docstring)."""
    single = estimate(shape, training)
    c = DTYPE_BYTES[training.precision]
    n = max(1, world_size)
    trainable = single.trainable_parameters
    frozen = 0 if training.adapter == "full" else single.parameters
    weights = math.ceil((trainable * 4 + frozen * c) / n)
    gradients = math.ceil(trainable * 4 / n)
    optimizer = math.ceil(trainable * 8 / n)
    temp = math.ceil(trainable * 4 / n)
    layer = layer_parameters(shape)
    trainable_per_layer = trainable if training.adapter != "full" else layer  # adapters: small, counted whole
    unsharded = (shape.other_parameters() + PREFETCHED_LAYERS * layer) * c + min(trainable, trainable_per_layer) * 4
    reference = math.ceil(single.reference_model_bytes / n)
    static = weights + reference + gradients + optimizer + unsharded
    # activations and logits per micro-batch as for DDP (each process runs its own micro-batch)
    held_with = static + max(single.activations_checkpointed_bytes + single.logits_bytes, temp)
    held_without = static + max(single.activations_bytes + single.logits_bytes, temp)
    without, with_ = (math.ceil(held * (1 + FRAGMENTATION)) + CUDA_CONTEXT_BYTES for held in (held_without, held_with))
    peak = with_ if training.gradient_checkpointing else without
    overhead = peak - (held_with if training.gradient_checkpointing else held_without)
    notes = list(single.notes) + [
        f"FSDP over {n} processes: {FSDP_STATE_BYTES} bytes per trainable parameter (fp32 master weight, gradient and "
        f"AdamW moments) / {n}; embeddings, output head and {PREFETCHED_LAYERS} decoder layers gathered unsharded"]
    return single.model_copy(update={
        "weights_bytes": weights + unsharded, "reference_model_bytes": reference, "gradients_bytes": gradients,
        "optimizer_bytes": optimizer + temp, "overhead_bytes": overhead,
        "peak_without_checkpointing_bytes": without, "peak_with_checkpointing_bytes": with_, "peak_bytes": peak,
        "notes": notes[:10]})


def fsdp_fit_message(shape: ModelShape, training: TrainingShape, world_size: int, budget: int) -> tuple[bool, str]:
    """(fits, one sentence) for an FSDP run against the per-GPU budget."""
    mine = fsdp_estimate(shape, training, world_size)
    what = (f"{'full fine-tune' if training.adapter == 'full' else training.adapter} of {params_text(mine.parameters)} "
            f"params sharded with FSDP over {world_size} GPUs")
    if mine.peak_bytes <= budget:
        return True, f"{what} needs {gib(mine.peak_bytes)} of {gib(budget, False)} per GPU"
    return False, (f"{what} needs {gib(mine.peak_bytes)} > {gib(budget, False)} per GPU: more GPUs (resources.gpus, "
                   "resources.nodes), a smaller hyperparameters.batchSize with more gradientAccumulationSteps, a lower "
                   "hyperparameters.maxLength, or adapter type lora")
