"""Row-wise packed batches give exactly TRL's padding-free loss, with attention kept per row."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from kubetune_trainer.collate import RowPackedCollator, needs_row_packing


def _packed_rows(tokenizer) -> list[dict]:
    """Two packed rows of different widths, 3 + 2 sequences (as TRL's BFD packing stores them)."""
    texts = [["the cat likes fish", "what is the capital of zorbia", "blue sky"], ["hello world", "one two three four"]]
    rows = []
    for group in texts:
        ids = [tokenizer(t)["input_ids"] for t in group]
        rows.append({"input_ids": sum(ids, []), "seq_lengths": [len(i) for i in ids]})
    return rows


def test_collated_batch_layout(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = _packed_rows(tokenizer)
    batch = RowPackedCollator(tokenizer.pad_token_id)(rows)
    width = max(len(r["input_ids"]) for r in rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask: packed sequences are detected
    assert batch["input_ids"].shape == (2, width)
    lengths = rows[1]["seq_lengths"]
    expected = list(range(lengths[0])) + list(range(lengths[1]))
    assert batch["position_ids"][1].tolist() == expected + list(range(lengths[1], lengths[1] + width - sum(lengths)))
    assert batch["labels"][1, lengths[0]].item() == -100 and batch["labels"][1, 0].item() == -100
    assert (batch["labels"][1, sum(lengths):] == -100).all()
    assert (batch["input_ids"][1, sum(lengths):] == tokenizer.pad_token_id).all()


def test_same_loss_as_trl_padding_free(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    assert needs_row_packing(model)
    rows = _packed_rows(tokenizer)
    ours = RowPackedCollator(tokenizer.pad_token_id)(rows)
    trl = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(rows)
    assert trl["input_ids"].shape[0] == 1  # TRL: the whole batch flattened into one row
    # use_cache=False as TRL's compute_loss sets it: with a cache transformers skips packed-sequence masks
    with torch.no_grad():
        loss_ours = model(**ours, use_cache=False).loss.item()
        loss_trl = model(input_ids=trl["input_ids"], labels=trl["labels"], position_ids=trl["position_ids"],
                         use_cache=False).loss.item()
        leaky = {**ours, "position_ids": torch.arange(ours["input_ids"].shape[1]).expand_as(ours["input_ids"])}
        loss_leaky = model(**leaky, use_cache=False).loss.item()  # sequences attending to each other
        # the second sequence of row 0 sees only itself: same logits as on its own
        first, second = rows[0]["seq_lengths"][:2]
        alone = model(input_ids=ours["input_ids"][:1, first:first + second], use_cache=False).logits
        packed = model(**{k: v[:1] for k, v in ours.items() if k != "labels"}, use_cache=False).logits
    assert abs(loss_ours - loss_trl) < 1e-4, (loss_ours, loss_trl)
    assert abs(loss_ours - loss_leaky) > 1e-3
    assert torch.allclose(packed[0, first:first + second], alone[0], atol=1e-4)


def test_flash_attention_keeps_trl_collator(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config._attn_implementation = "flash_attention_2"
    assert not needs_row_packing(model)
