"""The evaluation contract: what a FineTuneJob asks to measure (spec.evaluation), what the trainer writes next
to the adapter (eval/summary.json, eval/samples.jsonl, the blind A/B files, eval/report.html) and what lands in
status.evaluation. Pure: pydantic only.

Written by the trainer (kubetune_trainer) after the final evaluation, before manifest.json (the files are
listed in the manifest and sha-verified like the adapter); read by the operator (status, via the
termination report), the report renderer and ``kubetune eval report <uri>``.

Layout under the published folder (<output>/<namespace>/<job>/):

    eval/summary.json      EvalSummary: metrics baseline -> final, regression set, timings
    eval/samples.jsonl     one EvalSample per line: prompt, reference, base and fine-tuned answers, scores
    eval/blind.jsonl       one BlindSample per line: the answers shuffled and labelled A/B (no model names)
    eval/blind-key.json    BlindKey: which model wrote A and B of each sample (kept out of the report)
    eval/report.html       self-contained report: metrics table, loss curve, samples side by side, blind mode
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .common import DATA_URI, KubeModel, SecretKeyRef, _check_uri_path, cel, decimal, with_rules

EVAL_DIR = "eval"
SUMMARY_FILE = f"{EVAL_DIR}/summary.json"
SAMPLES_FILE = f"{EVAL_DIR}/samples.jsonl"
BLIND_FILE = f"{EVAL_DIR}/blind.jsonl"
BLIND_KEY_FILE = f"{EVAL_DIR}/blind-key.json"
REPORT_FILE = f"{EVAL_DIR}/report.html"
REGRESSION_SAMPLES_FILE = f"{EVAL_DIR}/regression.jsonl"  # EvalSample lines of the regression set

MAX_METRICS = 16  # metrics per set in status (the termination report must stay under 4 KiB)


class MetricName(StrEnum):
    """A task metric, computed per sample and averaged (BLEU: corpus-level; macro-F1: over the labels)."""

    EXACT_MATCH = "exact_match"  # answer == reference after whitespace/case normalisation
    CONTAINS = "contains"  # the reference appears in the answer
    REGEX = "regex"  # the reference, read as a regular expression, matches the answer
    ACCURACY = "accuracy"  # label extracted by labelPattern == reference label
    MACRO_F1 = "macro_f1"  # F1 per label of the extracted labels, averaged over labels
    BLEU = "bleu"  # sacrebleu corpus BLEU, 0-100
    ROUGE_L = "rouge_l"  # rouge-score ROUGE-L F-measure, 0-1
    JUDGE = "judge"  # LLM judge score from the rubric, 0-1 (needs spec.evaluation.judge)


LABEL_METRICS = (MetricName.ACCURACY, MetricName.MACRO_F1)  # need spec.evaluation.labelPattern


def _field_error(model: str, field: str, message: str, value: object) -> ValidationError:
    """A validation error located at `field` (camelCase) of the model, so that it reads spec.evaluation.<field>."""
    return ValidationError.from_exception_data(model, [InitErrorDetails(
        type=PydanticCustomError("value_error", message), loc=(field,), input=value)])


class Judge(KubeModel):
    """An LLM judge reached through any OpenAI-compatible endpoint (e.g. a ModelDeployment's Service)."""

    endpoint: str = Field(description="Base URL of the OpenAI-compatible API, e.g. http://judge.team-a.svc:8000/v1.",
                          min_length=1, max_length=1024, pattern=r"^https?://[^\s]+$")
    model: str = Field(description="Model name the endpoint serves.", min_length=1, max_length=253)
    rubric: str = Field(description="What a good answer is. The judge answers a score from 0 to 10 for each sample.",
                        min_length=1, max_length=4096)
    api_key_secret_ref: SecretKeyRef | None = Field(default=None, description="The endpoint's API key, if it needs one.")


class EvaluationSpec(KubeModel):
    """Task evaluation: the same prompts answered by the base model before training and by the result after,
    with the same seeded greedy decoding, scored by each metric. Every field is optional."""

    model_config = with_rules(
        cel("!has(self.metrics) || !self.metrics.exists(m, m == 'accuracy' || m == 'macro_f1') || has(self.labelPattern)",
            "spec.evaluation.labelPattern is required by the metrics accuracy and macro_f1"),
        cel("!has(self.metrics) || !self.metrics.exists(m, m == 'judge') || has(self.judge)",
            "spec.evaluation.judge is required by the metric judge"))

    prompts: str | None = Field(
        default=None, max_length=2048, pattern=DATA_URI,
        description="Evaluation file (same URI schemes as dataset.train): JSONL with a prompt (a string, or chat "
        "messages ending with a user turn) and an optional reference (or label). Empty: the held-out split, "
        "its last assistant turn (or completion) as the reference.")
    metrics: list[MetricName] = Field(
        default_factory=lambda: [MetricName.EXACT_MATCH, MetricName.ROUGE_L], max_length=MAX_METRICS,
        description="Metrics to compute. accuracy and macro_f1 need labelPattern; judge needs judge.")
    label_pattern: str | None = Field(
        default=None, max_length=512,
        description="Regular expression with one group that extracts the label from an answer (and from the "
        "reference), e.g. '(positive|negative|neutral)'. For accuracy and macro_f1.")
    max_prompts: int = Field(default=100, ge=1, le=10000, description="Prompts evaluated at most (the first ones).")
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Tokens generated per answer at most.")
    batch_size: int = Field(default=8, ge=1, le=256, description="Prompts generated together.")
    time_budget_seconds: int = Field(
        default=900, ge=10, le=86400,
        description="Wall time for generation per model; prompts not reached in time are left out (status says how "
        "many were scored).")
    regression_set: str | None = Field(
        default=None, max_length=2048, pattern=DATA_URI,
        description="General-capability prompts (same file shape as prompts) scored before and after, to check "
        "that the model did not forget what it could do.")
    max_regression: str = decimal(
        "Largest drop allowed on any metric of the regression set, in the metric's own unit (e.g. \"0.05\" for "
        "rouge_l, \"2\" for bleu). A larger drop sets the Regressed condition and a Warning event.", default="0.05")
    judge: Judge | None = Field(default=None, description="LLM judge for the judge metric.")
    report: bool = Field(default=True, description="Write eval/samples.jsonl, the blind A/B files and eval/report.html.")

    @field_validator("prompts", "regression_set")
    @classmethod
    def _no_traversal(cls, value: str | None) -> str | None:
        return _check_uri_path(value)

    @field_validator("label_pattern")
    @classmethod
    def _one_group(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            groups = re.compile(value).groups
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
        if groups != 1:
            raise ValueError(f"{value!r} must have exactly one group (the label), e.g. '(yes|no)'; it has {groups}")
        return value

    @model_validator(mode="after")
    def _needs(self) -> EvaluationSpec:
        labels = [m.value for m in self.metrics if m in LABEL_METRICS]
        if labels and self.label_pattern is None:
            raise _field_error("EvaluationSpec", "labelPattern", f"required by the metric(s) {', '.join(labels)}: a "
                               "regular expression with one group that extracts the label, e.g. '(yes|no)'", None)
        if MetricName.JUDGE in self.metrics and self.judge is None:
            raise _field_error("EvaluationSpec", "judge", "required by the metric judge: the endpoint, model and rubric "
                               "of the LLM judge", None)
        return self


class EvalProgress(KubeModel):
    """While the trainer is in phase EvaluatingTask: how far the generation has come (status.progress.evaluation)."""

    model: Literal["base", "finetuned"] = Field(description="Which model is answering.")
    set: Literal["task", "regression"] = Field(description="Which prompt set.")
    done: int = Field(ge=0, description="Prompts answered so far.")
    total: int = Field(ge=0, description="Prompts to answer (maxPrompts at most; the time budget may stop it earlier).")


class MetricResult(KubeModel):
    """One metric on the base model and on the fine-tuned model."""

    name: MetricName = Field(description="Metric.")
    baseline: float | None = Field(default=None, description="Base model before training.")
    final: float | None = Field(default=None, description="Fine-tuned model.")


class MetricSet(KubeModel):
    """Metrics of one prompt set."""

    metrics: list[MetricResult] = Field(default_factory=list, max_length=MAX_METRICS, description="Per metric.")
    prompts: int = Field(default=0, ge=0, description="Prompts scored (both models answered).")


class RegressionResult(MetricSet):
    """The regression set: the same figures, plus the verdict."""

    max_regression: str = decimal("The bound applied.", default="0.05")
    regressed: list[str] = Field(default_factory=list, max_length=MAX_METRICS,
                                 description="Metrics whose drop exceeds maxRegression, e.g. 'rouge_l: 0.41 -> 0.22'.")


class EvalSummary(KubeModel):
    """eval/summary.json, and the task part of status.evaluation."""

    task: MetricSet | None = Field(default=None, description="The evaluation prompts (spec.evaluation.prompts).")
    regression: RegressionResult | None = Field(default=None, description="The regression set, if any.")
    seconds: float | None = Field(default=None, ge=0, description="Generation and scoring wall time, both models.")
    report_uri: str | None = Field(default=None, max_length=2048, description="Where eval/report.html is published.")


class EvalSample(KubeModel):
    """One line of eval/samples.jsonl."""

    id: int = Field(ge=0, description="Index of the prompt in the evaluation set.")
    prompt: str = Field(description="The prompt as the model saw it (chat messages rendered as 'role: text' lines).")
    reference: str | None = Field(default=None, description="The expected answer or label, if given.")
    base: str = Field(description="The base model's answer.")
    finetuned: str = Field(description="The fine-tuned model's answer.")
    base_scores: dict[str, float] = Field(default_factory=dict, description="Per-sample score of each metric (base).")
    finetuned_scores: dict[str, float] = Field(default_factory=dict, description="Per-sample score (fine-tuned).")


class BlindSample(KubeModel):
    """One line of eval/blind.jsonl: the two answers in a seeded random order, labelled A and B."""

    id: int = Field(ge=0, description="Same id as in samples.jsonl.")
    prompt: str = Field(description="The prompt.")
    reference: str | None = Field(default=None, description="The expected answer, if given.")
    a: str = Field(description="Answer A.")
    b: str = Field(description="Answer B.")


class BlindKey(KubeModel):
    """eval/blind-key.json: which model wrote A of each sample (B is the other one)."""

    seed: int = Field(description="Seed of the shuffle.")
    a_is: dict[str, str] = Field(description="Sample id (as a string) -> 'base' or 'finetuned'.")
