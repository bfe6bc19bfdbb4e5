"""A tracker that fails never fails training; one that refuses the credentials at start fails the job as a user
error. No training here: kubetune_trainer.tracking.Tracking driven as run.py drives it, against a real MLflow
server that is then stopped, a port nobody listens on, and (for the refusal) a stub that plays MLflow's basic-auth
app by its documented answer to bad credentials: HTTP 401 with `WWW-Authenticate: Basic` on every API call."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubetune.api.trainer_config import ProgressReporting, TrainerConfig
from kubetune_trainer.errors import UserError
from kubetune_trainer.publish import Result
from kubetune_trainer.reporting import Reporter, Tracker
from kubetune_trainer.tracking import Backend, Guarded, Tracking
from tests.fixtures.mlflow_server import MlflowServer, mlflow_binary
from tests.fixtures.s3 import free_ports
from tests.trainer.helpers import make_config, progress_lines


def _tracking(tmp_path: Path, tracking: dict) -> tuple[Tracking, Path]:
    path = make_config(tmp_path / "config.json", job="j", model="file:///m", train="file:///d.jsonl",
                       output=f"file://{tmp_path}/out", progress_file=tmp_path / "progress.jsonl",
                       spec={"tracking": tracking})
    config = TrainerConfig.model_validate(json.loads(path.read_text()))
    tracker = Tracker()
    reporter = Reporter(ProgressReporting(mode="file", file=str(tmp_path / "progress.jsonl"), interval_seconds=1), tracker)
    return Tracking(config, tmp_path / "work", tracker, reporter, active=True), tmp_path / "progress.jsonl"


def _result(tmp_path: Path) -> Result:
    return Result(model_dir=tmp_path, merged_dir=None, target_modules=None, summary={"steps": 3},
                  log_history=[{"step": s, "loss": 3.0 - s} for s in (1, 2, 3)],
                  evaluation={"baseline": {"evalLoss": 3.0}, "final": {"evalLoss": 1.0}})


class _Refusing(BaseHTTPRequestHandler):
    def _refuse(self):
        body = b"You are not authenticated. Please see https://www.mlflow.org/docs/latest/auth/index.html"
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse  # noqa: N815

    def log_message(self, *args):
        pass


def test_refused_credentials_at_start_are_a_user_error_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tracking, _ = _tracking(tmp_path, {"mlflow": {"trackingUri": f"http://127.0.0.1:{server.server_address[1]}"}})
        with pytest.raises(UserError, match=r"^spec\.tracking\.mlflow: the server refused the credentials .*401"):
            tracking.start()
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_at_start_trains_on_without_it_and_status_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracking, progress = _tracking(tmp_path, {"mlflow": {"trackingUri": f"http://127.0.0.1:{free_ports(1)[0]}"},
                                              "tensorboard": {}})
    tracking.start()
    tracking.before_publish(_result(tmp_path))  # the TensorBoard part goes on
    tracking.close(None)
    link = progress_lines(progress)[-1]["tracking"]
    assert link["mlflow"]["message"].startswith("start failed (") and "training goes on without mlflow" in link["mlflow"]["message"]
    assert "runId" not in link["mlflow"] and "message" not in link["tensorboard"]
    assert list((tmp_path / "work/tracking/tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
@pytest.mark.skipif(mlflow_binary() is None, reason="no .venv-mlflow (make mlflow-venv)")
def test_server_gone_after_start_drops_the_tracker_once_and_nothing_raises(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with MlflowServer(tmp_path / "mlflow") as server:
        tracking, progress = _tracking(tmp_path, {"mlflow": {"trackingUri": server.uri}})
        tracking.start()
        run_id = progress_lines(progress)[-1]["tracking"]["mlflow"]["runId"]
    result = tracking.before_publish(_result(tmp_path))  # the server is gone: evaluation and loss curve fail
    tracking.after_publish({"adapter": {"uri": "file:///x", "manifestSha256": "0" * 64}})
    assert result.extra_dirs == {}
    link = progress_lines(progress)[-1]["tracking"]["mlflow"]
    assert link["runId"] == run_id and link["message"].startswith("evaluation failed (")
    assert len([r for r in caplog.records if r.levelname == "WARNING" and "tracking:" in r.getMessage()]) == 1
    # the run was ended here all the same: left active, MLflow's atexit handler would retry the gone server with
    # its default retries and hold the process's exit for minutes
    import mlflow

    assert mlflow.active_run() is None


def test_a_failing_integration_callback_is_dropped_not_raised():
    """transformers' CallbackHandler calls the Guarded wrapper like any callback; the inner one raises once."""
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import CallbackHandler

    calls, failures = [], []

    class Flaky(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            calls.append(logs)
            raise ConnectionError("tracking server went away")

    backend = Backend("mlflow", lambda name, message: failures.append((name, message)))
    handler = CallbackHandler([Guarded(Flaky(), backend)], None, None, None, None)
    args, state, control = TrainingArguments(output_dir="/tmp/unused", report_to="none"), TrainerState(), TrainerControl()
    for step in range(3):
        assert handler.on_log(args, state, control, logs={"loss": 1.0, "step": step}) is control
    assert len(calls) == 1 and failures == [("mlflow", backend.failed)]
    assert backend.failed.startswith("log event failed (ConnectionError: tracking server went away)")


def test_task_metrics_of_spec_evaluation_are_logged_with_the_loss_figures(tmp_path):
    """spec.evaluation's summary (kubetune.api.evaluation.EvalSummary, as the trainer's EvalOutcome carries it) goes
    to the trackers with the eval loss; here to TensorBoard, read back with its own reader."""
    from dataclasses import replace

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kubetune.api.evaluation import EvalSummary, MetricResult, MetricSet
    from kubetune_trainer.evaluate import EvalOutcome

    summary = EvalSummary(task=MetricSet(metrics=[MetricResult(name="exact_match", baseline=0.25, final=0.75)], prompts=8))
    tracking, _ = _tracking(tmp_path, {"tensorboard": {}})
    tracking.start()
    result = tracking.before_publish(replace(_result(tmp_path), task=EvalOutcome(summary=summary, samples=[],
                                                                                 regression_samples=[])))
    tracking.close(None)
    events = EventAccumulator(str(result.extra_dirs["tensorboard"])).Reload()
    figures = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    assert figures == {"evaluation/baseline/evalLoss": 3.0, "evaluation/final/evalLoss": 1.0, "evaluation/task/prompts": 8.0,
                       "evaluation/task/metrics/exact_match/baseline": 0.25, "evaluation/task/metrics/exact_match/final": 0.75}
