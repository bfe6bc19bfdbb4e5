"""The whole job, in order: fetch -> validate -> plan -> baseline eval -> train (resume, checkpoints)
-> final eval -> publish. Returns the termination report; raises UserError/TransientError/Preempted.

Each step begins with `reporter.enter(TrainerPhase...)`: status.progress.phase says what runs now, and
the reporter's heartbeat keeps it fresh however long the step takes.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from kubetune.api import exit_codes
from kubetune.api.finetunejob import TrainerPhase
from kubetune.api.trainer_config import ProgressReporting, TrainerConfig
from kubetune_storage import Store, open_store

from . import chat, data, distributed, early_stopping, evaluate, sharding
from .callbacks import KubetuneCallback
from .checkpoints import Checkpoints, fingerprint
from .collate import RowPackedCollator, needs_row_packing
from .distributed import SINGLE, Rank, Topology
from .errors import Preempted, StopFlag, TransientError, UserError
from .fetch import fetch_dataset, fetch_model
from .formats import Names
from .methods import TRAINERS, load
from .metrics import MetricsServer
from .plan import Facts, TrainingPlan, trl_args
from .publish import Result, hub_reference, publish
from .reporting import Reporter, ReportingHandover, Tracker, take_over_reporting
from .tracking import Tracking

log = logging.getLogger(__name__)


def _figures(metrics: dict[str, Any], method: str) -> dict[str, float | None]:
    """evalLoss and perplexity (exp of a token loss; not defined for a preference loss: see methods.TRAINERS)."""
    loss = metrics.get("eval_loss")
    if loss is None or not math.isfinite(loss):
        return {"evalLoss": None, "perplexity": None}
    perplexity = math.exp(loss) if TRAINERS[method].token_loss and loss < 700 else None
    return {"evalLoss": round(float(loss), 6), "perplexity": round(perplexity, 4) if perplexity is not None else None}


def _device() -> tuple[str, bool]:
    import torch

    if torch.cuda.is_available():
        return "cuda", bool(torch.cuda.is_bf16_supported())
    return "cpu", False


def _assistant_masks(tokenizer) -> bool:
    """Whether assistant-only loss is possible: {% generation %} markers, or a TRL training template."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if not template:
        return False
    if has_generation_markers(template):
        return True
    try:
        return get_training_chat_template(tokenizer) is not None
    except Exception:  # noqa: BLE001 - an unsupported template just means: loss on the whole sequence
        return False


@dataclass
class Inputs:
    """What is on local disk before training: fetched once per pod, shared by the pod's processes."""

    train_files: list[str]
    validation_files: list[str] | None
    model_dir: str
    checkpoint: dict[str, Any] | None = None  # {"step", "path", "state"} of the restored checkpoint
    evaluation_files: dict[str, list[str]] = field(default_factory=dict)  # spec.evaluation's prompt sets: {set: files}

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, path: Path) -> Inputs:
        return cls(**json.loads(path.read_text()))


def load_records(config: TrainerConfig, inputs: Inputs) -> tuple[data.Loaded, list[dict], list[dict]]:
    """Parse and validate the dataset files; split off the held-out set."""
    spec = config.spec
    fields = Names.of(spec.dataset)
    train = data.load([Path(f) for f in inputs.train_files], fmt=spec.dataset.format, method=spec.method.type,
                      fields=fields)
    if inputs.validation_files is not None:
        held = data.load([Path(f) for f in inputs.validation_files], fmt=train.format, method=spec.method.type,
                         role="validation", min_examples=1, fields=fields)
        records = held.records
        if held.conversational != train.conversational and train.records and "prompt" in train.records[0]:
            from .formats import as_conversational

            train.records, records = [as_conversational(r) for r in train.records], [as_conversational(r) for r in records]
        return train, train.records, records
    fraction = float(Decimal(spec.dataset.validation_split)) if spec.dataset.validation_split else data.DEFAULT_VALIDATION_SPLIT
    train_records, eval_records = data.split(train.records, fraction, spec.hyperparameters.seed)
    return train, train_records, eval_records


