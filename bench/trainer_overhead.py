"""Overhead of the kubetune trainer over a plain TRL SFTTrainer script (figures, not a test).

Same tiny model (tests/fixtures/tiny_model.py), same data and held-out split, same settings (LoRA r16
all-linear, batch 8, max_length 128, packing off so both use TRL's own collator, eval + checkpoint
every 50 steps) in one invocation, runs interleaved. Ours adds: progress reporting (file mode),
the Prometheus endpoint, checkpoint upload to file:// storage with COMPLETE markers and pruning.

Figure: wall time per optimizer step (Trainer's train_runtime / steps), median over the runs,
ratio ours / plain (goal <= 1.03). Also the end-to-end wall of each (load, train, evaluate, save).

    .venv/bin/python bench/trainer_overhead.py [--steps 100] [--runs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.tiny_data import chat_records, write_jsonl  # noqa: E402
from tests.fixtures.tiny_model import build_tiny_model  # noqa: E402

INTERVAL = 50
SETTINGS = dict(per_device_train_batch_size=8, per_device_eval_batch_size=8, learning_rate=3e-3,
                lr_scheduler_type="constant", warmup_steps=0.0, max_length=128, seed=42, data_seed=42)


def plain_trl(model_dir: Path, records: list[dict], steps: int, out: Path) -> tuple[float, float]:
    """The script a user would write with TRL directly. Returns (seconds per step, end-to-end seconds)."""
    started = time.perf_counter()
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from kubetune_trainer.data import split  # the same held-out examples as the trainer

    train, held = split(records, 0.05, seed=42)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = SFTConfig(output_dir=str(out), max_steps=steps, logging_steps=2, logging_first_step=True,
                     save_strategy="steps", save_steps=INTERVAL, save_total_limit=1, eval_strategy="steps",
                     eval_steps=INTERVAL, report_to="none", disable_tqdm=True, use_cpu=True, bf16=False,
                     activation_checkpointing=False, dataloader_pin_memory=False, packing=False,
                     assistant_only_loss=True, include_num_input_tokens_seen="non_padding", **SETTINGS)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                         eval_dataset=Dataset.from_list(held), processing_class=tokenizer, peft_config=lora)
    trainer.evaluate()  # like the trainer's baseline evaluation
    trainer.train()
    trainer.evaluate()
    trainer.save_model(str(out / "final"))
    runtime = next(h["train_runtime"] for h in reversed(trainer.state.log_history) if "train_runtime" in h)
    return runtime / trainer.state.global_step, time.perf_counter() - started


def ours(model_dir: Path, train_file: Path, steps: int, work: Path) -> tuple[float, float]:
    from kubetune_trainer.main import execute
    from tests.trainer.helpers import make_config

    work.mkdir(parents=True, exist_ok=True)
    config = make_config(work / "config.json", job="bench", model=f"file://{model_dir}", train=f"file://{train_file}",
                         output=f"file://{work}/out", progress_file=work / "progress.jsonl",
                         hyperparameters={"maxSteps": steps, "packing": False, "seed": 42},
                         spec={"checkpointing": {"intervalSteps": INTERVAL, "keep": 2},
                               "dataset": {"train": f"file://{train_file}", "validationSplit": "0.05"}})
    started = time.perf_counter()
    code = execute(config, work_dir=work / "run")
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"trainer exited {code}: {Path(os.environ['KUBETUNE_TERMINATION_LOG']).read_text()}")
    history = [json.loads(x) for x in (work / "out/team-a/bench/metrics.jsonl").read_text().splitlines()]
    runtime = next(h["train_runtime"] for h in reversed(history) if "train_runtime" in h)
    return runtime / steps, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="kt-bench-overhead-"))
    os.environ.setdefault("KUBETUNE_TERMINATION_LOG", str(tmp / "termination-log"))
    os.environ.setdefault("KUBETUNE_METRICS_PORT", "0")
    import logging

    import datasets
    import transformers

    logging.basicConfig(level=logging.WARNING)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    model_dir = build_tiny_model(tmp / "model")
    records = chat_records(256)
    train_file = write_jsonl(tmp / "train.jsonl", records)
    plain_steps, our_steps, plain_walls, our_walls = [], [], [], []
    for run in range(args.runs):
        step, wall = plain_trl(model_dir, records, args.steps, tmp / f"plain{run}")
        plain_steps.append(step)
        plain_walls.append(wall)
        step, wall = ours(model_dir, train_file, args.steps, tmp / f"ours{run}")
        our_steps.append(step)
        our_walls.append(wall)
        print(f"run {run + 1}: plain {plain_steps[-1] * 1000:.1f} ms/step, ours {our_steps[-1] * 1000:.1f} ms/step",
              flush=True)
    plain, mine = statistics.median(plain_steps), statistics.median(our_steps)
    print(f"steps per run: {args.steps}, runs: {args.runs}, torch threads: {__import__('torch').get_num_threads()}")
    print(f"plain TRL SFTTrainer : {plain * 1000:7.1f} ms/step (median), end-to-end {statistics.median(plain_walls):.1f} s")
    print(f"kubetune trainer     : {mine * 1000:7.1f} ms/step (median), end-to-end {statistics.median(our_walls):.1f} s")
    paired = statistics.median(o / p for o, p in zip(our_steps, plain_steps))
    print(f"ratio ours/plain per step: {mine / plain:.3f} (medians), {paired:.3f} (median of per-run ratios)"
          "  (goal <= 1.03)")


if __name__ == "__main__":
    main()
