"""Packed batches that keep attention per row, for models without a variable-length attention kernel.

TRL's packing (best-fit decreasing) is padding-free: it concatenates the whole batch into ONE row and
relies on FlashAttention's varlen kernel to keep sequences apart. With SDPA or eager attention
(CPU, and GPUs without flash-attn) transformers turns that into a dense block-diagonal mask over
batch x maxLength tokens: attention cost and mask memory grow with (batch * maxLength)^2.

RowPackedCollator keeps each packed row a row: [batch, longest row] with position ids that restart
at every packed sequence and no attention mask, so transformers builds a block-diagonal causal mask
per row (batch * maxLength^2). Same tokens, same labels, same loss as TRL's collator; the first token
of each sequence is never a target of the sequence before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


def needs_row_packing(model) -> bool:
    """True when the model's attention cannot separate sequences inside one flattened row cheaply."""
    implementation = str(getattr(model.config, "_attn_implementation", "") or "")
    return implementation not in VARLEN_ATTENTION and "flash" not in implementation


@dataclass
class RowPackedCollator:
    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        position_ids = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            ids = torch.as_tensor(example["input_ids"], dtype=torch.long)
            n = len(ids)
            input_ids[row, :n] = ids
            labels[row, :n] = torch.as_tensor(example.get("labels", example["input_ids"]), dtype=torch.long)
            lengths = list(example.get("seq_lengths") or [n])
            start = 0
            for length in lengths:
                position_ids[row, start:start + length] = torch.arange(length)
                labels[row, start] = -100  # never predicted from the previous sequence's last token
                start += length
            if start < width:  # right padding continues the last sequence: causal masking hides it
                last = int(position_ids[row, start - 1]) + 1 if start else 0
                position_ids[row, start:] = torch.arange(last, last + width - start)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