def fetch_inputs(config: TrainerConfig, work_dir: Path, checkpoints: Checkpoints, reporter: Reporter):
    """Dataset (validated before the model is downloaded), base model, newest checkpoint of this spec.
    -> (Inputs, the parsed records of load_records)."""
    spec = config.spec
    reporter.enter(TrainerPhase.VALIDATING_DATA)
    train_files = fetch_dataset(spec.dataset.train, work_dir / "data" / "train")
    validation_files = (fetch_dataset(spec.dataset.validation, work_dir / "data" / "validation")
                        if spec.dataset.validation else None)
    inputs = Inputs(train_files=[str(f) for f in train_files], model_dir="",
                    validation_files=[str(f) for f in validation_files] if validation_files is not None else None)
    loaded = load_records(config, inputs)
    train, train_records, eval_records = loaded
    log.info("data: %s format, %d train / %d eval examples from %s", train.format, len(train_records),
             len(eval_records), ", ".join(train.files))
    if spec.evaluation is not None:  # the prompt files are checked before the model is downloaded, like the data
        from .prompt_sets import fetch_sets

        inputs.evaluation_files = fetch_sets(spec.evaluation, work_dir)
    reporter.enter(TrainerPhase.DOWNLOADING_MODEL)
    inputs.model_dir = str(fetch_model(spec.base_model.uri, spec.base_model.revision, work_dir))
    if reporter.tracker.checkpoints:
        reporter.enter(TrainerPhase.RESTORING_CHECKPOINT)
    restored = checkpoints.restore_newest(work_dir / "trainer")
    if restored is not None:
        step, path, state = restored
        inputs.checkpoint = {"step": step, "path": str(path), "state": state}
    return inputs, loaded


def load_model(model_dir: Path, plan: TrainingPlan, uri: str):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **plan.model_kwargs)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise UserError(f"cannot load base model {uri}: {exc}") from None
    if plan.quantization is not None:
        keep_4bit_layers_trainable(model)
    return model


def keep_4bit_layers_trainable(model) -> None:
    """bitsandbytes 0.50 repacks a Linear4bit's weights into an inference-only bf16 layout the first
    time the layer runs in eval mode without grad on a CPU with AVX512-BF16 (the baseline evaluation
    does exactly that), and never unpacks them: the next training step then fails in matmul_4bit
    ("a view of a leaf Variable that requires grad is being used in an in-place operation"). Switch the
    repacking off, so training keeps the autograd path and both evaluations use the same kernels on
    every CPU. GPUs never take that path."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def load_tokenizer(model_dir: Path, config: TrainerConfig):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=config.spec.base_model.trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise UserError(f"cannot load the tokenizer of {config.spec.base_model.uri}: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_trainer(plan: TrainingPlan, model, tokenizer, train_records: list[dict], eval_records: list[dict],
                  model_uri: str = "the base model"):
    method = TRAINERS[plan.method]
    seed = plan.args["seed"]
    train_rows, eval_rows = method.prepare(train_records, seed), method.prepare(eval_records, seed)
    if chat.needs_rendering(train_rows + eval_rows):  # tools, calls, weights: tokenized and masked by kubetune
        train_rows, eval_rows = (chat.tokenize_all(tokenizer, rows, model_uri) for rows in (train_rows, eval_rows))
        if (warning := chat.cut_by_max_length(train_rows, plan.args.get("max_length"))) is not None:
            log.warning("data: %s", warning)
    try:
        trainer_class = load(method.trainer)
        if plan.args.get("fsdp") and plan.args.get("use_cpu"):
            trainer_class = sharding.on_cpu(trainer_class)
        trainer = trainer_class(
            model=model, args=trl_args(plan), train_dataset=data.to_dataset(train_rows),
            eval_dataset=data.to_dataset(eval_rows), processing_class=tokenizer, peft_config=plan.peft)
    except ValueError as exc:  # TRL rejects data/template combinations with ValueError
        raise UserError(f"the trainer rejected the data or settings: {exc}") from None
    if plan.args.get("fsdp"):
        sharding.check_enabled(trainer)
    if getattr(trainer, "padding_free", False) and needs_row_packing(trainer.model):
        log.info("packing: %s attention has no varlen kernel: packed rows stay rows",
                 trainer.model.config._attn_implementation)
        trainer.data_collator = RowPackedCollator(tokenizer.pad_token_id)
    return trainer


def _save_result(trainer, tokenizer, config: TrainerConfig, plan: TrainingPlan, model_dir: Path, work_dir: Path):
    """Save the adapter (or full model) + tokenizer; optionally a merged model. -> (dir, merged, targets)."""
    spec = config.spec
    out = work_dir / "result"
    if not plan.args.get("fsdp"):  # FSDP: sharding.consolidate saved it (every rank takes part)
        trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    for junk in ("training_args.bin", "README.md"):  # a pickle, and PEFT's placeholder card (ours is at the root)
        (out / junk).unlink(missing_ok=True)
    targets = None
    if plan.peft is not None:
        import json

        adapter_config = json.loads((out / "adapter_config.json").read_text())
        adapter_config["base_model_name_or_path"] = hub_reference(spec.base_model.uri)
        adapter_config["revision"] = spec.base_model.revision
        (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True))
        resolved = trainer.model.peft_config["default"].target_modules
        # "all-linear" resolves to full module paths: publish the distinct leaf names (q_proj, ...)
        targets = sorted({name.rsplit(".", 1)[-1] for name in resolved}) if not isinstance(resolved, str) else [resolved]
    merged = None
    if spec.output.merged_model and plan.peft is not None:
        merged = work_dir / "merged"
        _merge(model_dir, out, merged, plan, tokenizer)
    elif spec.output.merged_model:
        log.info("publish: output.mergedModel ignored for adapter type full (the result is a full model)")
    return out, merged, targets


def _merge(model_dir: Path, adapter_dir: Path, dest: Path, plan: TrainingPlan, tokenizer) -> None:
    """Base model in full precision (never 4-bit) + adapter, merged and saved."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kwargs = {k: v for k, v in plan.model_kwargs.items() if k not in ("quantization_config", "device_map")}
    base = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))


