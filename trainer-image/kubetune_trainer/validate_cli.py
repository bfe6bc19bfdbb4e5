"""`kubetune data validate FILE... --method M [--model DIR_OR_URI] ...`: the pre-flight check on local files.

Prints the format found, counts, token statistics (with --model), truncation at --max-length, the planned steps,
the memory estimate and the same line-numbered errors as the trainer; exit 1 on any error (or when the estimate
does not fit --gpu-memory). Streams the records: memory grows by one integer per example.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.memory import ADAPTER_LABELS, MemoryEstimate, gib, params_text, parse_bytes
from kubetune.api.methods import FORMATS, METHODS
from kubetune.api.preflight import PreflightReport, SplitReport
from kubetune.api.validation import SpecError, parse

SHOWN_ERRORS = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `kubetune data validate` (kubetune/cli.py registers the command)."""
    parser.add_argument("files", nargs="+", type=Path, help="data files (.jsonl, .json, .csv, .parquet, .txt)")
    parser.add_argument("--method", required=True, choices=list(METHODS), help="training method (method.type)")
    parser.add_argument("--format", default="auto", choices=["auto", *FORMATS], help="dataset.format (default auto)")
    parser.add_argument("--validation", nargs="+", type=Path, default=None, help="held-out files (dataset.validation)")
    parser.add_argument("--model", default=None, help="base model: a local folder or a URI (hf://, s3://, pvc://); "
                        "only its config.json and tokenizer are read. Without it: no token counts, no memory estimate")
    parser.add_argument("--max-length", type=int, default=None, help="hyperparameters.maxLength (default 2048)")
    parser.add_argument("--batch-size", type=int, default=None, help="hyperparameters.batchSize (default: automatic)")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--adapter", default="lora", choices=list(ADAPTER_LABELS), help="adapter.type (default lora)")
    parser.add_argument("--rank", type=int, default=None, help="adapter.rank (default 16)")
    parser.add_argument("--gpus", type=int, default=1, help="resources.gpus per node (0: CPU, no GPU estimate)")
    parser.add_argument("--nodes", type=int, default=1, help="resources.nodes")
    parser.add_argument("--gpu-memory", default=None, help="memory of one GPU, e.g. 80Gi: check that training fits")
    parser.add_argument("--json", action="store_true", help="print the report (kubetune.api.preflight) as JSON")


def _spec(args: argparse.Namespace, model_uri: str) -> FineTuneJobSpec:
    hyper = {k: v for k, v in {"maxLength": args.max_length, "batchSize": args.batch_size, "epochs": args.epochs,
                               "gradientAccumulationSteps": args.gradient_accumulation_steps,
                               "maxSteps": args.max_steps}.items() if v is not None}
    adapter = {"type": args.adapter} | ({"rank": args.rank} if args.rank else {})
    raw = {"baseModel": {"uri": model_uri}, "dataset": {"train": f"file://{args.files[0].resolve()}", "format": args.format},
           "method": {"type": args.method}, "adapter": adapter, "hyperparameters": hyper,
           "resources": {"gpus": args.gpus, "nodes": args.nodes}}
    return parse(FineTuneJobSpec, raw, prefix="arguments")


def _model(value: str | None, scratch: Path) -> tuple[str, Path | None]:
    """(baseModel.uri, folder holding config.json + tokenizer)."""
    from .preflight import fetch_model_metadata

    if value is None:
        return "file:///no-model-given", None
    if "://" not in value:
        folder = Path(value).resolve()
        if not (folder / "config.json").is_file():
            raise SystemExit(f"--model {value}: no config.json in that folder")
        return f"file://{folder}", folder
    return value, fetch_model_metadata(value, None, scratch)


