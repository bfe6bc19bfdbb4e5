"""Training methods and dataset formats: one table row each, read by everything that depends on them.

`FORMATS` (dataset.format) and `METHODS` (method.type) are the API-facing half of the method registry:
the FineTuneJob model takes its enums, its `method.<name>` option fields, its pydantic and CEL rules
("method X needs dataset.format ...") and its descriptions from them; the trainer reads the accepted
formats (data loader) and default learning rates (planner) here. The trainer's half of each row (the
TRL trainer and config class, the argument mapping, what its evaluation figures mean) is
`kubetune_trainer/methods.py`; a test keeps both tables in step. Adding a method: one row here (plus an
options model if it has options), one row there. No torch or TRL imports in this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from .common import KubeModel, decimal

# dataset.format -> the fields that identify a record of it (auto-detection and error messages).
FORMATS: dict[str, str] = {
    "chatml": "messages",
    "alpaca": "instruction/input/output",
    "sharegpt": "conversations",
    "preference": "prompt/chosen/rejected",
    "unpaired": "prompt/completion/label",
    "text": "text",
}


# ------------------------------------------------------------------------------------- method options


class DPOOptions(KubeModel):
    """Direct Preference Optimization options."""

    beta: str = decimal("KL penalty strength, e.g. \"0.1\". Higher stays closer to the base model.", default="0.1")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(default="sigmoid", description="DPO loss variant.")


class ORPOOptions(KubeModel):
    """Odds Ratio Preference Optimization options (no reference model: SFT and preference in one loss)."""

    beta: str = decimal("Weight of the odds-ratio (preference) term against the SFT loss on the chosen answer, "
                        "lambda in the ORPO paper, e.g. \"0.1\".", default="0.1")


class KTOOptions(KubeModel):
    """Kahneman-Tversky Optimization options."""

    beta: str = decimal("How far the policy may move from the reference (the base model), e.g. \"0.1\".", default="0.1")
    desirable_weight: str = decimal("Weight of the desirable (label true) examples' loss; raise it when they are "
                                    "fewer than the undesirable ones, e.g. \"1.0\".", default="1.0")
    undesirable_weight: str = decimal("Weight of the undesirable (label false) examples' loss.", default="1.0")
    loss_type: Literal["kto", "apo_zero_unpaired"] = Field(
        default="kto", description="kto (the paper's loss, with a KL estimate from the batch); apo_zero_unpaired "
        "(pushes desirable answers up and undesirable down, no KL term).")


# ------------------------------------------------------------------------------------------ methods


@dataclass(frozen=True)
class CheckpointMetric:
    """A figure the method's TRL trainer reports at every evaluation on the held-out data (one per checkpoint),
    under the name transformers' Trainer gives it: what hyperparameters.earlyStopping.metric may name
    (docs/hyperparameters.md#early-stopping says what each means)."""

    name: str  # e.g. eval_loss
    higher_is_better: bool


EVAL_LOSS = CheckpointMetric("eval_loss", False)  # the token loss (sft, cpt) or the preference loss
TOKEN_ACCURACY = CheckpointMetric("eval_mean_token_accuracy", True)  # answer tokens predicted as the top choice
REWARD_ACCURACY = CheckpointMetric("eval_rewards/accuracies", True)  # pairs whose chosen answer gets the higher reward
REWARD_MARGIN = CheckpointMetric("eval_rewards/margins", True)  # mean implicit reward margin, chosen over rejected


@dataclass(frozen=True)
class MethodInfo:
    """What the API, the planner and the data loader know about one training method."""

    name: str  # method.type
    title: str  # for people: CRD and docs text
    summary: str  # one line: what it trains on, for method.type's description
    formats: tuple[str, ...]  # dataset formats it trains on; one: what "auto" means, more: detected per record
    learning_rate: tuple[str, str]  # default peak learning rate (with an adapter, full fine-tune)
    options: type[KubeModel] | None = None  # the model of method.<name>, if the method has options
    # what it reports at every evaluation that early stopping can watch; the first is the default
    checkpoint_metrics: tuple[CheckpointMetric, ...] = (EVAL_LOSS,)


METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("sft", "SFT", "supervised fine-tuning on chat or text", ("chatml", "alpaca", "sharegpt", "text"),
               ("2e-4", "2e-5"), checkpoint_metrics=(EVAL_LOSS, TOKEN_ACCURACY)),
    MethodInfo("dpo", "DPO", "Direct Preference Optimization on preference pairs", ("preference",),
               ("5e-5", "5e-6"), DPOOptions, (EVAL_LOSS, REWARD_ACCURACY, REWARD_MARGIN)),
    MethodInfo("cpt", "continued pretraining", "continued pretraining on raw text", ("text",), ("2e-4", "2e-5"),
               checkpoint_metrics=(EVAL_LOSS, TOKEN_ACCURACY)),
    MethodInfo("orpo", "ORPO", "Odds Ratio Preference Optimization: SFT and preference pairs in one step, no reference "
               "model", ("preference",), ("8e-5", "8e-6"), ORPOOptions,
               (EVAL_LOSS, REWARD_ACCURACY, REWARD_MARGIN)),
    MethodInfo("kto", "KTO", "Kahneman-Tversky Optimization on answers labelled desirable or not (unpaired), or on "
               "preference pairs (each pair becomes one desirable and one undesirable answer)", ("unpaired", "preference"),
               ("5e-5", "5e-6"), KTOOptions),
)}

