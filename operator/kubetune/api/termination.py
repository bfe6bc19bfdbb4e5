"""The trainer's termination report: its last words, read by the operator. Pure: pydantic only.

Written by the trainer to /dev/termination-log (constants.TERMINATION_LOG; Kubernetes keeps at most
4 KiB of it in the pod's ``state.terminated.message``), read by the operator's FineTuneJob status:

- exit 0 (exit_codes.SUCCESS): JSON ``{"adapter": {"uri", "manifestSha256", "type", "rank"},
  "evaluation": {"baseline": {...}, "final": {...}}}``, written only after manifest.json is in object
  storage. The operator copies ``adapter`` and ``evaluation`` into status when the Job is Complete.
- any other exit: one paragraph of plain text (``message`` once parsed), e.g. what to fix for a user
  error, or exit_codes.PREEMPTED_CHECKPOINT for a stop by SIGTERM.
"""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import Field, ValidationError

from .common import KubeModel
from .finetunejob import Evaluation, PublishedAdapter

MAX_TERMINATION_MESSAGE = 4000  # Kubernetes keeps at most 4096 bytes of a termination message

Report = TypeVar("Report", bound=KubeModel)


def read_termination_message(model: type[Report], text: str | None) -> Report | str:
    """A termination message read back: the ``model`` its JSON holds, else the stripped text itself (plain text,
    a crash, or the log tail that FallbackToLogsOnError leaves when the process died first)."""
    text = (text or "").strip()
    if text.startswith("{"):
        try:
            return model.model_validate_json(text)
        except ValidationError:
            pass
    return text


class TerminationReport(KubeModel):
    """What the trainer says when it exits."""

    adapter: PublishedAdapter | None = Field(default=None, description="What it published (exit 0).")
    evaluation: Evaluation | None = Field(default=None, description="Baseline and final evaluation (exit 0).")
    message: str | None = Field(default=None, description="Why it stopped: plain text on the wire (exit != 0).")

    def text(self) -> str:
        """The termination-log text: a published result as JSON, anything else as one paragraph."""
        if self.adapter is None and self.evaluation is None:
            return " ".join((self.message or "").split())
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def parse(cls, text: str | None) -> TerminationReport:
        """Read a termination message back: JSON as written by ``text``, else plain text as ``message``
        (a failure, or the log tail that FallbackToLogsOnError leaves when the trainer died first)."""
        report = read_termination_message(cls, text)
        return report if isinstance(report, cls) else cls(message=report or None)
