"""Overhead of the kubetune trainer over a plain TRL SFTTrainer script (figures, not a test).

Same tiny model (tests/fixtures/tiny_model.py), same data and held-out split, same settings (LoRA r16
all-linear, batch 8, max_length 128, packing off so both use TRL's own collator, eval + checkpoint
every 50 steps) in one process. Ours adds: progress reporting (file mode), the Prometheus endpoint,
checkpoint upload to file:// storage with COMPLETE markers and pruning.

Method (bench/_stats.py): the same torch threads (default 1) and CPU affinity for both; one discarded
warm-up run of each; then --runs runs of each interleaved ABBA (plain ours, ours plain, ...). A callback
times every optimizer step; the first --skip steps of each run are discarded. Figures per run:
- per step: the median wall time between consecutive step ends (the steady step; ours adds its
  per-step callback and progress reporting);
- per step, CPU time: the same with the process's CPU time (all its threads), which a neighbour on a
  shared machine inflates far less than the wall clock;
- per step incl. eval+checkpoints: wall time from the end of step --skip to the end of training over
  the steps in between (adds the evaluations and checkpoint saves, and ours' uploads, every 50 steps).
Ratio ours / plain per run (same round), goal <= 1.03: min / median / max of the per-run ratios, and
NOISY when their range exceeds the gap between the median and the goal. Also the end-to-end wall of
each (load, train, evaluate, save), and how much of the wall time the process had the CPU.

    .venv/bin/python bench/trainer_overhead.py [--steps 200] [--runs 10] [--skip 10] [--threads 1] [--cpus auto]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _stats import (Goal, interleaved, report, report_cpu_share, trainer_bench,  # noqa: E402
                    step_timer, timing_kubetune_trainer)

INTERVAL = 50
GOAL = Goal(1.03, at_most=True)
SETTINGS = dict(per_device_train_batch_size=8, per_device_eval_batch_size=8, learning_rate=3e-3,
                lr_scheduler_type="constant", warmup_steps=0.0, max_length=128, seed=42, data_seed=42)


def plain_trl(model_dir: Path, records: list[dict], steps: int, out: Path, timer) -> float:
    """The script a user would write with TRL directly. Returns the end-to-end seconds."""
    started = time.perf_counter()
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from kubetune_trainer.data import split  # the same held-out examples as the trainer

    train, held = split(records, 0.05, seed=42)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = SFTConfig(output_dir=str(out), max_steps=steps, logging_first_step=True,
                     logging_steps=max(1, min(10, steps // 50)),  # what the trainer's plan picks for these steps
                     save_strategy="steps", save_steps=INTERVAL, save_total_limit=1, eval_strategy="steps",
                     eval_steps=INTERVAL, report_to="none", disable_tqdm=True, use_cpu=True, bf16=False,
                     activation_checkpointing=False, dataloader_pin_memory=False, packing=False,
                     assistant_only_loss=True, include_num_input_tokens_seen="non_padding", **SETTINGS)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(train),
                         eval_dataset=Dataset.from_list(held), processing_class=tokenizer, peft_config=lora)
    trainer.add_callback(timer)
    # the Trainer prints its logs (every logging step) as a user's script would; not onto this bench's output
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        trainer.evaluate()  # like the trainer's baseline evaluation
        trainer.train()
        trainer.evaluate()
        trainer.save_model(str(out / "final"))
    return time.perf_counter() - started


def ours(model_dir: Path, train_file: Path, steps: int, work: Path, timer) -> float:
    """The kubetune trainer, in process. Returns the end-to-end seconds."""
    from kubetune_trainer.main import execute
    from tests.trainer.helpers import make_config

    work.mkdir(parents=True, exist_ok=True)
    config = make_config(work / "config.json", job="bench", model=f"file://{model_dir}", train=f"file://{train_file}",
                         output=f"file://{work}/out", progress_file=work / "progress.jsonl",
                         hyperparameters={"maxSteps": steps, "packing": False, "seed": 42},
                         spec={"checkpointing": {"intervalSteps": INTERVAL, "keep": 2},
                               "dataset": {"train": f"file://{train_file}", "validationSplit": "0.05"}})
    started = time.perf_counter()
    with timing_kubetune_trainer(timer):
        code = execute(config, work_dir=work / "run")
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"trainer exited {code}: {Path(os.environ['KUBETUNE_TERMINATION_LOG']).read_text()}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each (after one warm-up run of each)")
    parser.add_argument("--skip", type=int, default=10, help="warm-up steps discarded at the start of each run")
    parser.add_argument("--threads", type=int, default=1, help="torch/OMP/MKL threads, the same for both")
    parser.add_argument("--cpus", default="auto", help="CPU affinity: auto (the last --threads CPUs), none, or 0,1,...")
    args = parser.parse_args()
    pinned, tmp, model_dir = trainer_bench(args.threads, args.cpus, "kt-bench-overhead-")
    from tests.fixtures.tiny_data import chat_records, write_jsonl
    records = chat_records(256)
    train_file = write_jsonl(tmp / "train.jsonl", records)

    def one(setting: str, name: str, steps: int):
        timer = step_timer()
        if setting == "plain":
            wall = plain_trl(model_dir, records, steps, tmp / name, timer)
        else:
            wall = ours(model_dir, train_file, steps, tmp / name, timer)
        return timer.record, wall

    started = time.perf_counter()
    for setting in ("plain", "ours"):  # imports, first-use caches, first checkpoint: not on a timed run
        one(setting, f"warmup-{setting}", max(INTERVAL, args.skip + 2))
    figures = {s: {"step": [], "cpu": [], "with_io": [], "wall": [], "share": []} for s in ("plain", "ours")}
    for r, setting in interleaved(["plain", "ours"], args.runs):
        record, wall = one(setting, f"{setting}{r}", args.steps)
        f = figures[setting]
        f["step"].append(record.median_step(args.skip))
        f["cpu"].append(record.median_step(args.skip, cpu=True))
        f["with_io"].append(record.mean_step(args.skip))
        f["wall"].append(wall)
        f["share"].append(record.cpu_share(args.skip))
        if len(figures["plain"]["wall"]) == len(figures["ours"]["wall"]):
            p, o = ({k: v[-1] * 1000 for k, v in figures[s].items()} for s in ("plain", "ours"))
            print(f"run {r + 1} ({'plain first' if r % 2 == 0 else 'ours first'}): per step plain {p['step']:.2f} ms, "
                  f"ours {o['step']:.2f} ms, x{o['step'] / p['step']:.3f}; CPU x{o['cpu'] / p['cpu']:.3f}; "
                  f"incl. eval+checkpoints x{o['with_io'] / p['with_io']:.3f}", flush=True)
    print(f"{args.steps} steps per run (first {args.skip} discarded), {args.runs} runs of each interleaved ABBA after "
          f"1 warm-up run of each, {pinned}; {time.perf_counter() - started:.0f} s")
    for setting, label in (("plain", "plain TRL SFTTrainer"), ("ours", "kubetune trainer    ")):
        f = {k: statistics.median(v) for k, v in figures[setting].items()}
        print(f"{label}: {f['step'] * 1000:6.2f} ms/step (median), CPU {f['cpu'] * 1000:6.2f} ms/step, "
              f"incl. eval+checkpoints {f['with_io'] * 1000:6.2f} ms/step, end-to-end {f['wall']:.1f} s")
    report_cpu_share(figures["plain"]["share"] + figures["ours"]["share"], args.threads)
    for key, label in (("step", "per step"), ("cpu", "per step, CPU time"),
                       ("with_io", "per step incl. eval+checkpoints")):
        report(f"{label}, ours/plain", figures["plain"][key], figures["ours"][key], GOAL)


if __name__ == "__main__":
    main()