def _start(config: TrainerConfig, out: Store, tracker: Tracker, reporter: Reporter, *, discard_foreign: bool) -> Checkpoints:
    """Open the job's checkpoints under `out` and report that the pod is up (fetching and loading can take minutes)."""
    checkpoints = Checkpoints(out, config.spec.checkpointing.keep, fingerprint(config.spec))
    if discard_foreign:
        checkpoints.discard_foreign()
    tracker.checkpoints = checkpoints.listing()
    tracker.step = tracker.checkpoints[-1][0] if tracker.checkpoints else 0  # a resume does not go back to 0
    reporter.report(force=True)
    return checkpoints


def run(config: TrainerConfig, work_dir: Path, stop: StopFlag, rank: Rank = SINGLE,
        inputs: Inputs | None = None) -> dict[str, Any]:
    """One training process: the whole job (single process), or one rank of a distributed run whose
    inputs the pod's launcher fetched. Rank 0 alone reports, serves metrics, checkpoints and publishes."""
    tracker = Tracker()
    if inputs is not None:
        tracker.phase = TrainerPhase.LOADING_MODEL  # where the launcher's reports left off
    if rank.is_main and rank.distributed:
        take_over_reporting(work_dir)  # the launcher has stopped reporting: one writer at a time
    reporter = Reporter(config.progress if rank.is_main else ProgressReporting(mode="none"), tracker)
    metrics = MetricsServer(tracker, {"namespace": config.job.namespace, "finetunejob": config.job.name})
    if rank.is_main:
        metrics.start()
    tracking = Tracking(config, work_dir, tracker, reporter, active=rank.is_main)  # spec.tracking, rank 0 only
    try:
        return _run(config, work_dir, stop, tracker, reporter, rank, inputs, tracking)
    except BaseException as exc:
        tracking.close(exc)  # the runs end FAILED, or KILLED when stopped by SIGTERM (the next pod resumes them)
        raise
    finally:
        reporter.close()
        metrics.stop()
        distributed.close()


