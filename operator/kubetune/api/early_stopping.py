"""hyperparameters.earlyStopping: stop when the held-out metric stops improving, publish the best checkpoint.

The cadence is the checkpoint cadence: the trainer evaluates on the held-out data and writes a checkpoint at
the same steps (every checkpointing.intervalSteps, and at the last step), so every evaluated step is a
checkpoint that can be published. `patience` counts those evaluations. Pure: pydantic only; the trainer's
kubetune_trainer/early_stopping.py maps it onto transformers' EarlyStoppingCallback and
load_best_model_at_end, and the pre-flight checks the planned steps with `too_few_evaluations`.
"""

from __future__ import annotations

from pydantic import Field

from .common import KubeModel, decimal
from .methods import EVAL_LOSS, checkpoint_metrics_help

DEFAULT_PATIENCE = 3
DEFAULT_INTERVAL_STEPS = 100  # checkpointing.intervalSteps' default (kept equal by tests/unit/test_early_stopping.py)
MAX_REASON = 256  # status.adapter.reason (the termination report must stay under 4 KiB)


class EarlyStopping(KubeModel):
    """Stop training once the held-out metric has not improved for `patience` evaluations in a row, and publish
    the checkpoint with the best metric instead of the last one (status.adapter.step says which, and why)."""

    patience: int = Field(
        default=DEFAULT_PATIENCE, ge=1, le=1000,
        description="Evaluations in a row without improvement after which training stops. The held-out data is "
        "evaluated, and a checkpoint written, every checkpointing.intervalSteps steps: training stops at most "
        "patience x intervalSteps steps after the last improvement.")
    min_delta: str = decimal(
        "An evaluation counts as an improvement only if it beats the best so far by more than this, in the "
        "metric's unit, e.g. \"0.01\". \"0\": any improvement counts. The published checkpoint is the one with "
        "the best metric either way.", default="0")
    metric: str = Field(
        default=EVAL_LOSS.name, max_length=64,
        description="What decides, among the figures the method's trainer measures on the held-out data at every "
        f"evaluation (method.type: metrics): {checkpoint_metrics_help()}. eval_loss (the default) is lower-is-"
        "better; the accuracies and margins are higher-is-better, and minDelta is in their unit. The task metrics "
        "of spec.evaluation (exact_match, rouge_l, ...) are not offered: they need generated answers for every "
        "prompt, which would run generation at every checkpoint; they are measured once before and once after "
        "training instead.")


def evaluations_before_last_step(steps: int, interval: int) -> int:
    """Evaluations (at every `interval` steps) strictly before the last of `steps` steps."""
    return max(0, steps - 1) // interval


def too_few_evaluations(steps: int, interval: int, patience: int, steps_are: str) -> str | None:
    """Why early stopping could never stop `steps` steps early, or None. It needs a first evaluation to improve
    on, then `patience` more, all before the last step (the last step is evaluated anyway). `steps_are` names the
    steps in the message, e.g. "hyperparameters.maxSteps=150" or "the 150 planned steps"."""
    evaluations = evaluations_before_last_step(steps, interval)
    if evaluations >= patience + 1:
        return None
    most = max(1, (steps - 1) // (patience + 1))
    return (f"hyperparameters.earlyStopping: patience {patience} needs at least {patience + 1} evaluations before "
            f"the last step, but {steps_are} with an evaluation every checkpointing.intervalSteps={interval} steps "
            f"give {evaluations}: set checkpointing.intervalSteps to at most {most}, lower the patience, or train "
            "longer")


def cel_rule() -> dict[str, str]:
    """The CEL twin of the spec check (maxSteps known): the same condition, with the same defaults."""
    hp, es = "self.hyperparameters", "self.hyperparameters.earlyStopping"
    interval = ("(has(self.checkpointing) && has(self.checkpointing.intervalSteps) ? self.checkpointing.intervalSteps"
                f" : {DEFAULT_INTERVAL_STEPS})")
    patience = f"(has({es}.patience) ? {es}.patience : {DEFAULT_PATIENCE})"
    return {"rule": f"!has(self.hyperparameters) || !has({es}) || !has({hp}.maxSteps) || "
                    f"({hp}.maxSteps - 1) / {interval} >= {patience} + 1",
            "message": "hyperparameters.earlyStopping needs at least patience + 1 evaluations (one every "
                       "checkpointing.intervalSteps) before hyperparameters.maxSteps"}
