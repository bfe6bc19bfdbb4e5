"""Pre-flight: check a FineTuneJob on a CPU before any GPU is held (`python -m kubetune_trainer --preflight`).

Fetches the data and the base model's config and tokenizer (never the weights), streams every record through the
data readers and format checks of data.py / formats.py, counts tokens with the model's tokenizer (batched),
counts what maxLength truncates, plans the steps (plan.plan_training: the same plan the training Job makes) and
estimates peak GPU memory (kubetune.api.memory). The result is a kubetune.api.preflight.PreflightReport: in the
termination log (compact) and at <output>/<ns>/<job>/preflight/report.json (full). `kubetune data validate`
runs `analyse` on local files.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import math
import os
import shutil
import statistics
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from kubetune.api import exit_codes
from kubetune.api.constants import ENV_WORK_DIR
from kubetune.api.early_stopping import too_few_evaluations
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.memory import ModelShape, TrainingShape, alternatives, estimate, fit_message, parse_bytes
from kubetune.api.parallelism import decide, fsdp_estimate, fsdp_fit_message
from kubetune.api.preflight import (
    ENV_GPU_MEMORY,
    MAX_ERRORS,
    PREFLIGHT_DIR,
    REPORT_FILE,
    PreflightReport,
    RecordError,
    SplitReport,
    TokenStats,
)
from kubetune_storage import NotFound, Storage, open_store

from . import chat, data, formats
from .errors import UserError, termination_log_path

log = logging.getLogger(__name__)

# What a tokenizer and config need: never weights.
METADATA_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                  "tokenizer.model", "spiece.model", "chat_template.jinja", "chat_template.json")
FORMAT_SAMPLE = 2000  # records that decide `format: auto` when the method accepts several formats
TOKENIZE_BATCH = 512
PAIRED = {"dpo": 2, "orpo": 2}  # sequences per example in one batch (chosen and rejected)
REFERENCE_MODEL = {"dpo", "kto"}  # TRL keeps a frozen reference copy of a fully fine-tuned model


# ------------------------------------------------------------------------------------------- fetch


def fetch_model_metadata(uri: str, revision: str | None, dest: Path, storage: Storage | None = None) -> Path:
    """A folder holding the base model's config.json and tokenizer files only (no weights)."""
    from .fetch import _hub

    storage = storage or Storage()
    store = storage.open(_hub(uri, "model", revision) if uri.startswith("hf://") else uri)
    if store.local_path is not None:  # a folder on disk (pvc://, file://): nothing to copy
        folder = store.local_path
    else:
        try:
            names = [n for n in store.list("") if "/" not in n and any(fnmatch.fnmatch(n, p) for p in METADATA_FILES)]
        except NotFound as exc:
            raise UserError(f"base model {uri}: {str(exc).removeprefix(store.uri + ': ')}") from None
        for name in names:
            store.download(name, dest / name)
        folder = dest
    if not (folder / "config.json").is_file():
        raise UserError(f"base model {uri} is not a Hugging Face model folder (no config.json)")
    return folder


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise UserError(f"cannot load the tokenizer in {model_dir}: {exc}") from None
    tokenizer.model_max_length = 2**62  # counting only: no "longer than the maximum" warning per long example
    return tokenizer


# -------------------------------------------------------------------------------------------- scan


