"""Records per second of the pre-flight data check (`kubetune data validate`) on a 100k-line JSONL file (figures,
not a test).

A chatml file of --records lines (1-4 turns, answers of 2 to ~120 words) is written once. Three settings, run in
interleaved rounds (bench/_stats.py `interleaved`: A B C, C B A, ...):
- json:     plain `json.loads` of every line (the floor: reading and parsing only)
- validate: kubetune_trainer.preflight.scan without a tokenizer (read, format check, normalise: every record)
- tokens:   preflight.analyse with the tiny model's tokenizer (tests/fixtures/tiny_model.py: a ByteLevel BPE fast
            tokenizer, ChatML template): the whole `kubetune data validate --model` path, steps and memory included

    .venv/bin/python bench/data_validate.py [--records 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _stats import interleaved, quiet_libraries  # noqa: E402

WORDS = "the a model data train token answer question small large quick slow learn batch step loss".split()


def write_file(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as out:
        for _ in range(n):
            messages = []
            for _turn in range(rng.randint(1, 4)):
                messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(3, 20)))})
                messages.append({"role": "assistant", "content": " ".join(rng.choices(WORDS, k=min(120, int(rng.paretovariate(1.2) * 2))))})
            out.write(json.dumps({"messages": messages}) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    quiet_libraries()
    from kubetune.api.validation import parse
    from kubetune.api.finetunejob import FineTuneJobSpec
    from kubetune_trainer import preflight
    from tests.fixtures.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = write_file(tmp_path / "train.jsonl", args.records)
        model = build_tiny_model(tmp_path / "model")
        spec = parse(FineTuneJobSpec, {"baseModel": {"uri": f"file://{model}"}, "dataset": {"train": f"file://{data}"},
                                       "method": {"type": "sft"}})

        def run(setting: str) -> int:
            if setting == "json":
                with data.open() as handle:
                    return sum(1 for line in handle if json.loads(line))
            if setting == "validate":
                return preflight.scan([data], fmt="auto", method="sft").records
            report = preflight.analyse(spec, preflight.Inputs(train_files=[data], model_dir=model, gpu_memory=80 * 2**30))
            assert report.passed, report.message
            return report.train.records

        settings = ["json", "validate", "tokens"]
        for setting in settings:  # warm-up: imports, the tokenizer, the page cache
            run(setting)
        rates: dict[str, list[float]] = {s: [] for s in settings}
        for _round, setting in interleaved(settings, args.rounds):
            start = time.perf_counter()
            records = run(setting)
            rates[setting].append(records / (time.perf_counter() - start))
        size = data.stat().st_size / 1e6
        print(f"{args.records} records, {size:.1f} MB, {args.rounds} interleaved rounds (records/s: median [min, max])")
        for setting in settings:
            r = rates[setting]
            print(f"  {setting:9s} {statistics.median(r):>10,.0f}  [{min(r):,.0f}, {max(r):,.0f}]  "
                  f"= {args.records / statistics.median(r):.2f} s per file")
        for setting in settings[1:]:
            ratios = [a / b for a, b in zip(rates["json"], rates[setting])]
            print(f"  {setting} / json time: median {statistics.median(ratios):.1f}x [{min(ratios):.1f}, {max(ratios):.1f}]")


if __name__ == "__main__":
    main()