def launch(config: TrainerConfig, config_path: Path, work_dir: Path, stop: StopFlag, topo: Topology) -> tuple[int, Any]:
    """The pod's main process of a distributed run: fetch once, run the ranks, one outcome.
    -> (exit code, termination message). Pod 0's launcher reports until global rank 0 takes over."""
    tracker = Tracker()
    main_pod = topo.node_rank == 0
    reporter = Reporter(config.progress if main_pod else ProgressReporting(mode="none"), tracker)
    handover = None
    try:
        checkpoints = _start(config, open_store(config.output_prefix), tracker, reporter, discard_foreign=main_pod)
        inputs, _ = fetch_inputs(config, work_dir, checkpoints, reporter)
        reporter.enter(TrainerPhase.LOADING_MODEL)  # the ranks start and load the model
        launcher = distributed.Launcher(topo, config_path, work_dir, inputs.save(work_dir / "inputs.json"))
        if main_pod:
            handover = ReportingHandover(work_dir, reporter.close)
        stop.forward = launcher.stop
        if stop.requested:
            raise Preempted("Stopped by SIGTERM before training started.")
        return launcher.run()
    finally:
        stop.forward = None
        if handover is not None:
            handover.stop()
        reporter.close()


def _rank_zero_failure(shared: dict[str, str]) -> BaseException:
    """The error another rank raises when rank 0 could not publish (same exit-code class)."""
    message = f"rank 0 could not publish: {shared['message']}"
    if shared["error"] in ("UserError", "DataError") or shared.get("userFault"):
        return UserError(shared["message"])
    if shared["error"] == "Preempted":
        return Preempted(shared["message"])
    return TransientError(message)


