"""A succeeded job's result file, as OpenAI lists it in `result_files`: a CSV of its step metrics (purpose
`fine-tune-results`), readable with `client.files.content(job.result_files[0])`.

Nothing is stored for it: the file is the published `metrics.jsonl` (the Trainer's log history, next to the
adapter, kubetune.api.storage_layout.METRICS_FILE) turned into OpenAI's columns when it is read. Its id names the
job (`file-result-<the job id's suffix>`), so it can never point at another tenant's job: the job is looked up in
the caller's namespace like every other job read.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from typing import Any

from kubetune_storage import StorageError

from ..api.storage_layout import METRICS_FILE
from .app import Gateway
from .errors import OpenAIError, bad_request, not_found
from .jobview import has_result, result_file_id, unix
from .tenancy import Tenant

RESULT_ID = re.compile(r"^file-result-([a-z0-9]{24})$")
PURPOSE = "fine-tune-results"
FILENAME = "step_metrics.csv"
# OpenAI's step-metrics columns <- the Trainer's log-history keys (TRL logs mean_token_accuracy for SFT).
COLUMNS = {"step": "step", "train_loss": "loss", "train_accuracy": "mean_token_accuracy", "valid_loss": "eval_loss",
           "valid_mean_token_accuracy": "eval_mean_token_accuracy", "learning_rate": "learning_rate"}


def is_result(file_id: str) -> bool:
    return bool(RESULT_ID.fullmatch(file_id or ""))


def step_metrics_csv(log_history: list[dict[str, Any]]) -> str:
    """One row per step that logged anything of COLUMNS (a training log and an evaluation at the same step share
    a row); empty cells where a step logged no such figure."""
    rows: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        if "step" not in entry:
            continue
        row = rows.setdefault(int(entry["step"]), {"step": int(entry["step"])})
        for column, key in COLUMNS.items():
            if key in entry and column != "step":
                row[column] = entry[key]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[step] for step in sorted(rows))
    return out.getvalue()


async def _job(gw: Gateway, who: Tenant, file_id: str) -> dict[str, Any]:
    from .jobs import get_job  # jobs imports files, which imports this module

    match = RESULT_ID.fullmatch(file_id or "")
    if match is None:
        raise not_found("file", file_id)
    try:
        ftj = await get_job(gw, who, "ftjob-" + match.group(1))
    except OpenAIError as exc:
        if exc.status == 404:  # the job's 404 is its result file's
            raise not_found("file", file_id) from None
        raise
    if not has_result(ftj):
        raise not_found("file", file_id)  # no result before the job succeeded
    return ftj


async def content(gw: Gateway, who: Tenant, file_id: str) -> tuple[dict[str, Any], bytes]:
    """(the File object, the CSV) of a result file of one of this tenant's succeeded jobs; 404 otherwise."""
    from .files import storage_failed

    ftj = await _job(gw, who, file_id)
    status = ftj["status"]

    def read() -> bytes | None:
        return gw.storage.open(status["adapter"]["uri"]).read_optional(METRICS_FILE)

    try:
        raw = await asyncio.to_thread(read)
    except StorageError as exc:
        raise storage_failed(exc) from None
    history = [json.loads(line) for line in (raw or b"").decode().splitlines() if line.strip()]
    data = step_metrics_csv(history).encode()
    created = unix(status.get("completionTime")) or unix(ftj["metadata"].get("creationTimestamp")) or 0
    return {"id": file_id, "object": "file", "bytes": len(data), "created_at": created, "filename": FILENAME,
            "purpose": PURPOSE, "status": "processed", "expires_at": None, "status_details": None}, data


async def listed(gw: Gateway, who: Tenant) -> list[dict[str, Any]]:
    """The File objects of the result files of this tenant's API-created FineTuneJobs that succeeded."""
    from .jobs import api_jobs

    jobs = await api_jobs(gw, who)
    done = [ftj for ftj in jobs if has_result(ftj)]
    found = await asyncio.gather(*(content(gw, who, result_file_id(ftj["metadata"]["name"])) for ftj in done))
    return [meta for meta, _ in found]


def refuse_delete(file_id: str) -> None:
    raise bad_request(f"{file_id} is the result file of a fine-tuning job and goes with it: delete the job's model "
                      f"(DELETE /v1/models/...) to remove what it published.", param="file_id", code="result_file")
