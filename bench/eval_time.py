"""Cost of spec.evaluation (docs/evaluation.md): wall time per 100 prompts on the tiny model, and its share of the job
(figures, not a test).

The same job twice, interleaved ABBA (bench/_stats.py): "plain" without spec.evaluation, "eval" with it: --prompts
chat prompts (the held-out style: a question, a one-word label), answered by the base model before training and
by the result after, batch 8, at most 16 new tokens, scored by exact_match, accuracy, macro_f1, bleu and rouge_l.
The tiny model of the tests (tests/fixtures/tiny_model.py), LoRA, --steps steps, file:// storage, in process,
the same torch threads and CPU affinity for both. Figures per run of "eval":
- evaluation seconds (status.evaluation.seconds: generation and scoring, both models) per 100 prompts per model;
- its share of that job's end-to-end wall time;
- the job's wall time against the "plain" job of the same round (ratio, no goal: NOISY when the runs disagree by
  more than 10%).

    .venv/bin/python bench/eval_time.py [--prompts 100] [--steps 40] [--runs 4] [--threads 1] [--cpus auto]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _stats import Goal, interleaved, report, trainer_bench  # noqa: E402

WORDS = ["cat", "dog", "bird", "fish", "tree", "sun", "moon", "star", "sea", "river", "sky", "flower"]
ADJECTIVES = ["fast", "slow", "big", "small", "green", "red", "blue", "white"]


def prompts(n: int) -> list[tuple[str, str]]:
    pairs = [(f"Is the {w} {a}?", "good" if (i + j) % 2 else "bad")
             for i, w in enumerate(WORDS) for j, a in enumerate(ADJECTIVES)]
    return [pairs[i % len(pairs)] for i in range(n)]


def job(model_dir: Path, train: Path, eval_file: Path | None, steps: int, work: Path) -> tuple[float, dict]:
    """One in-process trainer run. -> (end-to-end seconds, termination report)."""
    from kubetune_trainer.main import execute
    from tests.trainer.helpers import make_config

    work.mkdir(parents=True, exist_ok=True)
    spec = {"checkpointing": {"intervalSteps": steps}}
    if eval_file is not None:
        spec["evaluation"] = {"prompts": f"file://{eval_file}", "maxPrompts": 10000, "maxNewTokens": 16, "batchSize": 8,
                              "metrics": ["exact_match", "accuracy", "macro_f1", "bleu", "rouge_l"],
                              "labelPattern": r"\b(good|bad)\b"}
    config = make_config(work / "config.json", job="bench", model=f"file://{model_dir}", train=f"file://{train}",
                         output=f"file://{work}/out", hyperparameters={"maxSteps": steps}, spec=spec)
    started = time.perf_counter()
    code = execute(config, work_dir=work / "run")
    wall = time.perf_counter() - started
    text = Path(os.environ["KUBETUNE_TERMINATION_LOG"]).read_text()
    if code != 0:
        raise SystemExit(f"trainer exited {code}: {text}")
    return wall, json.loads(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100, help="evaluation prompts")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per job")
    parser.add_argument("--runs", type=int, default=4, help="timed runs of each (after one warm-up run of each)")
    parser.add_argument("--threads", type=int, default=1, help="torch/OMP/MKL threads, the same for both")
    parser.add_argument("--cpus", default="auto", help="CPU affinity: auto (the last --threads CPUs), none, or 0,1,...")
    args = parser.parse_args()
    pinned, tmp, model_dir = trainer_bench(args.threads, args.cpus, "kt-bench-eval-")
    from tests.fixtures.tiny_data import write_jsonl
    pairs = prompts(args.prompts)
    train = write_jsonl(tmp / "train.jsonl", [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                                              for q, a in prompts(256)])
    eval_file = write_jsonl(tmp / "eval.jsonl", [{"prompt": q, "reference": a} for q, a in pairs])

    def one(setting: str, name: str):
        return job(model_dir, train, eval_file if setting == "eval" else None, args.steps, tmp / name)

    started = time.perf_counter()
    for setting in ("plain", "eval"):  # imports and first-use caches: not on a timed run
        one(setting, f"warmup-{setting}")
    walls: dict[str, list[float]] = {"plain": [], "eval": []}
    per_100, shares = [], []
    for r, setting in interleaved(["plain", "eval"], args.runs):
        wall, report_ = one(setting, f"{setting}{r}")
        walls[setting].append(wall)
        if setting == "eval":
            evaluation = report_["evaluation"]
            scored = evaluation["task"]["prompts"]
            per_100.append(evaluation["seconds"] / 2 / scored * 100)  # two models answered `scored` prompts each
            shares.append(evaluation["seconds"] / wall)
        if len(walls["plain"]) == len(walls["eval"]):
            print(f"run {r + 1} ({'plain first' if r % 2 == 0 else 'eval first'}): job plain {walls['plain'][-1]:.2f} s, "
                  f"with evaluation {walls['eval'][-1]:.2f} s; evaluation {per_100[-1]:.2f} s per 100 prompts per model, "
                  f"{shares[-1]:.1%} of the job", flush=True)
    print(f"{args.prompts} prompts x 2 models (base before, result after), batch 8, <= 16 new tokens, {args.steps} "
          f"training steps; {args.runs} runs of each interleaved ABBA after 1 warm-up run of each, {pinned}; "
          f"{time.perf_counter() - started:.0f} s")
    print(f"evaluation per 100 prompts per model: median {statistics.median(per_100):.2f} s "
          f"(min {min(per_100):.2f} / max {max(per_100):.2f}, spread {max(per_100) - min(per_100):.2f} s over {len(per_100)} runs)")
    print(f"evaluation share of the job's wall time: median {statistics.median(shares):.1%} "
          f"(min {min(shares):.1%} / max {max(shares):.1%})")
    report("job wall time, with evaluation / without", walls["plain"], walls["eval"], Goal(None))


if __name__ == "__main__":
    main()
