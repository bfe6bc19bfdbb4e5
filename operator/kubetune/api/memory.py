"""Peak GPU memory of one training process, estimated from the model's config.json. Pure arithmetic: pydantic only.

Used by the trainer's pre-flight run (kubetune_trainer/preflight.py) and by anyone who knows the model config
(the operator may call it to fail fast without a pod). Every figure is computed from the config (hidden size,
layers, intermediate size, vocabulary, attention and key/value heads, tied embeddings); no model size is
hard-coded. The terms (docs/data.md, "Memory estimate", gives the derivation and the measured error):

- weights: parameters x bytes per parameter of the precision (bf16/fp16 2, fp32 4); QLoRA stores the linear
  layers in 4-bit NF4 with double quantization (0.5 byte + an 8-bit absmax per 64-value block + an fp32 scale
  per 256 blocks = NF4_BYTES_PER_PARAM), embeddings, output head and norms stay in the compute precision;
- adapter: LoRA r x (in + out) per adapted linear layer per decoder layer (DoRA adds a magnitude per output),
  kept in fp32 by PEFT;
- gradients: one per trainable parameter, in the trainable parameters' dtype;
- optimizer: AdamW's two moments in the trainable parameters' dtype (+ an fp32 master copy with
  ``master_weights``), plus one moment-sized temporary while the foreach step runs;
- activations per token per decoder layer, counted from what autograd keeps for a Llama/Qwen-style layer
  (RMSNorm inputs in fp32, q/k/v/o inputs and outputs, SDPA outputs, gated-MLP intermediates, LoRA dropout
  copies and masks); with gradient checkpointing only each layer's input is kept, plus one layer recomputed;
- logits: batch x sequence x vocabulary x (compute bytes + 8): the logits, the fp32 log-softmax the loss keeps,
  and one fp32 gradient of that size at the start of backward. Without checkpointing they add to every layer's
  activations; with it, the layer recomputed in backward comes after the logits' memory is freed, so the larger
  of the two counts;
- overhead: CUDA_CONTEXT_BYTES (CUDA context, cuBLAS workspaces, kernels) + FRAGMENTATION of the rest (the
  caching allocator reserves more than it hands out). Stated here, not hidden: measured peaks on a GPU are
  ``torch.cuda.max_memory_reserved`` plus the context.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from .common import KubeModel

GIB = 1024**3
CUDA_CONTEXT_BYTES = 1 * GIB  # CUDA context + cuBLAS/cuDNN workspaces + loaded kernels, per process
FRAGMENTATION = 0.10  # the caching allocator's reserve above what tensors hold
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit values, 8-bit absmax per 64, fp32 per 256 absmax blocks
ADAPTER_BYTES = 4  # PEFT keeps LoRA weights in fp32 (autocast_adapter_dtype)
LOGITS_EXTRA_BYTES = 8  # the fp32 log-softmax the loss keeps + one fp32 gradient of the same size
# Model types whose MLP is up -> activation -> down (no gate projection).
UNGATED_MLP = frozenset({"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "starcoder2", "gpt_bigcode"})
QKV_BIAS = frozenset({"qwen2"})  # model types with q/k/v biases although the config does not say so

Precision = Literal["bf16", "fp16", "fp32"]
AdapterKind = Literal["lora", "qlora", "dora", "full"]
ADAPTER_LABELS = {"full": "full fine-tune", "lora": "LoRA", "qlora": "QLoRA", "dora": "DoRA"}


def _first(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    if default is None:
        raise ValueError(f"config.json has no {' / '.join(keys)}")
    return default


class ModelShape(KubeModel):
    """The shape of a decoder-only transformer, as its config.json gives it."""

    model_type: str = Field(default="", description="config.model_type.", max_length=64)
    hidden_size: int = Field(description="Hidden size.", ge=1)
    num_layers: int = Field(description="Decoder layers.", ge=1)
    intermediate_size: int = Field(description="MLP intermediate size.", ge=1)
    vocab_size: int = Field(description="Vocabulary size.", ge=1)
    num_heads: int = Field(description="Attention heads.", ge=1)
    num_kv_heads: int = Field(description="Key/value heads (grouped-query attention).", ge=1)
    head_dim: int = Field(description="Dimension per head.", ge=1)
    tied_embeddings: bool = Field(description="The output head shares the input embedding.")
    qkv_bias: bool = Field(default=False, description="q/k/v projections have biases.")
    gated_mlp: bool = Field(default=True, description="gate_proj/up_proj/down_proj (SwiGLU) rather than up/down.")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a Hugging Face config.json (a multimodal one: its text_config). ValueError names what is missing."""
        if isinstance(config.get("text_config"), dict):
            config = {**config["text_config"], "model_type": config["text_config"].get("model_type") or config.get("model_type")}
        if config.get("num_local_experts") or config.get("num_experts") or config.get("n_routed_experts"):
            raise ValueError("mixture-of-experts models are not estimated (their expert layers are not counted here)")
        hidden = _first(config, "hidden_size", "n_embd", "d_model")
        heads = _first(config, "num_attention_heads", "n_head")
        model_type = str(config.get("model_type") or "")
        return cls(
            model_type=model_type,
            hidden_size=hidden,
            num_layers=_first(config, "num_hidden_layers", "n_layer", "num_layers"),
            intermediate_size=_first(config, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
            vocab_size=_first(config, "vocab_size"),
            num_heads=heads,
            num_kv_heads=_first(config, "num_key_value_heads", default=heads),
            head_dim=_first(config, "head_dim", default=hidden // heads),
            tied_embeddings=bool(config.get("tie_word_embeddings", True)),  # transformers' default is True
            qkv_bias=bool(config.get("attention_bias", model_type in QKV_BIAS)),
            gated_mlp=model_type not in UNGATED_MLP,
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """The linear layers of one decoder layer: leaf name -> (in features, out features)."""
        h, q, kv, inter = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        layers = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}
        if self.gated_mlp:
            layers["gate_proj"] = (h, inter)
        layers |= {"up_proj": (h, inter), "down_proj": (inter, h)}
        return layers

    def linear_parameters(self) -> int:
        """Weights of the decoder layers' linear layers (what QLoRA stores in 4 bits)."""
        return self.num_layers * sum(i * o for i, o in self.linears().values())

    def other_parameters(self) -> int:
        """Embedding, output head (unless tied), norms, biases."""
        h = self.hidden_size
        bias = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.qkv_bias else 0
        head = 0 if self.tied_embeddings else self.vocab_size * h
        return self.vocab_size * h + head + self.num_layers * (2 * h + bias) + h

    def parameters(self) -> int:
        return self.linear_parameters() + self.other_parameters()


class TrainingShape(KubeModel):
    """How one training process trains: what is trainable, in which precision, on how many tokens at once."""

    adapter: AdapterKind = Field(description="lora, qlora, dora or full.")
    rank: int = Field(default=16, description="LoRA rank.", ge=1)
    target_modules: list[str] = Field(default_factory=lambda: ["all-linear"], description="Adapted layers.")
    lora_dropout: bool = Field(default=True, description="LoRA dropout > 0 (keeps a copy and a mask of each input).")
    precision: Precision = Field(default="bf16", description="Compute precision (and of the frozen weights).")
    master_weights: bool = Field(default=False, description="Full fine-tune keeps an fp32 master copy (mixed "
                                 "precision). The kubetune trainer trains the weights in the compute precision.")
    batch_size: int = Field(description="Sequences per micro-batch per GPU (per example: see sequencesPerExample).", ge=1)
    sequence_length: int = Field(description="Tokens per sequence (maxLength, or the longest example).", ge=1)
    sequences_per_example: int = Field(default=1, description="2 for DPO/ORPO (chosen and rejected).", ge=1, le=4)
    reference_model: bool = Field(default=False, description="A frozen copy of the model for the reference "
                                  "log-probabilities (DPO/KTO full fine-tune; adapters reuse the base).")
    gradient_checkpointing: bool = Field(default=True, description="Activation checkpointing per decoder layer.")


class MemoryEstimate(KubeModel):
    """Estimated peak memory of one training process on one GPU, in bytes, by term."""

    parameters: int = Field(description="Parameters of the base model (from config.json).", ge=0)
    trainable_parameters: int = Field(description="Parameters trained (adapter, or all).", ge=0)
    weights_bytes: int = Field(description="Base model weights (4-bit linear layers for QLoRA).", ge=0)
    reference_model_bytes: int = Field(default=0, description="Frozen reference copy (full DPO/KTO).", ge=0)
    adapter_bytes: int = Field(default=0, description="LoRA/DoRA weights (fp32).", ge=0)
    gradients_bytes: int = Field(description="Gradients of the trainable parameters.", ge=0)
    optimizer_bytes: int = Field(description="AdamW moments (+ fp32 master copy) and the step's temporary.", ge=0)
    activations_bytes: int = Field(description="Activations kept for backward, without gradient checkpointing.", ge=0)
    activations_checkpointed_bytes: int = Field(description="The same with gradient checkpointing.", ge=0)
    logits_bytes: int = Field(description="Logits, the loss's fp32 log-softmax and their gradients.", ge=0)
    overhead_bytes: int = Field(description="CUDA context + allocator fragmentation (see kubetune.api.memory).", ge=0)
    peak_without_checkpointing_bytes: int = Field(description="Peak without gradient checkpointing.", ge=0)
    peak_with_checkpointing_bytes: int = Field(description="Peak with gradient checkpointing.", ge=0)
    gradient_checkpointing: bool = Field(description="Whether the training run uses it (peakBytes follows).")
    peak_bytes: int = Field(description="The peak that applies to this run.", ge=0)
    tokens_per_micro_batch: int = Field(description="Sequences x tokens in one forward pass.", ge=0)
    notes: list[str] = Field(default_factory=list, description="Assumptions that matter for this estimate.", max_length=10)

    def allocated(self, checkpointing: bool | None = None) -> int:
        """Bytes held by tensors at the peak, without the CUDA context and fragmentation (what a CPU measures)."""
        peak = self.peak_with_checkpointing_bytes if (self.gradient_checkpointing if checkpointing is None else checkpointing) \
            else self.peak_without_checkpointing_bytes
        return round((peak - CUDA_CONTEXT_BYTES) / (1 + FRAGMENTATION))


class MemoryOption(KubeModel):
    """The same run with another adapter type (or settings): what it would need."""

    adapter: AdapterKind = Field(description="Adapter type.")
    batch_size: int = Field(description="Per-GPU batch size.", ge=1)
    peak_bytes: int = Field(description="Estimated peak per GPU.", ge=0)
    fits: bool | None = Field(default=None, description="Fits the per-GPU budget (None: no budget).")


def _adapted(shape: ModelShape, targets: list[str]) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Adapted linear layers of one decoder layer, and target names that match none of them."""
    linears = shape.linears()
    if "all-linear" in targets:
        return linears, []
    chosen = {name: linears[name] for name in targets if name in linears}
    return chosen, [name for name in targets if name not in linears]


def layer_activation_bytes(shape: ModelShape, training: TrainingShape) -> float:
    """Bytes autograd keeps per token for one decoder layer (no checkpointing)."""
    c = DTYPE_BYTES[training.precision]
    h, q, kv, inter = shape.hidden_size, shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim, shape.intermediate_size
    norms = 2 * (4 * h + c * h)  # two RMSNorms: the fp32 input and the normalised output
    attention = c * h + c * (2 * q + 2 * kv) + 4 * shape.num_heads + c * q  # qkv input; SDPA q,k,v,out + lse; o_proj input
    mlp = c * h + (4 if shape.gated_mlp else 2) * c * inter  # gate/up input; gate, act, up, product
    lora = 0.0
    if training.adapter != "full":
        adapted, _ = _adapted(shape, training.target_modules)
        per_input = (ADAPTER_BYTES + 1) if training.lora_dropout else (ADAPTER_BYTES if c != ADAPTER_BYTES else 0)
        lora = sum(per_input * i + ADAPTER_BYTES * training.rank + (c * o if training.adapter == "dora" else 0)
                   for i, o in adapted.values())
    return norms + attention + mlp + lora


def estimate(shape: ModelShape, training: TrainingShape) -> MemoryEstimate:
    """The peak memory of one training process, by term."""
    c = DTYPE_BYTES[training.precision]
    notes: list[str] = []
    total = shape.parameters()
    if training.adapter == "qlora":
        weights = math.ceil(shape.linear_parameters() * NF4_BYTES_PER_PARAM) + shape.other_parameters() * c
    else:
        weights = total * c
    if training.adapter == "full":
        trainable, adapter_bytes, state = total, 0, c
        optimizer = trainable * (2 * c + (4 if training.master_weights else 0))
        temp = trainable * c
    else:
        adapted, unknown = _adapted(shape, training.target_modules)
        if unknown:
            notes.append(f"target modules {', '.join(unknown)} are not among {', '.join(shape.linears())}: not counted")
        trainable = shape.num_layers * sum(training.rank * (i + o) + (o if training.adapter == "dora" else 0)
                                           for i, o in adapted.values())
        adapter_bytes, state = trainable * ADAPTER_BYTES, ADAPTER_BYTES
        optimizer, temp = trainable * 2 * ADAPTER_BYTES, trainable * ADAPTER_BYTES
    gradients = trainable * state
    reference = weights if training.reference_model and training.adapter == "full" else 0
    tokens = training.batch_size * training.sequences_per_example * training.sequence_length
    layer = layer_activation_bytes(shape, training)
    h = shape.hidden_size
    outside = tokens * (c * h + (4 * h + c * h) + c * h)  # embeddings output, final norm, lm_head input
    activations = math.ceil(tokens * layer * shape.num_layers + outside)
    kept = math.ceil(tokens * c * h * shape.num_layers + outside)  # each layer's input (the checkpoints)
    recomputed = math.ceil(tokens * layer)  # one layer's activations, rebuilt in backward
    checkpointed = kept + recomputed
    logits = tokens * shape.vocab_size * (c + LOGITS_EXTRA_BYTES)
    static = weights + reference + adapter_bytes + optimizer
    # gradients are counted as held throughout: they live across the micro-batches of gradient accumulation
    held_without = static + gradients + max(activations + logits, temp)
    held_with = static + gradients + max(kept + max(logits, recomputed), temp)
    without, with_ = (math.ceil(held * (1 + FRAGMENTATION)) + CUDA_CONTEXT_BYTES for held in (held_without, held_with))
    overhead = with_ - held_with if training.gradient_checkpointing else without - held_without
    if training.sequences_per_example > 1:
        notes.append(f"{training.sequences_per_example} sequences per example (chosen and rejected in one batch)")
    return MemoryEstimate(
        parameters=total, trainable_parameters=trainable, weights_bytes=weights, reference_model_bytes=reference,
        adapter_bytes=adapter_bytes, gradients_bytes=gradients, optimizer_bytes=optimizer + temp,
        activations_bytes=activations, activations_checkpointed_bytes=checkpointed, logits_bytes=logits,
        overhead_bytes=overhead, peak_without_checkpointing_bytes=without, peak_with_checkpointing_bytes=with_,
        gradient_checkpointing=training.gradient_checkpointing,
        peak_bytes=with_ if training.gradient_checkpointing else without,
        tokens_per_micro_batch=tokens, notes=notes)


def gib(n: int | float, approx: bool = True) -> str:
    """Bytes as people read GPU sizes: '≈ 19 GiB', '≈ 0.6 GiB' (a budget: '80 GiB')."""
    value = n / GIB
    if value < 1:
        text = f"{n / 2**20:.0f} MiB"
    else:
        text = f"{value:.0f} GiB" if value >= 10 or value == int(value) else f"{value:.1f} GiB"
    return f"≈ {text}" if approx else text


def params_text(n: int) -> str:
    return f"{n / 1e9:.1f} B" if n >= 1e9 else f"{n / 1e6:.0f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def alternatives(shape: ModelShape, training: TrainingShape, budget: int | None) -> list[MemoryOption]:
    """The run with each adapter type (same batch and length), cheapest first."""
    options = []
    for kind in ("full", "dora", "lora", "qlora"):
        peak = estimate(shape, training.model_copy(update={"adapter": kind})).peak_bytes
        options.append(MemoryOption(adapter=kind, batch_size=training.batch_size, peak_bytes=peak,
                                    fits=None if budget is None else peak <= budget))
    return sorted(options, key=lambda o: o.peak_bytes)


def largest_batch(shape: ModelShape, training: TrainingShape, budget: int) -> int:
    """The largest per-GPU batch size of this run that fits the budget (0: not even 1)."""
    fits = lambda b: estimate(shape, training.model_copy(update={"batch_size": b})).peak_bytes <= budget  # noqa: E731
    if not fits(1):
        return 0
    low, high = 1, training.batch_size
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def fit_message(shape: ModelShape, training: TrainingShape, budget: int, *, grad_accumulation: int = 1,
                gpus: str = "per GPU") -> tuple[bool, str, list[MemoryOption]]:
    """(fits, one sentence with the numbers and the cheapest fix, the alternatives)."""
    mine = estimate(shape, training)
    options = alternatives(shape, training, budget)
    what = f"{ADAPTER_LABELS[training.adapter]} of {params_text(mine.parameters)} params"
    if mine.peak_bytes <= budget:
        return True, f"{what} needs {gib(mine.peak_bytes)} of {gib(budget, False)} {gpus}", options
    fixes = []
    batch = largest_batch(shape, training, budget)
    if batch:
        accumulation = grad_accumulation * math.ceil(training.batch_size / batch)
        fixes.append(f"hyperparameters.batchSize {batch} with gradientAccumulationSteps {accumulation} "
                     f"(about the same global batch)")
    order = {"full": ["lora", "qlora"], "dora": ["lora", "qlora"], "lora": ["qlora"], "qlora": []}[training.adapter]
    by_kind = {o.adapter: o for o in options}
    cheaper = [by_kind[k] for k in order if by_kind[k].peak_bytes < mine.peak_bytes]
    fixes += [f"use {ADAPTER_LABELS[o.adapter]} ({gib(o.peak_bytes)})" for o in cheaper if o.fits] \
        or [f"{ADAPTER_LABELS[o.adapter]} would need {gib(o.peak_bytes)}" for o in cheaper]
    if not batch and training.sequence_length > 512:
        fixes.append("a lower hyperparameters.maxLength")
    fixes.append("or a GPU with more memory")
    return False, f"{what} needs {gib(mine.peak_bytes)} > {gib(budget, False)} {gpus}: " + ", ".join(fixes), options


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def parse_bytes(quantity: str | int | None) -> int | None:
    """A Kubernetes memory quantity ("80Gi", "40G", "85899345920") in bytes; None or 0 -> None (no budget).
    ValueError names a bad one."""
    if quantity is None or quantity == "" or quantity == 0:
        return None
    if isinstance(quantity, int):
        return quantity
    import re

    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?(?:[eE][0-9]+)?)\s*(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?\s*", quantity)
    if not found:
        raise ValueError(f"{quantity!r} is not a memory quantity (e.g. 80Gi, 40G)")
    value = int(float(found.group(1)) * _UNITS[found.group(2) or ""])
    return value or None
