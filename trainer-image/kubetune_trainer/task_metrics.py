"""Task metrics of spec.evaluation (kubetune.api.evaluation.MetricName): pure functions, no model, no network.

Each metric scores an answer against its reference, per sample (a float, or None where it does not apply) and over
the set (the mean of the per-sample scores; BLEU: sacrebleu's corpus BLEU; macro-F1: F1 per label, averaged over the
labels). Samples without a reference count only for the judge. Every metric: higher is better.

- exact_match: answer == reference after normalisation (case folded, whitespace collapsed, stripped): 1 or 0
- contains: the normalised reference appears in the normalised answer
- regex: the reference, read as a regular expression, matches somewhere in the answer (re.search)
- accuracy / macro_f1: the label is group 1 of the first match of labelPattern, in the answer and in the reference
  (a reference that does not match is the label itself); labels compare normalised; an answer without a label is
  wrong. macro_f1 runs over every label that occurs as a reference or a prediction (sklearn's macro average: a label
  never predicted has F1 0)
- bleu: sacrebleu (13a tokenizer), 0-100; per sample: sentence BLEU
- rouge_l: rouge-score's ROUGE-L F-measure, 0-1, without stemming
- judge: the judge's own score (kubetune_trainer.judge), 0-1
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from functools import lru_cache

from kubetune.api.evaluation import MetricName, MetricResult

DIGITS = 4  # figures are rounded to this many decimals (status and the termination report stay small)
PER_SAMPLE = {MetricName.EXACT_MATCH, MetricName.CONTAINS, MetricName.REGEX, MetricName.ACCURACY, MetricName.BLEU,
              MetricName.ROUGE_L, MetricName.JUDGE}  # macro_f1 exists only over a set


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def extract_label(pattern: re.Pattern[str], text: str) -> str | None:
    """Group 1 of the first match, normalised; None when the text has no label."""
    match = pattern.search(text)
    return normalise(match.group(1)) if match and match.group(1) is not None else None


def reference_label(pattern: re.Pattern[str], reference: str) -> str:
    return extract_label(pattern, reference) or normalise(reference)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def sample_score(metric: MetricName, answer: str, reference: str | None, pattern: re.Pattern[str] | None) -> float | None:
    """One answer's score for one metric (not judge, not macro_f1: see module doc). None: no reference."""
    if reference is None:
        return None
    if metric == MetricName.EXACT_MATCH:
        return float(normalise(answer) == normalise(reference))
    if metric == MetricName.CONTAINS:
        return float(normalise(reference) in normalise(answer))
    if metric == MetricName.REGEX:
        return float(re.search(reference, answer) is not None)
    if metric == MetricName.ACCURACY:
        assert pattern is not None  # noqa: S101 - EvaluationSpec requires labelPattern for accuracy
        return float(extract_label(pattern, answer) == reference_label(pattern, reference))
    if metric == MetricName.BLEU:
        import sacrebleu

        return sacrebleu.sentence_bleu(answer, [reference]).score
    if metric == MetricName.ROUGE_L:
        return _rouge().score(reference, answer)["rougeL"].fmeasure
    raise ValueError(f"{metric} has no per-sample score here")


def macro_f1(truth: Sequence[str], predicted: Sequence[str | None]) -> float:
    """F1 per label over every label seen (as truth or prediction), averaged; a missing prediction is wrong."""
    labels = sorted(set(truth) | {p for p in predicted if p is not None})
    if not labels:
        return 0.0
    total = 0.0
    for label in labels:
        tp = sum(1 for t, p in zip(truth, predicted) if t == label and p == label)
        fp = sum(1 for t, p in zip(truth, predicted) if t != label and p == label)
        fn = sum(1 for t, p in zip(truth, predicted) if t == label and p != label)
        total += 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return total / len(labels)


def set_score(metric: MetricName, answers: Sequence[str], references: Sequence[str | None],
              pattern: re.Pattern[str] | None, per_sample: Sequence[float | None]) -> float | None:
    """The metric over a set; `per_sample`: its per-sample scores (ignored by bleu and macro_f1). None: nothing to score."""
    pairs = [(a, r) for a, r in zip(answers, references) if r is not None]
    if metric == MetricName.BLEU:
        if not pairs:
            return None
        import sacrebleu

        return sacrebleu.corpus_bleu([a for a, _ in pairs], [[r for _, r in pairs]]).score
    if metric == MetricName.MACRO_F1:
        if not pairs:
            return None
        assert pattern is not None  # noqa: S101 - EvaluationSpec requires labelPattern for macro_f1
        return macro_f1([reference_label(pattern, r) for _, r in pairs], [extract_label(pattern, a) for a, _ in pairs])
    scored = [s for s in per_sample if s is not None]
    return sum(scored) / len(scored) if scored else None


def score_answers(metrics: Sequence[MetricName], answers: Sequence[str], references: Sequence[str | None],
                  pattern: re.Pattern[str] | None, judged: Sequence[float | None] | None = None
                  ) -> tuple[dict[str, float | None], list[dict[str, float]]]:
    """-> ({metric: set score}, [{metric: score} per sample]). `judged`: the judge's per-sample scores, if judge."""
    per_sample: list[dict[str, float]] = [{} for _ in answers]
    totals: dict[str, float | None] = {}
    for metric in dict.fromkeys(metrics):
        if metric == MetricName.JUDGE:
            scores = list(judged) if judged is not None else [None] * len(answers)
        elif metric in PER_SAMPLE:
            scores = [sample_score(metric, a, r, pattern) for a, r in zip(answers, references)]
        else:
            scores = [None] * len(answers)
        for row, value in zip(per_sample, scores):
            if value is not None:
                row[metric.value] = round(float(value), DIGITS)
        total = set_score(metric, answers, references, pattern, scores)
        totals[metric.value] = round(float(total), DIGITS) if total is not None else None
    return totals, per_sample


def results(metrics: Sequence[MetricName], baseline: dict[str, float | None],
            final: dict[str, float | None]) -> list[MetricResult]:
    return [MetricResult(name=m, baseline=baseline.get(m.value), final=final.get(m.value)) for m in dict.fromkeys(metrics)]


def regressions(metrics: Sequence[MetricResult], max_regression: str) -> list[str]:
    """'name: baseline -> final' of every metric that dropped by more than max_regression (in its own unit)."""
    bound = Decimal(max_regression)
    return [f"{m.name.value}: {m.baseline:g} -> {m.final:g}" for m in metrics
            if m.baseline is not None and m.final is not None
            and Decimal(str(m.baseline)) - Decimal(str(m.final)) > bound]
