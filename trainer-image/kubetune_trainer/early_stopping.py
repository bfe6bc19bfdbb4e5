"""hyperparameters.earlyStopping in the trainer: transformers' EarlyStoppingCallback and load_best_model_at_end.

- The plan (`trl_args`): the held-out data is evaluated and a checkpoint saved at the same steps (every
  checkpointing.intervalSteps and the last step: the plan's cadence already), the best checkpoint is
  tracked on earlyStopping.metric (eval_loss by default; its direction from the method registry,
  kubetune.api.methods.checkpoint_metrics) and loaded when training ends, so the final evaluation and the
  publish see the best weights. On resume, TrainerState (best_metric, best_global_step) comes back with
  the checkpoint, and restore_callback_states_from_checkpoint brings back the callback's patience counter
  (TrainerState.stateful_callbacks["EarlyStoppingCallback"]).
- Object storage (checkpoints.py): retention (checkpointing.keep) never deletes the best checkpoint, and
  a resume downloads it next to the newest one, so a resumed run can still publish it.
- `selection`: which step was published and why (status.adapter.step/reason, manifest.json).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.methods import checkpoint_metric

from .errors import UserError

log = logging.getLogger(__name__)


def trl_args(spec: FineTuneJobSpec, has_eval: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TrainingArguments keywords, summary entries) for early stopping; nothing without it."""
    stopping = spec.hyperparameters.early_stopping
    if stopping is None:
        return {}, {}
    if not has_eval:
        raise UserError("hyperparameters.earlyStopping needs held-out data, but the validation set is empty: set "
                        "dataset.validation or dataset.validationSplit")
    higher = checkpoint_metric(spec.method.type, stopping.metric).higher_is_better
    args = {
        "load_best_model_at_end": True,
        "metric_for_best_model": stopping.metric,
        "greater_is_better": higher,
        "restore_callback_states_from_checkpoint": True,  # the patience counter survives a resume
        # each node loads the best checkpoint from its own disk when training ends
        "save_on_each_node": spec.resources.nodes > 1,
    }
    summary = {"earlyStopping": {"metric": stopping.metric, "higherIsBetter": higher, "patience": stopping.patience,
                                 "minDelta": stopping.min_delta,
                                 "evaluationEverySteps": spec.checkpointing.interval_steps}}
    return args, summary


def attach(trainer, spec: FineTuneJobSpec) -> None:
    """Add the early-stopping callback (a resume replaces it with the checkpoint's copy, counter included)."""
    stopping = spec.hyperparameters.early_stopping
    if stopping is None:
        return
    trainer.add_callback(KubetuneEarlyStopping(early_stopping_patience=stopping.patience,
                                               early_stopping_threshold=float(Decimal(stopping.min_delta))))


class KubetuneEarlyStopping(EarlyStoppingCallback):
    """transformers' EarlyStoppingCallback, counting only the evaluations during training: the final evaluation
    after train() (on the best weights) is no evaluation without improvement. Its state, counter included, is
    saved in every checkpoint (TrainerState.stateful_callbacks, under this class's name)."""

    training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        return super().on_train_begin(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        if self.training:
            super().on_evaluate(args, state, control, metrics, **kwargs)


def patience_counter(trainer) -> int:
    """Evaluations without improvement so far (the callback in use: after a resume, the restored one)."""
    return next((cb.early_stopping_patience_counter for cb in trainer.callback_handler.callbacks
                 if isinstance(cb, KubetuneEarlyStopping)), 0)


@dataclass(frozen=True)
class Selection:
    """The published weights: their step, and why that one."""

    step: int
    reason: str


def selection(trainer, spec: FineTuneJobSpec) -> Selection:
    """Which step the weights in `trainer.model` are from after train(), and why."""
    state = trainer.state
    last = state.global_step
    stopping = spec.hyperparameters.early_stopping
    if stopping is None:
        return Selection(last, f"last step {last} (hyperparameters.earlyStopping not set)")
    best, loaded = state.best_global_step, state.best_model_checkpoint
    if (not trainer.args.load_best_model_at_end or best is None or state.best_metric is None or loaded is None
            or Path(loaded).name != f"checkpoint-{best}"):
        log.warning("early stopping: the best checkpoint (step %s) was not loaded; publishing the last step", best)
        return Selection(last, f"last step {last}: the best checkpoint (step {best}) was not available to load")
    counter = patience_counter(trainer)
    metric = f"best {stopping.metric} {state.best_metric:.4g} at step {best} of {last}"
    if counter >= stopping.patience and last < state.max_steps:
        return Selection(best, f"{metric}; stopped early after {counter} evaluations without improvement "
                               f"({state.max_steps} steps planned)")
    return Selection(best, f"{metric}; trained all {last} steps ({counter} of patience {stopping.patience} "
                           "evaluations without improvement at the end)")