def _split_lines(name: str, split: SplitReport, max_length: int) -> list[str]:
    lines = [f"{name}: {split.examples} examples" + (f" of {split.records} records, {split.invalid} invalid" if split.records else "")]
    if split.token_stats:
        s = split.token_stats
        lines.append(f"  tokens {split.tokens:,}: min {s.min} / median {s.median} / p95 {s.p95} / max {s.max} "
                     f"(mean {s.mean}); {split.truncated} over maxLength {max_length}")
    return lines


def _memory_lines(memory: MemoryEstimate, adapter: str) -> list[str]:
    m = memory
    ckpt = "with" if m.gradient_checkpointing else "without"
    other = m.peak_without_checkpointing_bytes if m.gradient_checkpointing else m.peak_with_checkpointing_bytes
    return [f"memory per GPU ({ADAPTER_LABELS[adapter]}, {params_text(m.parameters)} params, "
            f"{params_text(m.trainable_parameters)} trainable, {m.tokens_per_micro_batch} tokens per micro-batch): "
            f"peak {gib(m.peak_bytes)} {ckpt} gradient checkpointing ({gib(other)} {'without' if ckpt == 'with' else 'with'})",
            f"  weights {gib(m.weights_bytes)}, adapter {gib(m.adapter_bytes)}, gradients {gib(m.gradients_bytes)}, "
            f"optimizer {gib(m.optimizer_bytes)}, activations {gib(m.activations_checkpointed_bytes)} checkpointed / "
            f"{gib(m.activations_bytes)} not, logits {gib(m.logits_bytes)}, CUDA + allocator {gib(m.overhead_bytes)}",
            *(f"  note: {n}" for n in m.notes)]


def render(report: PreflightReport, spec: FineTuneJobSpec) -> str:
    """The report for people."""
    lines = [f"format: {report.format} (method {report.method})"]
    if report.train:
        lines += _split_lines("train", report.train, report.max_length or 0)
    if report.validation:
        lines += _split_lines("held-out", report.validation, report.max_length or 0)
    if report.planned_steps is not None:
        lines.append(f"planned steps: {report.planned_steps}" + (
            f"; ≈ {report.estimated_training_tokens:,} training tokens" if report.estimated_training_tokens else ""))
    if report.memory:
        lines += _memory_lines(report.memory, spec.adapter.type)
    for option in report.alternatives:
        lines.append(f"  {ADAPTER_LABELS[option.adapter]}: {gib(option.peak_bytes)}"
                     + ("" if option.fits is None else " (fits)" if option.fits else " (does not fit)"))
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [e.text() for e in report.errors[:SHOWN_ERRORS]]
    if report.error_count > SHOWN_ERRORS:
        lines.append(f"... and {report.error_count - SHOWN_ERRORS} more problems")
    lines.append(("OK: " if report.passed else "FAILED: ") + report.message)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .errors import UserError
    from .preflight import Inputs, analyse

    try:
        budget = parse_bytes(args.gpu_memory)
    except ValueError as exc:
        print(f"--gpu-memory: {exc}", file=sys.stderr)
        return 2
    missing = [str(f) for f in [*args.files, *(args.validation or [])] if not f.is_file()]
    if missing:
        print(f"no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kubetune-validate-") as scratch:
        try:
            model_uri, model_dir = _model(args.model, Path(scratch))
            spec = _spec(args, model_uri)
            report = analyse(spec, Inputs(train_files=list(args.files), validation_files=args.validation,
                                          model_dir=model_dir, gpu_memory=budget))
        except SpecError as exc:
            print("\n".join(exc.problems), file=sys.stderr)
            return 2
        except UserError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            for problem in getattr(exc, "problems", [])[10:]:
                print(f"  {problem}", file=sys.stderr)
            return 1
    seconds = time.perf_counter() - start
    records = (report.train.records if report.train else 0) + (report.validation.records if report.validation else 0)
    print(report.model_dump_json(by_alias=True, exclude_none=True, indent=2) if args.json else render(report, spec))
    print(f"checked {records} records in {seconds:.2f} s ({records / seconds:,.0f} records/s)", file=sys.stderr)
    return 0 if report.passed else 1