def _run(config: TrainerConfig, work_dir: Path, stop: StopFlag, tracker: Tracker, reporter: Reporter, rank: Rank,
         inputs: Inputs | None, tracking: Tracking) -> dict[str, Any]:
    spec = config.spec
    out = open_store(config.output_prefix)
    checkpoints = _start(config, out, tracker, reporter, discard_foreign=inputs is None)
    tracking.start()  # before the downloads: credentials a tracker refuses fail the job now
    if inputs is None:
        inputs, (train, train_records, eval_records) = fetch_inputs(config, work_dir, checkpoints, reporter)
    else:
        train, train_records, eval_records = load_records(config, inputs)
    model_dir = Path(inputs.model_dir)
    reporter.enter(TrainerPhase.LOADING_MODEL)
    tokenizer = load_tokenizer(model_dir, config)
    if train.conversational and not tokenizer.chat_template:
        raise UserError(f"the tokenizer of {spec.base_model.uri} has no chat template, so it cannot train on "
                        f"{train.format} (chat) data: use an instruct/chat model, or text data")
    device, bf16 = _device()
    facts = Facts(output_dir=str(work_dir / "trainer"), train_examples=len(train_records), device=device, bf16=bf16,
                  chat=train.conversational, assistant_masks=_assistant_masks(tokenizer), has_eval=bool(eval_records),
                  rendered_chat=chat.needs_rendering(train_records + eval_records), local_rank=rank.local_rank)
    plan = sharding.plan_for(spec, facts, rank.world_size, model_dir)  # DDP or FSDP (kubetune.api.parallelism)
    log.info("plan: %s", plan.summary)
    model = load_model(model_dir, plan, spec.base_model.uri)
    reporter.enter(TrainerPhase.TOKENIZING_DATA)
    trainer = build_trainer(plan, model, tokenizer, train_records, eval_records, spec.base_model.uri)
    early_stopping.attach(trainer, spec)

    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    tracking.attach(trainer, plan.summary)
    evaluation: dict[str, dict[str, float | None]] = {}
    restored = inputs.checkpoint
    sharding.check_checkpoint(restored, plan)  # an FSDP checkpoint resumes only an FSDP run, and a DDP one a DDP run
    if rank.distributed:
        distributed.check_same_checkpoint(restored["step"] if restored else None)
    if restored is not None:
        step, path = restored["step"], restored["path"]
        log.info("resume: from checkpoint step %d (%s)", step, checkpoints.store.uri_of(f"{step:08d}"))
        evaluation["baseline"] = restored["state"].get("baseline") or {}
    else:
        path = None
        if eval_records:
            reporter.enter(TrainerPhase.BASELINE_EVALUATION)
        if eval_records and plan.args.get("fsdp"):  # evaluated first thing in train() (sharding.baseline_at_start)
            evaluation["baseline"] = sharding.baseline_at_start(trainer, lambda m: _figures(m, spec.method.type))
        else:
            evaluation["baseline"] = _figures(trainer.evaluate(), spec.method.type) if eval_records else {}
    tracker.baseline = evaluation["baseline"]
    task = evaluate.start(spec, inputs.evaluation_files, eval_records, tokenizer, trainer.model, chat=train.conversational,
                          reporter=reporter, rank=rank, restored=restored["state"] if restored else None)
    callback = KubetuneCallback(tracker, reporter, checkpoints if rank.local_rank == 0 else None, stop,
                                {"baseline": evaluation["baseline"], **evaluate.checkpoint_state(task)}, agree=distributed.agree if rank.distributed else None,
                                barrier=distributed.barrier if rank.distributed else None,
                                gather=distributed.gather if rank.distributed else None, main=rank.is_main)
    callback.last_saved_step = restored["step"] if restored else None
    trainer.add_callback(callback)
    reporter.enter(TrainerPhase.TRAINING)

    trainer.train(resume_from_checkpoint=str(path) if path else None)
    if callback.stopped_at is not None or (stop.requested and not rank.distributed):
        distributed.barrier()  # rank 0 has uploaded the checkpoint before any rank exits (torchrun kills the rest)
        saved = callback.last_saved_step
        where = (f"{exit_codes.PREEMPTED_CHECKPOINT.format(step=saved, uri=checkpoints.store.uri)}; the next pod resumes from it"
                 if saved is not None else "no step was trained, so there was nothing to checkpoint")
        raise Preempted(f"Stopped by SIGTERM at step {trainer.state.global_step}; {where}.")

    if eval_records:
        reporter.enter(TrainerPhase.FINAL_EVALUATION)
    evaluation["final"] = _figures(trainer.evaluate(), spec.method.type) if eval_records else {}
    tracker.final = evaluation["final"]
    if evaluation["final"].get("evalLoss") is not None:
        tracker.eval_loss = evaluation["final"]["evalLoss"]
    evaluate.answer_on_rank_zero(task, trainer.model, evaluate.FINETUNED, reporter, rank)
    reporter.enter(TrainerPhase.PUBLISHING)
    summary = {**plan.summary, "format": train.format, "trainExamples": len(train_records),
               "evalExamples": len(eval_records), "steps": trainer.state.global_step,
               "trainedTokens": trainer.state.num_input_tokens_seen, "processes": rank.world_size}
    failure: BaseException | None = None
    report: dict[str, Any] | None = None
    if plan.args.get("fsdp"):
        sharding.consolidate(trainer, work_dir / "result")  # a collective: the full state dict to rank 0, once
    if rank.is_main:
        try:
            result_dir, merged, targets = _save_result(trainer, tokenizer, config, plan, model_dir, work_dir)
            result = Result(model_dir=result_dir, merged_dir=merged, target_modules=targets,
                            selection=early_stopping.selection(trainer, spec),
                            task=task.outcome() if task is not None else None,
                            log_history=list(trainer.state.log_history), evaluation=evaluation, summary=summary)
            report = publish(config, tracking.before_publish(result), out, work_dir)
            tracking.after_publish(report)
        except BaseException as exc:  # noqa: BLE001 - every rank must learn the outcome before anyone exits
            failure = exc
    if rank.distributed:
        shared = distributed.broadcast_from_main(
            {"report": report} if failure is None else {"error": type(failure).__name__, "message": str(failure),
                                                    "userFault": getattr(failure, "user_fault", False)})
        if failure is None and "error" in shared:
            raise _rank_zero_failure(shared)
        report = shared.get("report", report)
    if failure is not None:
        raise failure
    reporter.enter(TrainerPhase.DONE)
    return report
