"""The pre-flight report: what the CPU-only validation run found before any GPU is asked for. Pure: pydantic only.

The operator runs the trainer image once without a GPU (and outside the Kueue GPU quota) as

    python -m kubetune_trainer --config /etc/kubetune/config.json --preflight

with the per-GPU memory budget in env KUBETUNE_GPU_MEMORY (ENV_GPU_MEMORY: a Kubernetes quantity such as
"80Gi"; unset or "0" = no GPU check, e.g. resources.gpus 0). It fetches the data and the base model's config and
tokenizer (never the weights), validates every record, counts tokens, plans steps, estimates peak GPU memory
(kubetune.api.memory) and writes this report in two places:

- the termination log (constants.TERMINATION_LOG, read from the pod's ``state.terminated.message``):
  ``PreflightReport.text()``, JSON shrunk to fit 4 KiB (record errors dropped from the end; ``errorCount`` keeps
  the number);
- object storage, in full: ``<output>/<namespace>/<job>/preflight/report.json`` (PREFLIGHT_DIR, REPORT_FILE).

Exit codes are the trainer's (exit_codes): 0 = passed (``passed`` true), 1 = the user's to fix (bad records, too
few examples, does not fit the GPU, model or data not found: ``passed`` false and ``message`` says what to fix),
203 = internal (retry). A message that is not JSON (the pod died before writing, FallbackToLogsOnError) parses to
``passed`` false with the text as ``message``.
"""

from __future__ import annotations

import json
import re

from pydantic import Field

from .common import KubeModel
from .memory import MemoryEstimate, MemoryOption
from .termination import MAX_TERMINATION_MESSAGE, read_termination_message

ENV_GPU_MEMORY = "KUBETUNE_GPU_MEMORY"  # per-GPU memory budget of the pre-flight check: a quantity ("80Gi")
PREFLIGHT_FLAG = "--preflight"
PREFLIGHT_DIR = "preflight"  # under the job prefix
REPORT_FILE = "report.json"
MAX_ERRORS = 50  # record errors kept in the stored report (the termination log keeps what fits)
MAX_ERROR_TEXT = 300

_LOCATION = re.compile(r"^(?P<file>.+?)(?::(?P<line>\d+)|\[(?P<index>\d+)\])?$")
_FIELD = re.compile(r'^(?:missing field "(?P<missing>[^"]+)"|(?P<path>[A-Za-z_][\w]*(?:\[\d+\])*(?:\.[A-Za-z_]\w*(?:\[\d+\])*)*)\b)')


class RecordError(KubeModel):
    """One bad record (or file): file, line (JSONL, CSV) or index (JSON array, Parquet), field, what is wrong."""

    file: str = Field(description="Data file name.", max_length=512)
    line: int | None = Field(default=None, description="1-based line (JSONL, CSV).", ge=0)
    index: int | None = Field(default=None, description="0-based record index (JSON array, Parquet).", ge=0)
    field: str | None = Field(default=None, description="JSON path of the field, e.g. messages[2].role.", max_length=256)
    message: str = Field(description="What is wrong, naming the field.", max_length=MAX_ERROR_TEXT)

    def text(self) -> str:
        """`file:line: message` / `file[index]: message` / `file: message` (the trainer's log form)."""
        where = self.file + (f":{self.line}" if self.line is not None else f"[{self.index}]" if self.index is not None else "")
        return f"{where}: {self.message}"

    @classmethod
    def parse(cls, problem: str) -> RecordError:
        """From the data readers' `<file>:<line>: <message>` / `<file>[<i>]: <message>` text."""
        where, sep, message = problem.partition(": ")
        found = _LOCATION.match(where) if sep else None
        if found is None:
            return cls(file="?", message=problem[:MAX_ERROR_TEXT])
        field = _FIELD.match(message)
        name = (field.group("missing") or field.group("path")) if field else None
        known_words = {"not", "has", "unsupported", "a", "CSV", "must"}
        return cls(file=found.group("file"), line=int(found.group("line")) if found.group("line") else None,
                   index=int(found.group("index")) if found.group("index") else None,
                   field=name if name and name not in known_words else None, message=message[:MAX_ERROR_TEXT])


