"""Task evaluation (spec.evaluation): the same prompts answered by the base model before training and by the result
after, on the training process's own device, scored by each metric (kubetune_trainer.task_metrics), written to
eval/ next to the adapter (write_eval_files) and summarised in status.evaluation (kubetune.api.evaluation).

Generation is batched (batchSize prompts, left padding), greedy and seeded, at most maxNewTokens per answer, chat
prompts through the tokenizer's chat template (string prompts too when the job trains on chat data), and bounded:
the first maxPrompts prompts, and per model timeBudgetSeconds of generation (the prompts not reached are left out;
`prompts` in the figures says how many both models answered). Progress shows phase EvaluatingTask. In a
distributed run only rank 0 generates (the caller's concern: kubetune_trainer.run). A resumed run gets the base
model's answers from the checkpoint (TaskEvaluator.state), as it gets the baseline eval loss.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from kubetune.api.evaluation import (
    EVAL_DIR,
    REGRESSION_SAMPLES_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
    EvalSample,
    EvalSummary,
    EvaluationSpec,
    MetricName,
    MetricSet,
    RegressionResult,
)

from . import task_metrics
from .prompt_sets import Item, render_prompt

log = logging.getLogger(__name__)

BASE, FINETUNED = "base", "finetuned"


@dataclass
class Answers:
    """One model's answers to one set, with their judge scores (if judge)."""

    texts: list[str] = field(default_factory=list)
    judged: list[float | None] | None = None
    seconds: float = 0.0


@dataclass
class EvalOutcome:
    """What publish writes (write_eval_files) and reports (status.evaluation)."""

    summary: EvalSummary
    samples: list[EvalSample]
    regression_samples: list[EvalSample]


