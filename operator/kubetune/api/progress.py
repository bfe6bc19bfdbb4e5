"""The trainer's progress report: a merge patch of its FineTuneJob's status subresource. Pure: pydantic only.

Sent by the trainer (kubetune_trainer.reporting) at least every progress.intervalSeconds while it runs
(``PATCH <progress.statusPath>``, application/merge-patch+json), or appended as one JSON line per
report in progress mode ``file``. It carries only the trainer-owned keys of FineTuneJobStatus, so it
never overwrites what the operator derives (conditions, ...); the parts are the status models
themselves, so the CRD schema validates every report. See docs/progress-contract.md.

    {"status": {"progress": {"phase": "Training", "step": 40, ...},
                "checkpoints": [{"step": 40, "uri": "s3://out/N/J/checkpoints/00000040"}],
                "evaluation": {"baseline": {"evalLoss": 3.2, "perplexity": 24.5}}}}
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .common import KubeModel
from .finetunejob import MAX_CHECKPOINTS_LISTED, CheckpointInfo, Evaluation, Progress
from .tracking import TrackingStatus


class TrainerStatus(KubeModel):
    """The trainer-owned part of FineTuneJobStatus."""

    progress: Progress = Field(description="Live progress.")
    checkpoints: list[CheckpointInfo] | None = Field(default=None, description="Complete checkpoints, newest last.",
                                                     max_length=MAX_CHECKPOINTS_LISTED)
    evaluation: Evaluation | None = Field(default=None, description="Before/after evaluation so far.")
    tracking: TrackingStatus | None = Field(default=None, description="Links to the tracked run (spec.tracking).")


class ProgressReport(KubeModel):
    """One report: the merge-patch body."""

    status: TrainerStatus

    def body(self) -> dict[str, Any]:
        """The wire form (camelCase, unset fields left out: a merge patch must not null the operator's keys)."""
        return self.to_dict()