class TokenStats(KubeModel):
    """Tokens per example (the chat template applied, as the trainer tokenizes it; preference pairs: prompt +
    the longer answer)."""

    min: int = Field(description="Fewest tokens.", ge=0)
    median: int = Field(description="Median.", ge=0)
    p95: int = Field(description="95th percentile.", ge=0)
    max: int = Field(description="Most tokens.", ge=0)
    mean: float = Field(description="Mean.", ge=0)


class SplitReport(KubeModel):
    """One data split as the trainer will see it."""

    files: list[str] = Field(default_factory=list, description="Data file names read.", max_length=1000)
    records: int = Field(default=0, description="Records read (valid or not).", ge=0)
    examples: int = Field(default=0, description="Valid examples used for this split (after the hold-out split).", ge=0)
    invalid: int = Field(default=0, description="Records with problems.", ge=0)
    tokens: int = Field(default=0, description="Tokens in the valid examples, before truncation.", ge=0)
    token_stats: TokenStats | None = Field(default=None, description="Tokens per example.")
    truncated: int = Field(default=0, description="Examples longer than maxLength (cut, or split for CPT).", ge=0)


class PreflightReport(KubeModel):
    """What the pre-flight run found. ``passed`` false: the GPU Job must not start; ``message`` says why."""

    passed: bool = Field(description="Data valid and the job fits the requested GPUs: the training Job may start.")
    message: str = Field(default="", description="One paragraph: the verdict, and on failure what to fix (the cheapest fix first).",
                         max_length=2000)
    method: str | None = Field(default=None, description="method.type checked.", max_length=32)
    format: str | None = Field(default=None, description="Dataset format found (or dataset.format).", max_length=32)
    max_length: int | None = Field(default=None, description="hyperparameters.maxLength used for truncation.", ge=1)
    train: SplitReport | None = Field(default=None, description="Training split.")
    validation: SplitReport | None = Field(default=None, description="Held-out split (dataset.validation, or split off).")
    planned_steps: int | None = Field(default=None, description="Optimizer steps the training Job will run.", ge=0)
    estimated_training_tokens: int | None = Field(
        default=None, description="Tokens the training Job will train on (after truncation, x epochs or up to maxSteps).", ge=0)
    memory: MemoryEstimate | None = Field(default=None, description="Estimated peak memory per GPU.")
    gpu_memory_bytes: int | None = Field(default=None, description="The per-GPU budget compared against (None: not checked).", ge=0)
    fits: bool | None = Field(default=None, description="memory.peakBytes <= gpuMemoryBytes (None: not checked).")
    alternatives: list[MemoryOption] = Field(default_factory=list, description="Other adapter types, cheapest first.",
                                             max_length=8)
    errors: list[RecordError] = Field(default_factory=list, description="Record errors, in file order (capped).",
                                      max_length=MAX_ERRORS)
    error_count: int = Field(default=0, description="All record errors found (errors holds the first ones).", ge=0)
    warnings: list[str] = Field(default_factory=list, description="Things worth knowing that do not fail the job.",
                                max_length=20)

    def text(self, limit: int = MAX_TERMINATION_MESSAGE) -> str:
        """The termination-log text: compact JSON of at most `limit` bytes (errors, then warnings, then alternatives
        dropped from the end until it fits; errorCount keeps the total)."""
        report = self.model_copy(deep=True)
        while True:
            text = json.dumps(report.to_dict(), separators=(",", ":"), sort_keys=True)
            if len(text.encode()) <= limit:
                return text
            for field in ("errors", "warnings", "alternatives"):
                if getattr(report, field):
                    setattr(report, field, getattr(report, field)[:-1])
                    break
            else:
                report.message = report.message[: max(0, len(report.message) - (len(text.encode()) - limit) - 3)] + "..."

    @classmethod
    def parse(cls, text: str | None) -> PreflightReport:
        """Read the termination message back: the JSON of ``text``; anything else (a crash, the log tail) is a
        failed report whose message is that text."""
        report = read_termination_message(cls, text)
        if isinstance(report, cls):
            return report
        return cls(passed=False, message=" ".join(report.split())[:2000] or "the pre-flight run left no report")