@dataclass
class Scan:
    """One split, streamed: counts, token lengths per valid example, the first errors."""

    files: list[str]
    format: str | None = None
    records: int = 0
    invalid: int = 0
    lengths: array = field(default_factory=lambda: array("l"))
    errors: list[RecordError] = field(default_factory=list)
    error_count: int = 0
    conversational: bool = False
    first: dict[str, Any] | None = None  # one normalised record (to learn how the method prepares rows)

    @property
    def examples(self) -> int:
        return self.records - self.invalid

    def problem(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(RecordError.parse(text))


class Tokens:
    """Token lengths of normalised records, in batches, rendered as the trainer renders them: tools, calls or weights
    by chat.render with the training template (checked as training checks it), other chat records by the model's
    template; prompt + each answer for preference/unpaired records (the longest counts). A plain record among tool
    records is counted with the model's own template (training uses TRL's variant there, where TRL has one)."""

    def __init__(self, tokenizer, into: array, model: str = "the base model"):
        self.tokenizer, self.into, self.model = tokenizer, into, model
        self.texts: list[str] = []
        self.owners: list[int] = []  # per text: which pending example
        self.pending = 0
        self.template: str | None = None  # chat.training_template, once a record needs it
        self.checked: set[str] = set()  # what chat.check_template has checked: "tools", "calls"

    def _need_template(self) -> None:
        if not self.tokenizer.chat_template:
            raise UserError("the tokenizer has no chat template, so it cannot train on chat data: use an "
                            "instruct/chat model, or text data")

    def _render(self, messages: list[dict], tools: list | None) -> str:
        self._need_template()
        return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)

    def _training_template(self, record: dict[str, Any]) -> str:
        """The template chat.py trains this record with; refuses (UserError) one that would drop its tools/calls."""
        self._need_template()
        self.template = self.template or chat.training_template(self.tokenizer)
        if (uses := chat.features(record)) - self.checked:
            chat.check_template(self.tokenizer, self.template, [record], self.model)
            self.checked |= uses
        return self.template

    def add(self, record: dict[str, Any]) -> list[str]:
        """Queue one valid record; -> problems (the model's chat template cannot render it)."""
        tools = record.get("tools")
        rendered = "messages" in record and chat.needs_rendering([record])
        template = self._training_template(record) if rendered else None
        try:
            if rendered:
                texts = [chat.render(self.tokenizer, template, record)]
            elif "messages" in record:
                texts = [self._render(record["messages"], tools)]
            elif "text" in record:
                texts = [record["text"] + (self.tokenizer.eos_token or "")]
            else:
                prompt = record["prompt"]
                answers = [record[k] for k in ("chosen", "rejected", "completion") if k in record]
                texts = [self._render(prompt + a, tools) if isinstance(prompt, list) else prompt + a for a in answers]
        except UserError as exc:
            if not rendered:
                raise
            return [str(exc)]  # chat.render: the template refused this conversation
        except Exception as exc:  # noqa: BLE001 - jinja raises anything a template author wrote (raise_exception)
            return [f"the model's chat template cannot render this record: {type(exc).__name__}: {exc}"]
        self.texts += texts
        self.owners += [self.pending] * len(texts)
        self.pending += 1
        if len(self.texts) >= TOKENIZE_BATCH:
            self.flush()
        return []

    def flush(self) -> None:
        if not self.pending:
            return
        ids = self.tokenizer(self.texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        longest = [0] * self.pending
        for owner, tokens in zip(self.owners, ids):
            longest[owner] = max(longest[owner], len(tokens))
        self.into.extend(longest)
        self.texts, self.owners, self.pending = [], [], 0


def _located(files: list[Path], fields: formats.Names) -> Iterator[tuple[str, Any, str | None]]:
    for path in files:
        yield from data.read_file(path, fields)


def scan(files: list[Path], *, fmt: str, method: str, tokenizer=None, role: str = "train",
         fields: formats.Names = formats.DEFAULT_NAMES, model: str = "the base model") -> Scan:
    """Stream every record of a split: read, check against the format, count tokens. Memory: one int per
    example and a FORMAT_SAMPLE-record buffer (the first records decide `format: auto` and check that the
    dataset.columns named are there; data.load looks at all records for both)."""
    result = Scan(files=[p.name for p in files])
    names = ", ".join(result.files)
    stream = _located(files, fields)
    buffered = list(itertools.islice(stream, FORMAT_SAMPLE))
    sample = [r for _, r, p in buffered if p is None]
    chosen: str | None = None
    if sample or fmt != "auto" or len(data.METHODS[method].formats) == 1:
        chosen = data.choose_format(fmt, method, sample, names, fields)
    if sample:
        data.check_names(chosen, fields, sample)
    tokens = Tokens(tokenizer, result.lengths, model) if tokenizer is not None else None
    for where, record, problem in itertools.chain(buffered, stream):
        result.records += 1
        if problem is None:
            if chosen is None:  # not one parseable record in the sample: this one decides
                chosen = data.choose_format(fmt, method, [record], names, fields)
            normalised, found = formats.check_record(chosen, record, fields)
            if not found and tokens is not None:
                found = tokens.add(normalised)
            if not found:
                result.first = result.first or normalised
                continue
            problem = found
        result.invalid += 1
        for text in ([problem] if isinstance(problem, str) else problem):
            result.problem(f"{where}: {text}")
    if tokens is not None:
        tokens.flush()
    if result.records == 0:
        raise UserError(f"{role} data {names} is empty")
    result.format = chosen
    result.conversational = chosen in formats.CHAT_FORMATS or bool(result.first and isinstance(result.first.get("prompt"), list))
    return result


# ----------------------------------------------------------------------------------------- analyse


def _stats(lengths: Iterable[int]) -> TokenStats | None:
    values = sorted(lengths)
    if not values:
        return None
    return TokenStats(min=values[0], median=int(statistics.median_low(values)), max=values[-1],
                      p95=values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)],
                      mean=round(sum(values) / len(values), 1))


