"""kubetune.api.memory: parameters from config.json, the seed figures for Qwen2.5, the fit check's message.

The Qwen2.5 config.json values are the public ones (huggingface.co/Qwen/Qwen2.5-0.5B and Qwen2.5-7B). The seed
figures are the smallest GPU each setting is known to train on; the reference setting is batch 1, maxLength 2048,
bf16, LoRA r16 on all linear layers, gradient checkpointing (what the trainer does on a GPU).
"""

from __future__ import annotations

import pytest

from kubetune.api.memory import (
    GIB,
    ModelShape,
    TrainingShape,
    estimate,
    fit_message,
    largest_batch,
    parse_bytes,
)

QWEN25_05B = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
              "max_position_embeddings": 32768, "model_type": "qwen2", "num_attention_heads": 14,
              "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "tie_word_embeddings": True,
              "torch_dtype": "bfloat16", "vocab_size": 151936}
QWEN25_7B = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "intermediate_size": 18944,
             "max_position_embeddings": 131072, "model_type": "qwen2", "num_attention_heads": 28,
             "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "tie_word_embeddings": False,
             "torch_dtype": "bfloat16", "vocab_size": 152064}
GB = 10**9


def reference(adapter: str, **extra) -> TrainingShape:
    return TrainingShape(**{"adapter": adapter, "rank": 16, "batch_size": 1, "sequence_length": 2048, **extra})


def test_parameters_from_config_match_the_published_counts():
    # Qwen2.5-0.5B: 494,032,768 parameters (tied head); Qwen2.5-7B: 7,615,616,512 (the model cards' 0.49 B / 7.61 B)
    assert ModelShape.from_config(QWEN25_05B).parameters() == 494_032_768
    assert ModelShape.from_config(QWEN25_7B).parameters() == 7_615_616_512


@pytest.mark.parametrize("config, adapter, seed_gb", [
    (QWEN25_05B, "lora", 6), (QWEN25_7B, "qlora", 12), (QWEN25_7B, "lora", 24)])
def test_seed_figures(config, adapter, seed_gb):
    """Each seed figure is a GPU the setting fits on: the estimate is below it, and not far below (within 15 %)."""
    peak = estimate(ModelShape.from_config(config), reference(adapter)).peak_bytes
    assert 0.85 * seed_gb * GB <= peak <= seed_gb * GB, f"{peak / GB:.2f} GB vs seed {seed_gb} GB"


def test_terms_are_ordered_as_physics_says():
    shape = ModelShape.from_config(QWEN25_7B)
    full, lora, qlora = (estimate(shape, reference(a)) for a in ("full", "lora", "qlora"))
    assert qlora.weights_bytes < lora.weights_bytes / 2.5  # 4-bit linear layers
    assert full.trainable_parameters == full.parameters and lora.trainable_parameters < full.parameters / 100
    assert full.gradients_bytes == full.weights_bytes  # bf16 gradients of bf16 weights
    for e in (full, lora, qlora):
        assert e.activations_checkpointed_bytes < e.activations_bytes
        assert e.peak_with_checkpointing_bytes < e.peak_without_checkpointing_bytes
    longer = estimate(shape, reference("lora").model_copy(update={"sequence_length": 4096}))
    assert longer.peak_bytes > lora.peak_bytes and longer.logits_bytes == 2 * lora.logits_bytes
    paired = estimate(shape, reference("lora", sequences_per_example=2))
    assert paired.tokens_per_micro_batch == 2 * lora.tokens_per_micro_batch
    with_ref = estimate(shape, reference("full", reference_model=True))
    assert with_ref.reference_model_bytes == full.weights_bytes


def test_lora_parameters_follow_rank_and_targets():
    shape = ModelShape.from_config(QWEN25_05B)
    all_linear = estimate(shape, reference("lora")).trainable_parameters
    assert all_linear == 24 * 16 * ((896 + 896) * 2 + (896 + 128) * 2 + (896 + 4864) * 2 + (4864 + 896))
    assert estimate(shape, reference("lora", rank=32)).trainable_parameters == 2 * all_linear
    qv = estimate(shape, reference("lora", target_modules=["q_proj", "v_proj", "c_attn"]))
    assert qv.trainable_parameters == 24 * 16 * ((896 + 896) + (896 + 128))
    assert any("c_attn" in note for note in qv.notes)


def test_full_fine_tune_of_7b_does_not_fit_40gi_and_says_the_cheapest_fix():
    fits, message, options = fit_message(ModelShape.from_config(QWEN25_7B), reference("full"), 40 * GIB)
    assert not fits
    assert message.startswith("full fine-tune of 7.6 B params needs ≈ 79 GiB > 40 GiB per GPU: use LoRA (≈ 21 GiB), "
                              "use QLoRA (≈ 11 GiB)"), message
    assert [o.adapter for o in options] == ["qlora", "lora", "dora", "full"]
    assert [o.fits for o in options] == [True, True, True, False]


def test_a_batch_too_large_is_told_the_batch_that_fits():
    shape, training = ModelShape.from_config(QWEN25_7B), reference("lora").model_copy(update={"batch_size": 8})
    fits, message, _ = fit_message(shape, training, 24 * GIB, grad_accumulation=2)
    batch = largest_batch(shape, training, 24 * GIB)
    assert not fits and 1 <= batch < 8
    assert estimate(shape, training.model_copy(update={"batch_size": batch})).peak_bytes <= 24 * GIB
    assert estimate(shape, training.model_copy(update={"batch_size": batch + 1})).peak_bytes > 24 * GIB
    assert f"hyperparameters.batchSize {batch} with gradientAccumulationSteps {2 * -(-8 // batch)}" in message


def test_config_problems_are_named():
    with pytest.raises(ValueError, match="num_hidden_layers / n_layer / num_layers"):
        ModelShape.from_config({k: v for k, v in QWEN25_7B.items() if k != "num_hidden_layers"})
    with pytest.raises(ValueError, match="mixture-of-experts"):
        ModelShape.from_config({**QWEN25_7B, "num_experts": 64})
    multimodal = ModelShape.from_config({"model_type": "qwen2_vl", "text_config": QWEN25_7B})
    assert multimodal.parameters() == 7_615_616_512


def test_parse_bytes():
    assert parse_bytes("80Gi") == 80 * GIB and parse_bytes("40G") == 40 * GB and parse_bytes(None) is None
    assert parse_bytes("0") is None
    with pytest.raises(ValueError, match="not a memory quantity"):
        parse_bytes("eighty")
