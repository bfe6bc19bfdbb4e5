"""hyperparameters.earlyStopping in the API: bounds, the cross-field check against maxSteps (pydantic and its CEL
twin in the CRD, run by a real CEL interpreter), and what it adds to the termination report."""

from __future__ import annotations

import celpy
import pytest

from kubetune.api.crd import all_crds
from kubetune.api.early_stopping import DEFAULT_INTERVAL_STEPS, DEFAULT_PATIENCE, MAX_REASON, EarlyStopping
from kubetune.api.finetunejob import Checkpointing, FineTuneJobSpec
from kubetune.api.methods import METHODS, checkpoint_metric
from kubetune.api.termination import MAX_TERMINATION_MESSAGE, TerminationReport
from kubetune.api.validation import SpecError, parse

BASE = {"baseModel": {"uri": "hf://org/model"}, "dataset": {"train": "s3://data/train.jsonl"}}


def spec(hyperparameters: dict, **extra) -> dict:
    return {**BASE, "hyperparameters": hyperparameters, **extra}


@pytest.mark.parametrize("stopping, error", [
    ({"patience": 0}, "spec.hyperparameters.earlyStopping.patience: must be >= 1 (got 0)"),
    ({"minDelta": "-0.1"}, "spec.hyperparameters.earlyStopping.minDelta: '-0.1' is not a decimal number"),
    ({"minDelta": 0.1}, "spec.hyperparameters.earlyStopping.minDelta: must be a string: quote the number"),
    ({"metric": "accuracy"}, "spec: hyperparameters.earlyStopping.metric accuracy is not measured by method.type sft: "
                             "use eval_loss, eval_mean_token_accuracy"),
    ({"metric": "eval_rouge_l"}, "spec: hyperparameters.earlyStopping.metric eval_rouge_l is not measured by method.type "
                                 "sft: use eval_loss, eval_mean_token_accuracy"),
    ({"patient": 3}, "spec.hyperparameters.earlyStopping.patient: unknown field"),
])
def test_bad_settings_name_the_field(stopping, error):
    with pytest.raises(SpecError) as raised:
        parse(FineTuneJobSpec, spec({"earlyStopping": stopping}))
    assert str(raised.value).startswith(error)


def test_defaults_and_the_constants_the_cel_rule_repeats():
    parsed = parse(FineTuneJobSpec, spec({"earlyStopping": {}}))
    assert parsed.hyperparameters.early_stopping == EarlyStopping(patience=3, min_delta="0", metric="eval_loss")
    assert (DEFAULT_PATIENCE, DEFAULT_INTERVAL_STEPS) == (EarlyStopping().patience, Checkpointing().interval_steps)
    assert parse(FineTuneJobSpec, spec({})).hyperparameters.early_stopping is None


@pytest.mark.parametrize("method, fmt, metric, higher", [
    ("sft", "auto", "eval_mean_token_accuracy", True), ("cpt", "text", "eval_mean_token_accuracy", True),
    ("dpo", "preference", "eval_rewards/accuracies", True), ("orpo", "preference", "eval_rewards/margins", True),
    ("kto", "unpaired", "eval_loss", False),
])
def test_each_method_offers_what_its_trainer_measures_at_every_evaluation(method, fmt, metric, higher):
    job = spec({"earlyStopping": {"metric": metric}}, method={"type": method}, dataset={**BASE["dataset"], "format": fmt})
    assert parse(FineTuneJobSpec, job).hyperparameters.early_stopping.metric == metric
    assert checkpoint_metric(method, metric).higher_is_better is higher
    for other in {"eval_mean_token_accuracy", "eval_rewards/accuracies"} - {c.name for c in METHODS[method].checkpoint_metrics}:
        with pytest.raises(SpecError, match=f"earlyStopping.metric {other} is not measured by method.type {method}: use eval_loss"):
            parse(FineTuneJobSpec, spec({"earlyStopping": {"metric": other}}, method={"type": method},
                                        dataset={**BASE["dataset"], "format": fmt}))


def test_max_steps_too_short_for_the_patience_is_refused_with_the_fix():
    with pytest.raises(SpecError) as raised:
        parse(FineTuneJobSpec, spec({"maxSteps": 300, "earlyStopping": {}}))
    assert str(raised.value) == (
        "spec: hyperparameters.earlyStopping: patience 3 needs at least 4 evaluations before the last step, but "
        "hyperparameters.maxSteps=300 with an evaluation every checkpointing.intervalSteps=100 steps give 2: set "
        "checkpointing.intervalSteps to at most 74, lower the patience, or train longer")
    # 401 steps, evaluated at 100..400: four before the last step
    parse(FineTuneJobSpec, spec({"maxSteps": 401, "earlyStopping": {}}))
    parse(FineTuneJobSpec, spec({"maxSteps": 300, "earlyStopping": {}}, checkpointing={"intervalSteps": 74}))
    parse(FineTuneJobSpec, spec({"maxSteps": 300, "earlyStopping": {"patience": 1}}))