def _split_report(scan_: Scan, lengths: list[int] | array, examples: int, max_length: int, counted: bool) -> SplitReport:
    return SplitReport(files=scan_.files, records=scan_.records, examples=examples, invalid=scan_.invalid,
                       tokens=sum(lengths) if counted else 0, token_stats=_stats(lengths) if counted else None,
                       truncated=sum(1 for n in lengths if n > max_length) if counted else 0)


@dataclass
class Inputs:
    """What `analyse` needs besides the spec: local data files, the model folder (config + tokenizer, or None)."""

    train_files: list[Path]
    validation_files: list[Path] | None = None
    model_dir: Path | None = None
    gpu_memory: int | None = None  # per-GPU budget in bytes
    warnings: list[str] = field(default_factory=list)


def analyse(spec: FineTuneJobSpec, inputs: Inputs) -> PreflightReport:
    """The whole check on local files: the report (passed false says why). Raises UserError only for what stops the
    check itself (no tokenizer, a format that cannot be detected)."""
    from .plan import Facts, plan_training

    hp, method = spec.hyperparameters, spec.method.type
    tokenizer = load_tokenizer(inputs.model_dir, spec.base_model.trust_remote_code) if inputs.model_dir else None
    fields = formats.Names.of(spec.dataset)
    model = spec.base_model.uri
    train = scan(inputs.train_files, fmt=spec.dataset.format, method=method, tokenizer=tokenizer, fields=fields,
                 model=model)
    held = (scan(inputs.validation_files, fmt=train.format or spec.dataset.format, method=method, tokenizer=tokenizer,
                 role="validation", fields=fields, model=model) if inputs.validation_files is not None else None)
    counted = tokenizer is not None
    errors = train.errors + (held.errors if held else [])
    error_count = train.error_count + (held.error_count if held else 0)
    report = PreflightReport(passed=False, method=method, format=train.format, max_length=hp.max_length,
                             errors=errors[:MAX_ERRORS], error_count=error_count, warnings=list(inputs.warnings))
    if held is not None:
        train_lengths, eval_lengths, n_train, n_eval = train.lengths, held.lengths, train.examples, held.examples
    else:
        fraction = float(Decimal(spec.dataset.validation_split)) if spec.dataset.validation_split else data.DEFAULT_VALIDATION_SPLIT
        if train.examples >= 2:
            kept, out = data.split(list(range(train.examples)), fraction, hp.seed)  # the trainer's own seeded split
        else:
            kept, out = list(range(train.examples)), []
        n_train, n_eval = len(kept), len(out)
        train_lengths = [train.lengths[i] for i in kept] if counted else []
        eval_lengths = [train.lengths[i] for i in out] if counted else []
    report.train = _split_report(train, train_lengths, n_train, hp.max_length, counted)
    report.validation = (_split_report(held, eval_lengths, n_eval, hp.max_length, counted) if held is not None else
                         SplitReport(files=train.files, examples=n_eval, tokens=sum(eval_lengths) if counted else 0,
                                     token_stats=_stats(eval_lengths) if counted else None,
                                     truncated=sum(1 for n in eval_lengths if n > hp.max_length)))
    if error_count:
        where = "; ".join(e.text() for e in errors[:3])
        report.message = (f"{error_count} problem(s) in {train.invalid + (held.invalid if held else 0)} of "
                          f"{train.records + (held.records if held else 0)} records (format {train.format}): {where}"
                          + (" ..." if error_count > 3 else ""))
        return report
    if train.examples < data.MIN_EXAMPLES:
        report.message = (f"train data {', '.join(train.files)} has only {train.examples} valid example(s); "
                          f"at least {data.MIN_EXAMPLES} are needed")
        return report
    if train.examples < data.WARN_EXAMPLES:
        report.warnings.append(f"train data has only {train.examples} examples (fewer than {data.WARN_EXAMPLES}): "
                               "expect overfitting")

    gpus = spec.resources.gpus
    facts = Facts(output_dir=tempfile.gettempdir(), train_examples=n_train, device="cuda" if gpus else "cpu",
                  bf16=bool(gpus), chat=train.conversational, has_eval=n_eval > 0)
    plan = plan_training(spec, facts)
    args = plan.args
    from .methods import TRAINERS

    rows_per_example = len(TRAINERS[method].prepare([train.first], hp.seed)) if train.first else 1
    split_long = args.get("packing_strategy") == "bfd_split"
    trained = [n if split_long else min(n, hp.max_length) for n in train_lengths]
    world = max(1, gpus) * spec.resources.nodes
    batch, accumulation = args["per_device_train_batch_size"], args["gradient_accumulation_steps"]
    rows = math.ceil(sum(trained) / hp.max_length) if args.get("packing") and counted else n_train * rows_per_example
    per_epoch = max(1, math.ceil(math.ceil(rows / (batch * world)) / accumulation))
    report.planned_steps = hp.max_steps or per_epoch * hp.epochs
    if hp.early_stopping and (problem := too_few_evaluations(
            report.planned_steps, spec.checkpointing.interval_steps, hp.early_stopping.patience,
            f"the {report.planned_steps} planned steps")):
        report.message = problem
        return report
    if counted:
        epochs_done = report.planned_steps / per_epoch
        report.estimated_training_tokens = round(sum(trained) * rows_per_example * epochs_done)

    ok = True
    if inputs.model_dir is not None:
        ok = _memory(spec, inputs, report, plan, train_lengths if counted else [], gpus)
    if not ok:
        return report
    report.passed = True
    summary = (f"{n_train} train / {n_eval} held-out examples ({train.format})"
               + (f", {report.train.tokens} tokens, {report.train.truncated} over maxLength {hp.max_length}" if counted else "")
               + f"; {report.planned_steps} steps")
    report.message = f"data valid: {summary}" + (f"; {report.message}" if report.message else "")
    return report