def generate(model, tokenizer, prompts: list[Item], spec: EvaluationSpec, *, chat: bool, seed: int, max_length: int,
             deadline: float, on_batch: Callable[[int], None] = lambda done: None, synced: bool = False) -> list[str]:
    """Greedy answers to the prompts, in order, batched; stops at `deadline` (time.monotonic()) between batches.
    `synced`: every rank of a sharded model generates together (transformers' synced_gpus; the ranks agree on the
    deadline), as a sharded forward needs every rank."""
    from . import distributed

    import torch
    from transformers import GenerationConfig

    use_template = bool(tokenizer.chat_template)
    texts = [tokenizer.apply_chat_template(p if isinstance(p, list) else [{"role": "user", "content": p}],
                                           tokenize=False, add_generation_prompt=True)
             if use_template and (isinstance(p, list) or chat) else (p if isinstance(p, str) else render_prompt(p))
             for p in (item.prompt for item in prompts)]
    templated = use_template and (chat or any(isinstance(item.prompt, list) for item in prompts))
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(max_new_tokens=spec.max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                              eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    device = next(model.parameters()).device
    sides = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        for start in range(0, len(texts), spec.batch_size):
            late = time.monotonic() > deadline
            if distributed.agree(late) if synced else late:
                log.warning("evaluation: time budget (%ss) spent: %d of %d prompts answered", spec.time_budget_seconds,
                            len(answers), len(texts))
                break
            batch = tokenizer(texts[start:start + spec.batch_size], return_tensors="pt", padding=True,
                              truncation=True, max_length=max_length, add_special_tokens=not templated).to(device)
            torch.manual_seed(seed)
            with torch.no_grad():
                out = model.generate(**batch, generation_config=config, synced_gpus=synced)
            new = out[:, batch["input_ids"].shape[1]:]
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
            on_batch(len(answers))
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
        model.train(was_training)
    return answers


class TaskEvaluator:
    """Runs spec.evaluation on one model at a time: `answer(model, BASE)` before training, `answer(model, FINETUNED)`
    after it, then `outcome()`. `progress(set, model, done, total)` is called after every batch."""

    def __init__(self, spec: EvaluationSpec, sets: dict[str, list[Item]], tokenizer, *, chat: bool, seed: int,
                 max_length: int, progress: Callable[[str, str, int, int], None] = lambda *a: None, judge=None):
        self.spec, self.sets, self.tokenizer = spec, sets, tokenizer
        self.chat, self.seed, self.max_length, self.progress = chat, seed, max_length, progress
        self.pattern = re.compile(spec.label_pattern) if spec.label_pattern else None
        self.judge = judge
        if judge is None and MetricName.JUDGE in spec.metrics and spec.judge is not None:
            from .judge import JudgeClient

            self.judge = JudgeClient(spec.judge, seed)
        self.answers: dict[str, dict[str, Answers]] = {BASE: {}, FINETUNED: {}}

    def answer(self, model, which: str, synced: bool = False, main: bool = True) -> None:
        """Generate (and judge) `which` model's answers to every set. The base model answers every prompt it can in
        its time budget; the fine-tuned one only those (the figures compare the same prompts). `synced`: every rank
        generates (a sharded model); `main`: this rank keeps the answers and calls the judge."""
        from . import distributed

        deadline = time.monotonic() + self.spec.time_budget_seconds
        for name, items in self.sets.items():
            if which == FINETUNED:
                count = len(self.answers[BASE].get(name, Answers()).texts)
                items = items[:distributed.broadcast_from_main(count) if synced else count]
            started = time.monotonic()
            self.progress(name, which, 0, len(items))
            texts = generate(model, self.tokenizer, items, self.spec, chat=self.chat, seed=self.seed,
                             max_length=self.max_length, deadline=deadline, synced=synced,
                             on_batch=lambda done, n=name, total=len(items): self.progress(n, which, done, total))
            answers = Answers(texts=texts)
            if not main:
                continue
            if self.judge is not None:
                answers.judged = self.judge.score([render_prompt(i.prompt) for i in items], [i.reference for i in items],
                                                  texts, time.monotonic() + self.spec.time_budget_seconds)
            answers.seconds = time.monotonic() - started
            self.answers[which][name] = answers
            log.info("evaluation: %s model answered %d of %d %s prompts in %.1fs", which, len(texts), len(items), name,
                     answers.seconds)

    # ---- the checkpoint keeps the base model's answers (a resumed run cannot ask the base model again)

    def state(self) -> dict[str, Any]:
        return {name: {"texts": a.texts, "judged": a.judged, "seconds": round(a.seconds, 3)}
                for name, a in self.answers[BASE].items()}

    def restore(self, state: dict[str, Any] | None) -> None:
        for name, saved in (state or {}).items():
            if name in self.sets:
                self.answers[BASE][name] = Answers(texts=list(saved["texts"]), judged=saved.get("judged"),
                                                   seconds=float(saved.get("seconds") or 0))

    # ---- figures

    def _score(self, which: str, name: str, n: int) -> tuple[dict[str, float | None], list[dict[str, float]]]:
        answers = self.answers[which].get(name)
        if answers is None:
            return {}, [{} for _ in range(n)]
        items = self.sets[name][:n]
        judged = answers.judged[:n] if answers.judged is not None else None
        return task_metrics.score_answers(self.spec.metrics, answers.texts[:n], [i.reference for i in items],
                                          self.pattern, judged)

    def _set(self, name: str) -> tuple[list, int, list[EvalSample]]:
        base, final = self.answers[BASE].get(name), self.answers[FINETUNED].get(name)
        n = min(len(base.texts) if base else 0, len(final.texts) if final else 0)
        (base_totals, base_rows), (final_totals, final_rows) = self._score(BASE, name, n), self._score(FINETUNED, name, n)
        samples = [EvalSample(id=i, prompt=render_prompt(item.prompt), reference=item.reference, base=base.texts[i],
                              finetuned=final.texts[i], base_scores=base_rows[i], finetuned_scores=final_rows[i])
                   for i, item in enumerate(self.sets[name][:n])]
        return task_metrics.results(self.spec.metrics, base_totals, final_totals), n, samples

    def outcome(self) -> EvalOutcome:
        """The figures and samples; `seconds`: generation, judging and this scoring, both models."""
        started = time.monotonic()
        metrics, n, samples = self._set("task")
        summary = EvalSummary(task=MetricSet(metrics=metrics, prompts=n))
        regression_samples: list[EvalSample] = []
        if "regression" in self.sets:
            metrics, n, regression_samples = self._set("regression")
            summary.regression = RegressionResult(
                metrics=metrics, prompts=n, max_regression=self.spec.max_regression,
                regressed=task_metrics.regressions(metrics, self.spec.max_regression))
            if summary.regression.regressed:
                log.warning("evaluation: the regression set dropped beyond maxRegression %s: %s",
                            self.spec.max_regression, "; ".join(summary.regression.regressed))
        answering = sum(a.seconds for by_set in self.answers.values() for a in by_set.values())
        summary.seconds = round(answering + time.monotonic() - started, 3)
        for metric in summary.task.metrics:
            log.info("evaluation: %s %s -> %s", metric.name.value, metric.baseline, metric.final)
        return EvalOutcome(summary=summary, samples=samples, regression_samples=regression_samples)


def _path(out_dir: Path, name: str) -> Path:
    return out_dir / PurePosixPath(name)


def write_eval_files(out_dir: Path, outcome: EvalOutcome, spec: EvaluationSpec) -> EvalSummary:
    """THE place where the published eval/ folder is written, under `out_dir` (the staged publish folder, before
    manifest.json is made, so that every file is listed and sha-verified): eval/summary.json, and with
    spec.report eval/samples.jsonl and eval/regression.jsonl (the regression set's samples). Returns the summary as
    written (what status.evaluation carries)."""
    (out_dir / EVAL_DIR).mkdir(parents=True, exist_ok=True)
    summary = outcome.summary
    if spec.report:
        for name, rows in ((SAMPLES_FILE, outcome.samples), (REGRESSION_SAMPLES_FILE, outcome.regression_samples)):
            if rows or name == SAMPLES_FILE:
                _path(out_dir, name).write_text("".join(json.dumps(s.to_dict(), ensure_ascii=False, sort_keys=True)
                                                        + "\n" for s in rows), encoding="utf-8")
    _path(out_dir, SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n")
    return summary


# ---- the job's steps (kubetune_trainer.run and publish call these)

STATE_KEY = "taskBaseline"  # the base model's answers, in each checkpoint's kubetune state


def start(spec, files: dict[str, list[str]], held_out: list[dict[str, Any]], tokenizer, model, *, chat: bool,
          reporter, rank, restored: dict[str, Any] | None) -> TaskEvaluator | None:
    """Before training: the base model answers (rank 0; the other ranks wait), or a resumed run restores its answers
    from the checkpoint state `restored`. None without spec.evaluation."""
    if spec.evaluation is None:
        return None
    from .prompt_sets import load_sets

    def progress(name: str, which: str, done: int, total: int) -> None:
        from kubetune.api.evaluation import EvalProgress

        log.info("evaluation: %s model, %s set: %d/%d prompts", which, name, done, total)
        with reporter.tracker.lock:
            reporter.tracker.evaluating = EvalProgress(model=which, set=name, done=done, total=total)
        reporter.report(force=done == 0)  # a set's start now, then throttled (the heartbeat covers a long batch)

    evaluator = TaskEvaluator(spec.evaluation, load_sets(spec.evaluation, files, held_out), tokenizer, chat=chat,
                              seed=spec.hyperparameters.seed, max_length=spec.hyperparameters.max_length,
                              progress=progress)
    if restored is not None:
        evaluator.restore(restored.get(STATE_KEY))
    else:
        answer_on_rank_zero(evaluator, model, BASE, reporter, rank)
    return evaluator


def answer_on_rank_zero(evaluator: TaskEvaluator | None, model, which: str, reporter, rank) -> None:
    """Rank 0 generates on its own copy of the model (data-parallel: every rank holds all of it) while the others
    wait; a sharded model (FSDP: DTensor parameters) needs every rank in each forward, so there all ranks generate
    together and rank 0 keeps the answers."""
    from kubetune.api.finetunejob import TrainerPhase

    from . import distributed

    if evaluator is None:
        return
    sharded = rank.distributed and any(type(p).__name__ == "DTensor" for p in model.parameters())
    if rank.is_main:
        reporter.enter(TrainerPhase.EVALUATING_TASK)
    if rank.is_main or sharded:
        evaluator.answer(model, which, synced=sharded, main=rank.is_main)
    if rank.distributed:
        distributed.barrier()


def checkpoint_state(evaluator: TaskEvaluator | None) -> dict[str, Any]:
    return {STATE_KEY: evaluator.state()} if evaluator is not None else {}


def with_task_figures(evaluation, outcome: EvalOutcome | None):
    """status.evaluation (kubetune.api.finetunejob.Evaluation) with the task figures of `outcome` added."""
    if outcome is None:
        return evaluation
    s = outcome.summary
    return evaluation.model_copy(update={"task": s.task, "regression": s.regression, "seconds": s.seconds,
                                         "report_uri": s.report_uri})


def model_card_section(summary: EvalSummary | None) -> str:
    """The model card's task evaluation: `baseline -> final` per metric, per set."""
    if summary is None or summary.task is None:
        return ""
    parts = []
    for title, result in (("evaluation prompts", summary.task), ("regression set", summary.regression)):
        if result is None:
            continue
        rows = "\n".join(f"| {m.name.value} | {_fmt(m.baseline)} -> {_fmt(m.final)} |" for m in result.metrics)
        verdict = ""
        if isinstance(result, RegressionResult):
            verdict = ("\n\nRegressed beyond maxRegression " + result.max_regression + ": " + "; ".join(result.regressed)
                       if result.regressed else f"\n\nNo metric dropped by more than maxRegression {result.max_regression}.")
        parts.append(f"### {title.capitalize()} ({result.prompts} prompts)\n\n| metric | baseline -> final |\n"
                     f"|---|---|\n{rows}{verdict}")
    files = f"Answers side by side: `{SAMPLES_FILE}`; figures: `{SUMMARY_FILE}`."
    return "## Task evaluation (base model -> fine-tuned)\n\n" + "\n\n".join(parts) + f"\n\n{files}\n\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
