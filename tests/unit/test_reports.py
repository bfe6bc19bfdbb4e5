"""The trainer's reports, typed once in kubetune.api and read back by the operator: termination and progress."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubetune.api import exit_codes
from kubetune.api.finetunejob import FineTuneJobStatus, TrainerPhase
from kubetune.api.progress import ProgressReport
from kubetune.api.termination import TerminationReport
from kubetune.status.finetunejob import termination_report
from kubetune_trainer.errors import write_termination
from kubetune_trainer.reporting import Tracker
from pydantic import ValidationError

SHA = "a" * 64
PUBLISHED = {"adapter": {"uri": "s3://out/ml/bot", "manifestSha256": SHA, "type": "lora", "rank": 16},
             "evaluation": {"baseline": {"evalLoss": 3.2, "perplexity": 24.5}, "final": {"evalLoss": 0.6}}}


def ended(message: str, code: int = 0) -> dict:
    return {"metadata": {"name": "p1"}, "status": {"containerStatuses": [
        {"name": "trainer", "state": {"terminated": {"exitCode": code, "message": message}}}]}}


def written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report: str | dict) -> str:
    log = tmp_path / "termination-log"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    write_termination(report)
    return log.read_text()


def test_what_the_trainer_writes_is_what_the_operator_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = termination_report(ended(written(tmp_path, monkeypatch, PUBLISHED)))
    assert report == TerminationReport.model_validate(PUBLISHED)
    assert report.adapter.rank == 16 and report.evaluation.final.eval_loss == 0.6
    stopped = exit_codes.PREEMPTED_CHECKPOINT.format(step=40, uri="s3://out/ml/bot/checkpoints/40")
    assert termination_report(ended(written(tmp_path, monkeypatch, f"Stopped by SIGTERM;\n {stopped}"), 143)) == \
        TerminationReport(message=f"Stopped by SIGTERM; {stopped}")


def test_the_trainer_cannot_write_a_report_the_operator_would_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="manifestSha256"):
        written(tmp_path, monkeypatch, {"adapter": {"uri": "s3://out/ml/bot", "manifestSha256": "not-a-sha"}})


def test_a_log_tail_is_a_message() -> None:
    # FallbackToLogsOnError: a trainer that died first leaves its log tail, which may start with a brace
    assert termination_report(ended('{"partial": ', 137)) == TerminationReport(message='{"partial":')
    assert termination_report(ended("", 137)) == TerminationReport()


def test_a_progress_report_is_the_trainer_owned_part_of_status() -> None:
    tracker = Tracker(total_steps=120, checkpoints=[(40, "s3://out/ml/bot/checkpoints/40")],
                      baseline={"evalLoss": 3.2, "perplexity": 24.5})
    tracker.begin(40, 120, 2048)
    body = tracker.status_body()
    assert ProgressReport.model_validate(body).body() == body
    assert set(body["status"]) == {"progress", "checkpoints", "evaluation"}
    status = FineTuneJobStatus.model_validate(body["status"])  # the CRD's status schema takes it as is
    assert status.progress.phase == TrainerPhase.TRAINING and status.progress.percent == 33
    assert json.loads(json.dumps(body))["status"]["checkpoints"] == [{"step": 40, "uri": "s3://out/ml/bot/checkpoints/40"}]
