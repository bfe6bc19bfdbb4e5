"""Useful (non-padding) tokens per second with packing vs without (figures, not a test).

The kubetune trainer on the tiny model (tests/fixtures/tiny_model.py) with variable-length chat data
(answers of 2 to ~200 words, long-tailed like real chat data), LoRA, batch 8, max_length 512,
the same number of optimizer steps, runs interleaved. Tokens counted are non-padding input tokens
(Trainer's num_input_tokens_seen), time is the Trainer's train_runtime.

Three settings:
- no packing:            each example padded to the longest in its batch
- packing (kubetune):    best-fit-decreasing packing, rows kept as rows (RowPackedCollator; the default
                         without a FlashAttention varlen kernel, e.g. on CPU)
- packing (TRL flat):    TRL's padding-free layout, the batch flattened into one row (what TRL does
                         by itself; efficient only with FlashAttention)

Goal: packing (kubetune) >= 1.5x no packing.

    .venv/bin/python bench/packing.py [--steps 20] [--runs 2] [--max-length 512] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.tiny_data import write_jsonl  # noqa: E402
from tests.fixtures.tiny_model import WORDS, build_tiny_model  # noqa: E402


def chat_data(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [{"messages": [{"role": "user", "content": words(rng.randint(3, 12))},
                          {"role": "assistant", "content": words(min(200, int(rng.paretovariate(1.3) * 6) + 1))}]}
            for _ in range(n)]


def run(setting: str, model_dir: Path, train: Path, steps: int, work: Path, max_length: int) -> tuple[float, int, float]:
    from kubetune_trainer import run as run_module
    from kubetune_trainer.main import execute
    from tests.trainer.helpers import make_config

    run_module.needs_row_packing = (lambda model: False) if setting == "trl-flat" else _row_packing
    work.mkdir(parents=True, exist_ok=True)
    config = make_config(work / "config.json", job="bench", model=f"file://{model_dir}", train=f"file://{train}",
                         output=f"file://{work}/out",
                         hyperparameters={"maxSteps": steps, "packing": setting != "none", "maxLength": max_length},
                         spec={"checkpointing": {"intervalSteps": 100000}})
    code = execute(config, work_dir=work / "run")
    if code != 0:
        raise SystemExit(f"trainer exited {code}: {Path(os.environ['KUBETUNE_TERMINATION_LOG']).read_text()}")
    history = [json.loads(x) for x in (work / "out/team-a/bench/metrics.jsonl").read_text().splitlines()]
    end = next(h for h in reversed(history) if "train_runtime" in h)
    tokens = end["num_input_tokens_seen"]
    return tokens / end["train_runtime"], tokens, end["train_runtime"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--settings", default="none,kubetune,trl-flat")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="kt-bench-packing-"))
    os.environ.setdefault("KUBETUNE_TERMINATION_LOG", str(tmp / "termination-log"))
    os.environ.setdefault("KUBETUNE_METRICS_PORT", "off")
    import logging

    logging.basicConfig(level=logging.WARNING)
    from kubetune_trainer import run as run_module

    global _row_packing
    _row_packing = run_module.needs_row_packing
    model_dir = build_tiny_model(tmp / "model")
    records = chat_data(3000)
    train = write_jsonl(tmp / "train.jsonl", records)
    best: dict[str, tuple[float, int, float]] = {}
    for i in range(args.runs):
        for setting in args.settings.split(","):
            result = run(setting, model_dir, train, args.steps, tmp / f"{setting}{i}", args.max_length)
            print(f"run {i + 1} {setting:9s}: {result[0]:8.0f} useful tokens/s ({result[1]} tokens in {result[2]:.1f} s)",
                  flush=True)
            if setting not in best or result[0] > best[setting][0]:
                best[setting] = result
    base = best["none"][0]
    import torch

    print(f"steps {args.steps}, batch 8, max_length {args.max_length}, best of {args.runs} runs, "
          f"torch threads {torch.get_num_threads()}")
    for setting, label in (("none", "no packing"), ("kubetune", "packing (kubetune)"), ("trl-flat", "packing (TRL flat)")):
        if setting in best:
            print(f"{label:20s}: {best[setting][0]:8.0f} useful tokens/s  x{best[setting][0] / base:.2f}")
    if "kubetune" in best:
        print(f"packing speed-up: {best['kubetune'][0] / base:.2f}x  (goal >= 1.5x)")


_row_packing = None

if __name__ == "__main__":
    main()