DEFAULT_METHOD = "sft"


def default_learning_rate(method: str, adapter: str) -> str:
    """The peak learning rate a method trains with when hyperparameters.learningRate is empty."""
    with_adapter, full = METHODS[method].learning_rate
    return full if adapter == "full" else with_adapter


def learning_rate_help() -> str:
    rates = ", ".join(f"{m.name} {m.learning_rate[0]}/{m.learning_rate[1]}" for m in METHODS.values())
    return f"with an adapter (LoRA/QLoRA/DoRA) / full, by method: {rates}"


def format_problem(method: str, fmt: str) -> str | None:
    """The message when method cannot train on dataset.format fmt ("auto" always passes), else None."""
    allowed = METHODS[method].formats
    if fmt == "auto" or fmt in allowed:
        return None
    return f"method.type {method} needs dataset.format {', '.join(allowed)} or auto"


def format_rules() -> list[dict[str, str]]:
    """The CEL twins of format_problem, for FineTuneJobSpec's x-kubernetes-validations."""
    rules = []
    for m in METHODS.values():
        if set(m.formats) == set(FORMATS):
            continue
        allowed = ", ".join(f"'{f}'" for f in ("auto", *m.formats))
        rules.append({
            "rule": f"!has(self.method) || self.method.type != '{m.name}' || !has(self.dataset.format) "
                    f"|| self.dataset.format in [{allowed}]",
            "message": format_problem(m.name, "-"),  # type: ignore[dict-item]
        })
    return rules


def options_problem(method: str, present: list[str]) -> str | None:
    """The message when method.<name> options are set for another method.type, else None."""
    for name in present:
        if name != method:
            return f"method.{name} is only valid with method.type {name}"
    return None


def options_rules() -> list[dict[str, str]]:
    """The CEL twins of options_problem, for Method's x-kubernetes-validations."""
    return [{"rule": f"!has(self.{m.name}) || self.type == '{m.name}'",
             "message": f"method.{m.name} is only valid with method.type {m.name}"}
            for m in METHODS.values() if m.options is not None]


def checkpoint_metric(method: str, name: str) -> CheckpointMetric:
    """The row of `name` among what `method` reports at every evaluation (KeyError if it reports no such figure)."""
    for metric in METHODS[method].checkpoint_metrics:
        if metric.name == name:
            return metric
    raise KeyError(name)


def checkpoint_metric_problem(method: str, name: str) -> str | None:
    """The message when hyperparameters.earlyStopping.metric names a figure `method` does not report, else None."""
    allowed = [m.name for m in METHODS[method].checkpoint_metrics]
    if name in allowed:
        return None
    return f"hyperparameters.earlyStopping.metric {name} is not measured by method.type {method}: use {', '.join(allowed)}"


def checkpoint_metrics_help() -> str:
    return "; ".join(f"{m.name}: " + ", ".join(c.name for c in m.checkpoint_metrics) for m in METHODS.values())


def checkpoint_metric_rules() -> list[dict[str, str]]:
    """The CEL twins of checkpoint_metric_problem, for FineTuneJobSpec's x-kubernetes-validations (an absent
    method.type is sft, an absent metric eval_loss, which every method reports)."""
    es = "self.hyperparameters.earlyStopping"
    method = f"(has(self.method) && has(self.method.type) ? self.method.type : '{DEFAULT_METHOD}')"
    rules = []
    for m in METHODS.values():
        allowed = ", ".join(f"'{c.name}'" for c in m.checkpoint_metrics)
        rules.append({
            "rule": f"!has(self.hyperparameters) || !has({es}) || !has({es}.metric) || {method} != '{m.name}' "
                    f"|| {es}.metric in [{allowed}]",
            "message": f"hyperparameters.earlyStopping.metric is not measured by method.type {m.name}: use "
                       + ", ".join(c.name for c in m.checkpoint_metrics),
        })
    return rules
