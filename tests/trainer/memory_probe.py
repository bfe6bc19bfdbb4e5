"""Measure the peak memory of one LoRA/full training step on CPU (run as a script in a fresh process).

Prints JSON: {"config": ..., "delta_bytes": peak RSS during the measured step minus RSS before it}. glibc is told
to return every freed block above 64 KiB to the OS (MALLOC_MMAP_THRESHOLD_, set by the caller), so RSS follows the
bytes tensors hold. A warm-up step with batch 1 first: libraries, kernels and AdamW's moments exist before the
measured step, whose extra memory is then gradients + activations + logits (+ the optimizer step's temporary).
"""

from __future__ import annotations

import json
import resource
import sys


def rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def main(spec: dict) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = Qwen2Config(**spec["config"], use_sliding_window=False, attn_implementation="sdpa")
    model = Qwen2ForCausalLM(config).float()
    if spec["adapter"] != "full":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=spec["rank"], lora_alpha=2 * spec["rank"], lora_dropout=0.05,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    if spec["checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if spec["adapter"] != "full":
            model.enable_input_require_grads()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(batch: int) -> None:
        ids = torch.randint(0, config.vocab_size, (batch, spec["seq"]))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(1)
    before = rss()
    step(spec["batch"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"delta_bytes": peak - before, "before_bytes": before}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
