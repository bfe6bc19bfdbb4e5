"""Useful (non-padding) tokens per second with packing vs without (figures, not a test).

The kubetune trainer on the tiny model (tests/fixtures/tiny_model.py) with variable-length chat data
(answers of 2 to ~200 words, long-tailed like real chat data), LoRA, batch 8, max_length 512, one
epoch over the same --examples in every setting (so every setting trains the same useful tokens; a
packed step holds ~13 unpacked ones). Tokens counted are non-padding input tokens (the Trainer's
num_input_tokens_seen), over the steady steps: the first 10% of each run's steps are discarded.

Three settings:
- no packing:            each example padded to the longest in its batch
- packing (kubetune):    best-fit-decreasing packing, rows kept as rows (RowPackedCollator; the default
                         without a FlashAttention varlen kernel, e.g. on CPU)
- packing (TRL flat):    TRL's padding-free layout, the batch flattened into one row (what TRL does
                         by itself; efficient only with FlashAttention)

Method (bench/_stats.py): the same torch threads (default 1) and CPU affinity for all; one discarded
warm-up run of each on a few examples; then --runs rounds interleaved ABBA (forward, reversed, ...).
Useful tokens per second of wall time, and per second of the process's CPU time (which a neighbour on
a shared machine inflates far less). Ratio to no packing per round: min / median / max, and NOISY when
their range exceeds the gap between the median and the goal (packing (kubetune) >= 1.5x), or 10% of
the median for TRL flat (no goal).

    .venv/bin/python bench/packing.py [--examples 800] [--runs 6] [--max-length 512] [--threads 1] [--cpus auto]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _stats import (Goal, interleaved, report, report_cpu_share, trainer_bench,  # noqa: E402
                    step_timer, timing_kubetune_trainer)

LABELS = {"none": "no packing", "kubetune": "packing (kubetune)", "trl-flat": "packing (TRL flat)"}
GOALS = {"kubetune": Goal(1.5, at_most=False), "trl-flat": Goal(None)}
WARMUP_EXAMPLES = 120
SKIP_FRACTION = 0.1


def chat_data(n: int, seed: int = 0) -> list[dict]:
    from tests.fixtures.tiny_model import WORDS

    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [{"messages": [{"role": "user", "content": words(rng.randint(3, 12))},
                          {"role": "assistant", "content": words(min(200, int(rng.paretovariate(1.3) * 6) + 1))}]}
            for _ in range(n)]


def run(setting: str, model_dir: Path, train: Path, work: Path, max_length: int, timer):
    """One epoch of the kubetune trainer in this process. -> the timer's Steps."""
    from kubetune_trainer import collate
    from kubetune_trainer import run as run_module
    from kubetune_trainer.main import execute
    from tests.trainer.helpers import make_config

    run_module.needs_row_packing = (lambda model: False) if setting == "trl-flat" else collate.needs_row_packing
    work.mkdir(parents=True, exist_ok=True)
    config = make_config(work / "config.json", job="bench", model=f"file://{model_dir}", train=f"file://{train}",
                         output=f"file://{work}/out",
                         hyperparameters={"maxSteps": None, "epochs": 1, "packing": setting != "none",
                                          "maxLength": max_length},
                         spec={"checkpointing": {"intervalSteps": 100000}})
    with timing_kubetune_trainer(timer):
        code = execute(config, work_dir=work / "run")
    if code != 0:
        raise SystemExit(f"trainer exited {code}: {Path(os.environ['KUBETUNE_TERMINATION_LOG']).read_text()}")
    return timer.record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=800, help="training examples (one epoch of them per run)")
    parser.add_argument("--runs", type=int, default=6, help="timed rounds (after one warm-up run of each setting)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--settings", default="none,kubetune,trl-flat", help="none first: the baseline")
    parser.add_argument("--threads", type=int, default=1, help="torch/OMP/MKL threads, the same for all")
    parser.add_argument("--cpus", default="auto", help="CPU affinity: auto (the last --threads CPUs), none, or 0,1,...")
    args = parser.parse_args()
    settings = args.settings.split(",")
    if settings[0] != "none" or not set(settings) <= set(LABELS):
        raise SystemExit(f"--settings: 'none' first, then any of {', '.join(list(LABELS)[1:])}")
    pinned, tmp, model_dir = trainer_bench(args.threads, args.cpus, "kt-bench-packing-", "off")
    from tests.fixtures.tiny_data import write_jsonl
    records = chat_data(args.examples)
    train = write_jsonl(tmp / "train.jsonl", records)
    warmup = write_jsonl(tmp / "warmup.jsonl", records[:WARMUP_EXAMPLES])

    started = time.perf_counter()
    for setting in settings:  # imports, first-use caches and kernels: not on a timed run
        run(setting, model_dir, warmup, tmp / f"warmup-{setting}", args.max_length, step_timer())
    rates: dict[str, list[float]] = {s: [] for s in settings}
    cpu_rates: dict[str, list[float]] = {s: [] for s in settings}
    shares: list[float] = []
    steps: dict[str, int] = {}
    for i, setting in interleaved(settings, args.runs):
        record = run(setting, model_dir, train, tmp / f"{setting}{i}", args.max_length, step_timer())
        skip = max(1, math.ceil(SKIP_FRACTION * len(record.times)))
        rates[setting].append(record.tokens_per_second(skip))
        cpu_rates[setting].append(record.tokens_per_second(skip, cpu=True))
        shares.append(record.cpu_share(skip))
        steps[setting] = len(record.times)
        if all(len(r) == i + 1 for r in rates.values()):
            print(f"run {i + 1} ({', '.join(settings if i % 2 == 0 else reversed(settings))}): useful tokens/s "
                  + ", ".join(f"{s} {rates[s][-1]:.0f}" + (f" x{rates[s][-1] / rates['none'][-1]:.2f} "
                                                           f"(CPU x{cpu_rates[s][-1] / cpu_rates['none'][-1]:.2f})"
                                                           if s != "none" else "") for s in settings), flush=True)
    print(f"{args.examples} examples, one epoch per run, batch 8, max_length {args.max_length}, {args.runs} runs of "
          f"each interleaved ABBA after 1 warm-up run of each, first {SKIP_FRACTION:.0%} of the steps discarded, "
          f"{pinned}; {time.perf_counter() - started:.0f} s")
    base, cpu_base = statistics.median(rates["none"]), statistics.median(cpu_rates["none"])
    for setting in settings:
        rate, cpu_rate = statistics.median(rates[setting]), statistics.median(cpu_rates[setting])
        print(f"{LABELS[setting]:18s}: {rate:6.0f} useful tokens/s x{rate / base:.2f}, per CPU second {cpu_rate:6.0f} "
              f"x{cpu_rate / cpu_base:.2f}  ({steps[setting]} steps per run, medians)")
    report_cpu_share(shares, args.threads)
    for setting in settings[1:]:
        report(f"{LABELS[setting]} / no packing, useful tokens/s", rates["none"], rates[setting], GOALS[setting])
        report(f"{LABELS[setting]} / no packing, useful tokens per CPU second", cpu_rates["none"], cpu_rates[setting],
               GOALS[setting])

if __name__ == "__main__":
    main()
