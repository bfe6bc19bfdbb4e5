"""Peak memory per rank of a sharded (FSDP) run vs a data-parallel (DDP) one, same model, 2 ranks on CPU (figures,
not a test).

Each run is the kubetune trainer's own setup: `plan_training` with the strategy (kubetune_trainer/sharding.py's
FSDP arguments, or none for DDP) and `run.build_trainer` (which wraps the trainer class for FSDP on CPU), a full
fine-tune with AdamW, started by the real torchrun with gloo (2 processes, one thread each). The model is a
randomly initialised Qwen2 built here from a config (default ~200 M parameters, ~0.8 GB in fp32: parameters,
gradients and AdamW state dominate, as in the runs FSDP is for), with the tiny test tokenizer.

Memory is measured as tests/trainer/memory_probe.py does: anonymous resident memory (/proc/self/statm resident -
shared: what tensors hold, not the library pages the kernel may drop and re-read), sampled every 0.5 ms by a thread
in each rank from the start of the second optimizer step (AdamW's moments exist) to the end of training, with
glibc told to give every freed block above 64 KiB back (MALLOC_MMAP_THRESHOLD_). Per rank it prints the peak, and
the peak above the rank's floor (anonymous memory after the imports, before the model is loaded: Python, torch,
the tokenizer and data); the figure is the larger rank's peak, FSDP / DDP, per round.

Method (bench/_stats.py): --runs rounds interleaved ABBA (ddp, fsdp, fsdp, ddp, ...); the ratio of each round;
min / median / max and NOISY when their range exceeds the gap between the median and the goal (<= 0.6).

    .venv/bin/python bench/fsdp.py [--runs 3] [--hidden 1024] [--layers 12] [--intermediate 4096] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from _stats import Goal, interleaved, report  # noqa: E402

GOAL = Goal(0.6, at_most=True)
MIB = 2**20


def anonymous() -> int:
    from tests.trainer.memory_probe import anonymous as probe

    return probe()


class Sampler:
    """A TrainerCallback: peak anonymous memory from the start of the second step to the end of training."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self
        self.peak, self.started, self.stop = 0, threading.Event(), threading.Event()

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step >= 1 and not outer.started.is_set():
                    outer.started.set()
                    threading.Thread(target=outer._sample, daemon=True).start()

            def on_train_end(self, args, state, control, **kwargs):
                outer.stop.set()

        self.callback = Callback()

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, anonymous())
            time.sleep(0.0005)


def worker(strategy: str, model_dir: Path, steps: int, out: Path) -> None:
    """One rank (started by torchrun)."""
    import torch

    torch.set_num_threads(1)
    from kubetune.api.finetunejob import FineTuneJobSpec
    from kubetune.api.validation import parse
    from kubetune_trainer.plan import Facts, plan_training
    from kubetune_trainer.run import build_trainer
    from tests.fixtures.tiny_data import chat_records
    from transformers import AutoModelForCausalLM, AutoTokenizer, logging as hf_logging

    hf_logging.set_verbosity_error()
    rank = int(os.environ["RANK"])
    records = chat_records(64)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    spec = parse(FineTuneJobSpec, {"baseModel": {"uri": f"file://{model_dir}"}, "dataset": {"train": "file:///d.jsonl"},
                                   "adapter": {"type": "full"}, "hyperparameters": {
                                       "batchSize": 1, "maxLength": 64, "maxSteps": steps, "learningRate": "1e-4",
                                       "warmupRatio": "0", "lrScheduler": "constant"}})
    with tempfile.TemporaryDirectory() as work:
        facts = Facts(output_dir=work, train_examples=len(records), device="cpu", chat=True, assistant_masks=True,
                      has_eval=False, parallelism=strategy)
        plan = plan_training(spec, facts)
        plan.args.update(save_strategy="no", eval_strategy="no", eval_steps=None, logging_steps=steps)
        floor = anonymous()
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        trainer = build_trainer(plan, model, tokenizer, records, records[:2])
        sampler = Sampler()
        trainer.add_callback(sampler.callback)
        trainer.train()
        sharded = bool(getattr(trainer, "is_fsdp_enabled", False))
    out.with_name(f"{out.name}.rank{rank}").write_text(json.dumps(
        {"rank": rank, "floor": floor, "peak": sampler.peak, "fsdp": sharded, "strategy": strategy}))


def one_run(strategy: str, model_dir: Path, steps: int, tmp: Path, run_id: str) -> list[dict]:
    out = tmp / f"{run_id}-{strategy}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer-image"), str(ROOT / "storage"),
                                          str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(Path(__file__)),
           "--worker", strategy, "--model", str(model_dir), "--steps", str(steps), "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{strategy} run failed:\n{done.stderr[-4000:]}")
    ranks = [json.loads(out.with_name(f"{out.name}.rank{r}").read_text()) for r in (0, 1)]
    if any(r["fsdp"] != (strategy == "fsdp") for r in ranks):
        raise SystemExit(f"{strategy} run: the Trainer's FSDP state is not what was asked: {ranks}")
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--worker", choices=["ddp", "fsdp"])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.steps, args.out)
        return

    from tests.fixtures.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-fsdp-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = build_tiny_model(tmp / "model", hidden=args.hidden, layers=args.layers, heads=8,
                                     intermediate=args.intermediate)
        params = json.loads((model_dir / "KUBETUNE_TINY_MODEL.json").read_text())["params"]
        print(f"model: Qwen2, hidden {args.hidden}, {args.layers} layers, intermediate {args.intermediate}: "
              f"{params / 1e6:.0f} M parameters, {params * 4 / 2**30:.2f} GiB in fp32; full fine-tune, AdamW, 2 ranks "
              f"(gloo), 1 thread each, {args.steps} steps, batch 1 x 64 tokens; load average {os.getloadavg()[0]:.1f}")
        peaks: dict[str, list[float]] = {"ddp": [], "fsdp": []}
        above: dict[str, list[float]] = {"ddp": [], "fsdp": []}
        for round_, strategy in interleaved(["ddp", "fsdp"], args.runs):
            ranks = one_run(strategy, model_dir, args.steps, tmp, f"r{round_}")
            peaks[strategy].append(max(r["peak"] for r in ranks))
            above[strategy].append(max(r["peak"] - r["floor"] for r in ranks))
            print(f"round {round_} {strategy:4}: " + "; ".join(
                f"rank {r['rank']} peak {r['peak'] / MIB:.0f} MiB (floor {r['floor'] / MIB:.0f}, above it "
                f"{(r['peak'] - r['floor']) / MIB:.0f})" for r in ranks), flush=True)
        for strategy in ("ddp", "fsdp"):
            print(f"{strategy}: peak per rank median {statistics.median(peaks[strategy]) / MIB:.0f} MiB, above the "
                  f"floor {statistics.median(above[strategy]) / MIB:.0f} MiB")
        report("peak memory per rank, FSDP / DDP", peaks["ddp"], peaks["fsdp"], GOAL)
        report("peak memory per rank above the floor, FSDP / DDP", above["ddp"], above["fsdp"], GOAL)


if __name__ == "__main__":
    main()