def training_shape(spec: FineTuneJobSpec, args: dict, sequence_length: int, gpu: bool) -> TrainingShape:
    """How one process trains (kubetune.api.memory), from the spec and the plan's TRL arguments."""
    adapter = spec.adapter
    return TrainingShape(
        adapter=adapter.type, rank=adapter.rank, target_modules=list(adapter.target_modules),
        lora_dropout=Decimal(adapter.dropout) > 0, precision="bf16" if gpu else "fp32",
        batch_size=args["per_device_train_batch_size"], sequence_length=sequence_length,
        sequences_per_example=PAIRED.get(spec.method.type, 1),
        reference_model=spec.method.type in REFERENCE_MODEL,
        gradient_checkpointing=bool(args.get("activation_checkpointing")))


def _memory(spec: FineTuneJobSpec, inputs: Inputs, report: PreflightReport, plan, lengths, gpus: int) -> bool:
    """Fill the memory estimate (and the fit check against the per-GPU budget). False: does not fit.
    A run the trainer will shard (kubetune.api.parallelism) is estimated per GPU of the sharded run."""
    hp = spec.hyperparameters
    try:
        shape = ModelShape.from_config(json.loads((inputs.model_dir / "config.json").read_text()))
    except (ValueError, OSError) as exc:
        report.warnings.append(f"no memory estimate: {exc}")
        return True
    packing = bool(plan.args.get("packing"))
    longest = max(lengths) if lengths else hp.max_length
    training = training_shape(spec, plan.args, hp.max_length if packing else min(hp.max_length, longest), bool(gpus))
    budget = inputs.gpu_memory if gpus else None
    world = max(1, gpus) * spec.resources.nodes
    single = estimate(shape, training)
    decision = decide(spec.parallelism.strategy, spec.adapter.type, world,
                      None if budget is None else single.peak_bytes <= budget)
    report.memory = fsdp_estimate(shape, training, world) if decision.strategy == "fsdp" else single
    if gpus:
        report.memory.notes.append("bf16 assumed (GPUs since Ampere); a GPU without bf16 trains in fp32: about "
                                   "twice the weights and activations")
    report.gpu_memory_bytes = budget
    if budget is None:
        return True
    if decision.strategy == "fsdp":
        fits, message = fsdp_fit_message(shape, training, world, budget)
        options = alternatives(shape, training, budget)
    else:
        fits, message, options = fit_message(shape, training, budget, grad_accumulation=hp.gradient_accumulation_steps)
    report.fits, report.alternatives = fits, options
    report.message = message
    return fits


