"""The exit-code contract: every failure is a UserError, a Preempted stop or an internal error.

The reason goes to the termination log (one paragraph, < 4 KiB) where the operator reads it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from kubetune.api.constants import ENV_TERMINATION_LOG, TERMINATION_LOG
from kubetune.api.termination import MAX_TERMINATION_MESSAGE, TerminationReport

log = logging.getLogger(__name__)


class UserError(Exception):
    """Bad data, bad config, model not found, no access: retrying cannot help (exit 1)."""


class DataError(UserError):
    """Dataset validation failed. `problems` holds one `file:line: message` per problem (capped)."""

    def __init__(self, summary: str, problems: list[str] | None = None):
        self.summary = summary
        self.problems = problems or []
        shown = "; ".join(self.problems[:10])
        more = len(self.problems) - 10
        text = summary + (f": {shown}" if shown else "") + (f"; and {more} more (see the pod log)" if more > 0 else "")
        super().__init__(text)


class TransientError(Exception):
    """Infrastructure that may recover (storage unreachable, timeouts): internal error, retried."""


class Preempted(BaseException):
    """SIGTERM: stop now (after saving a checkpoint if training). BaseException so that no broad
    `except Exception` swallows it."""


class StopFlag:
    """Set by the SIGTERM handler. While training, the callback saves a checkpoint and stops at the end
    of the step; outside training the handler raises Preempted at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.in_training = False
        # set while a distributed launcher runs: the signal goes on to the training processes
        self.forward: Callable[[int], None] | None = None

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def request(self) -> None:
        self.event.set()


def termination_log_path() -> Path:
    return Path(os.environ.get(ENV_TERMINATION_LOG) or TERMINATION_LOG)


def _truncate(text: str, limit: int = MAX_TERMINATION_MESSAGE) -> str:
    raw = text.encode()
    return text if len(raw) <= limit else raw[: limit - 3].decode(errors="ignore") + "..."


def write_termination(message: str | dict | TerminationReport) -> None:
    """Write the final report (kubetune.api.termination.TerminationReport: a dict is the report in its wire
    form, as run() and the ranks pass it on; a str is a failure's paragraph). Never raises (a missing
    /dev/termination-log outside a pod is fine)."""
    if isinstance(message, str):
        report = TerminationReport(message=message)
    elif isinstance(message, dict):
        report = TerminationReport.model_validate(message)
    else:
        report = message
    try:
        termination_log_path().write_text(_truncate(report.text()))
    except OSError as exc:
        log.warning("cannot write the termination log %s: %s", termination_log_path(), exc)
