"""The one TrainerCallback: progress numbers, checkpoint upload, and stop-on-SIGTERM.

SIGTERM sets `StopFlag.requested`; at the end of the current optimizer step the callback asks the
Trainer to save a checkpoint (uploaded by on_save) and stop. Outside the training loop the signal
handler raises Preempted at once (there is no new state worth saving). In a distributed run the ranks
agree on the flag at every step end (`agree`, a collective), so all of them stop at the same step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune.api.finetunejob import TrainerPhase

from .checkpoints import Checkpoints
from .errors import StopFlag
from .reporting import Reporter, Tracker, _finite

log = logging.getLogger(__name__)


class KubetuneCallback(TrainerCallback):
    def __init__(self, tracker: Tracker, reporter: Reporter, checkpoints: Checkpoints | None, stop: StopFlag,
                 state_for_checkpoint: dict[str, Any], agree: Callable[[bool], bool] | None = None,
                 barrier: Callable[[], None] | None = None, gather: Callable[[Any], list[Any]] | None = None,
                 main: bool = True):
        self.tracker = tracker
        self.agree = agree or (lambda flag: flag)
        self.barrier = barrier or (lambda: None)
        self.gather = gather or (lambda value: [value])  # every rank's value on every rank (a collective)
        self.main = main  # global rank 0: commits checkpoints; `checkpoints` is set on each pod's first process
        self.reporter = reporter
        self.checkpoints = checkpoints
        self.stop = stop
        self.extra_state = state_for_checkpoint
        self.last_saved_step: int | None = None
        self.stopped_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.stop.in_training = True
        self.tracker.begin(state.global_step, state.max_steps, state.num_input_tokens_seen or 0)
        self.reporter.report(force=True)
        if self.agree(self.stop.requested):  # SIGTERM arrived while the trainer was setting up
            self._request_stop(state, control)

    def on_step_end(self, args, state, control, **kwargs):
        self.tracker.update(state.global_step, state.epoch, state.num_input_tokens_seen)
        if self.agree(self.stop.requested):
            self._request_stop(state, control)
        elif not control.should_log:  # a step that logs reports from on_log, with its loss
            self.reporter.report()

    def _request_stop(self, state, control) -> None:
        if self.stopped_at is None:
            log.warning("SIGTERM: saving a checkpoint at step %d and stopping", state.global_step)
        self.stopped_at = state.global_step
        if state.global_step > 0 and state.global_step != self.last_saved_step:
            control.should_save = True
        control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        with self.tracker.lock:
            if _finite(logs.get("loss")) is not None:
                self.tracker.loss = _finite(logs["loss"])
            if _finite(logs.get("eval_loss")) is not None:
                self.tracker.eval_loss = _finite(logs["eval_loss"])
        if self.stop.in_training and "loss" in logs:
            self.reporter.report()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and _finite(metrics.get("eval_loss")) is not None:
            with self.tracker.lock:
                self.tracker.eval_loss = _finite(metrics["eval_loss"])
        if self.stop.in_training:
            self.reporter.report(force=True)

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        local = Path(args.output_dir) / f"checkpoint-{step}"
        uploads = self.checkpoints is not None and local.is_dir()
        if uploads and self.main:
            self.checkpoints.begin(step, local, self.extra_state)
        # every rank has written its own files (RNG state, FSDP shards) before its pod uploads them
        self.barrier()
        if uploads:
            self.reporter.enter(TrainerPhase.SAVING_CHECKPOINT)  # an upload of a large model takes minutes
        parts = self.gather(self.checkpoints.upload(step, local) if uploads else {})
        if uploads and self.main:
            uri = self.checkpoints.commit(step, parts, local)  # after every pod's upload: one atomic checkpoint
            log.info("checkpoint: step %d saved to %s", step, uri)
            listing = self.checkpoints.listing()
            with self.tracker.lock:
                self.tracker.checkpoints = listing
        elif uploads and not args.load_best_model_at_end:  # (the best one may be loaded from this disk at the end)
            _drop_older(local)  # only rank 0's Trainer rotates its checkpoints: this pod keeps the newest only
        self.last_saved_step = step
        self.tracker.enter(TrainerPhase.TRAINING)
        self.reporter.report(force=True)

    def on_train_end(self, args, state, control, **kwargs):
        self.stop.in_training = False
        self.tracker.update(state.global_step, state.epoch, state.num_input_tokens_seen)
        self.reporter.report(force=True)


def _drop_older(local: Path) -> None:
    import shutil

    for folder in local.parent.glob("checkpoint-*"):
        if folder != local and folder.name.removeprefix("checkpoint-").isdigit() and \
                int(folder.name.removeprefix("checkpoint-")) < int(local.name.removeprefix("checkpoint-")):
            shutil.rmtree(folder, ignore_errors=True)