def test_the_cel_rule_agrees_with_pydantic():
    crd = all_crds()["kubetune.io_finetunejobs.yaml"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["rule"] for r in schema["x-kubernetes-validations"] if "earlyStopping" in r["rule"]]
    assert len(rules) == 1 + len(METHODS)  # the steps rule, and each method's metrics
    programs = [celpy.Environment().program(celpy.Environment().compile(rule)) for rule in rules]
    pref = {"train": "s3://data/train.jsonl", "format": "preference"}
    samples = [
        spec({"maxSteps": 300, "earlyStopping": {}}),
        spec({"maxSteps": 401, "earlyStopping": {}}),
        spec({"maxSteps": 400, "earlyStopping": {}}),
        spec({"maxSteps": 300, "earlyStopping": {"patience": 1}}),
        spec({"maxSteps": 300, "earlyStopping": {}}, checkpointing={"intervalSteps": 74}),
        spec({"maxSteps": 300, "earlyStopping": {}}, checkpointing={"intervalSteps": 75}),
        spec({"maxSteps": 300, "earlyStopping": {}}, checkpointing={"keep": 1}),
        spec({"earlyStopping": {"patience": 50}}),  # steps depend on the data: the pre-flight checks them
        spec({"maxSteps": 5}),
        BASE,
        spec({"earlyStopping": {"metric": "eval_mean_token_accuracy"}}),
        spec({"earlyStopping": {"metric": "eval_rewards/margins"}}),  # sft: refused
        spec({"earlyStopping": {"metric": "eval_rewards/margins"}}, method={"type": "sft"}),
        spec({"earlyStopping": {"metric": "eval_rewards/margins"}}, method={"type": "dpo"}, dataset=pref),
        spec({"earlyStopping": {"metric": "eval_mean_token_accuracy"}}, method={"type": "dpo"}, dataset=pref),
        spec({"earlyStopping": {"metric": "eval_rewards/accuracies"}}, method={"type": "kto"}, dataset=pref),
        spec({"earlyStopping": {"metric": "eval_loss"}}, method={"type": "kto"}, dataset=pref),
        spec({"earlyStopping": {"metric": "eval_rewards/accuracies"}}, method={"type": "orpo"}, dataset=pref),
        spec({"earlyStopping": {"metric": "eval_mean_token_accuracy"}}, method={"type": "cpt"},
             dataset={"train": "s3://data/train.txt", "format": "text"}),
    ]
    for sample in samples:
        try:
            parse(FineTuneJobSpec, sample)
            pydantic_ok = True
        except SpecError:
            pydantic_ok = False
        cel_ok = all(bool(program.evaluate({"self": celpy.json_to_cel(sample)})) for program in programs)
        assert cel_ok == pydantic_ok, sample


def test_the_published_step_and_reason_fit_the_termination_message():
    """Kubernetes keeps 4 KiB of it: the longest adapter (URI and reason at their bounds) with the loss figures."""
    report = TerminationReport.model_validate({
        "adapter": {"uri": "s3://" + "b" * 2043, "manifestSha256": "a" * 64, "type": "lora", "rank": 256,
                    "step": 10_000_000, "reason": "r" * MAX_REASON},
        "evaluation": {"baseline": {"evalLoss": -1.234567e300, "perplexity": 1.234567e300},
                       "final": {"evalLoss": -1.234567e300, "perplexity": 1.234567e300}}})
    text = report.text()
    assert len(text.encode()) < MAX_TERMINATION_MESSAGE - 1024, len(text)  # room left for the task metrics
    assert TerminationReport.parse(text) == report


def test_the_docs_table_offers_what_the_registry_offers():
    """docs/hyperparameters.md#early-stopping: one row per metric with the methods that measure it and its direction."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "hyperparameters.md").read_text()
    rows = re.findall(r"^  \| ([a-z, ]+) \| `([a-z_/]+)`[^|]*\| (lower|higher) \|$", text, re.MULTILINE)
    documented = {(metric, method.strip(), better == "higher")
                  for methods, metric, better in rows
                  for method in (METHODS if methods == "all" else methods.split(","))}
    registry = {(c.name, m.name, c.higher_is_better) for m in METHODS.values() for c in m.checkpoint_metrics}
    assert documented == registry
