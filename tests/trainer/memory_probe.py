"""Measure the peak memory of one LoRA/full training step on CPU (run as a script in a fresh process).

Prints JSON: {"config": ..., "delta_bytes": peak anonymous resident memory during the measured step minus before
it}. glibc is told
to return every freed block above 64 KiB to the OS (MALLOC_MMAP_THRESHOLD_, set by the caller), so RSS follows the
bytes tensors hold. A warm-up step with batch 1 first: libraries, kernels and AdamW's moments exist before the
measured step, whose extra memory is then gradients + activations + logits (+ the optimizer step's temporary).
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time


PAGE = resource.getpagesize()


def anonymous() -> int:
    """Resident bytes not backed by a file (/proc/self/statm: resident - shared): what tensors hold. Not RSS or
    ru_maxrss: under memory pressure the kernel drops and re-reads the pages of torch's libraries (~1 GB), which
    moved RSS by more than the step itself on a loaded machine."""
    with open("/proc/self/statm") as handle:
        fields = handle.read().split()
    return (int(fields[1]) - int(fields[2])) * PAGE


class PeakSampler(threading.Thread):
    """The highest `anonymous()` seen while running, sampled every 0.5 ms (torch's kernels release the GIL)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = anonymous(), threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, anonymous())
            time.sleep(0.0005)


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
    before = anonymous()
    sampler = PeakSampler()
    sampler.start()
    step(spec["batch"])
    sampler.stop.set()
    sampler.join()
    return {"delta_bytes": max(sampler.peak, anonymous()) - before, "before_bytes": before}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