# ------------------------------------------------------------------------------------------- the job


def _job(config_path: Path, work: Path) -> tuple[int, dict]:
    from .fetch import fetch_dataset
    from .main import _quiet_libraries, load_config

    config = load_config(config_path)
    spec = config.spec
    log.info("pre-flight %s/%s: %s %s on %s", config.job.namespace, config.job.name, spec.method.type,
             spec.adapter.type, spec.base_model.uri)
    try:
        budget = parse_bytes(os.environ.get(ENV_GPU_MEMORY))
    except ValueError as exc:
        raise UserError(f"{ENV_GPU_MEMORY}: {exc}") from None
    _quiet_libraries()
    train = fetch_dataset(spec.dataset.train, work / "data" / "train")
    held = fetch_dataset(spec.dataset.validation, work / "data" / "validation") if spec.dataset.validation else None
    if spec.evaluation is not None:  # a bad prompt file fails here too, before any GPU is asked for
        from .prompt_sets import fetch_sets

        fetch_sets(spec.evaluation, work)
    model_dir = fetch_model_metadata(spec.base_model.uri, spec.base_model.revision, work / "model-metadata")
    report = analyse(spec, Inputs(train_files=train, validation_files=held, model_dir=model_dir, gpu_memory=budget))
    store = open_store(config.output_prefix).child(PREFLIGHT_DIR)
    store.write_bytes(REPORT_FILE, json.dumps(report.to_dict(), indent=2, sort_keys=True).encode())
    return (exit_codes.SUCCESS if report.passed else exit_codes.USER_ERROR), report.to_dict()


def execute(config_path: Path, work_dir: Path | None = None) -> int:
    """Run the pre-flight check; write the report to the termination log; return the exit code."""
    from .main import _outcome

    owned = work_dir is None and not os.environ.get(ENV_WORK_DIR)
    work = work_dir or Path(os.environ.get(ENV_WORK_DIR) or tempfile.mkdtemp(prefix="kubetune-preflight-"))
    try:
        code, result = _outcome(lambda: _job(config_path, work))
        report = PreflightReport.model_validate(result) if isinstance(result, dict) else \
            PreflightReport(passed=False, message=str(result))
        try:
            termination_log_path().write_text(report.text())
        except OSError as exc:
            log.warning("cannot write the termination log %s: %s", termination_log_path(), exc)
        return code
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
