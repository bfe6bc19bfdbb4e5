"""Progress contract: merge-patch to a (local) API server, file mode, Prometheus metrics."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from kubetune.api.finetunejob import FineTuneJobStatus
from kubetune.api.trainer_config import ProgressReporting
from kubetune_trainer.metrics import MetricsServer, render
from kubetune_trainer.reporting import KubeSender, Reporter, Tracker
from tests.trainer.helpers import FakeApi

STATUS_PATH = "/apis/kubetune.io/v1alpha1/namespaces/team-a/finetunejobs/job1/status"


def _tracker() -> Tracker:
    tracker = Tracker()
    tracker.begin(step=0, total_steps=100, tokens=0)
    tracker.update(step=40, epoch=1.25, tokens=204800)
    tracker.loss, tracker.eval_loss = 0.8123, 0.9012
    tracker.checkpoints = [(40, "s3://out/team-a/job1/checkpoints/00000040")]
    tracker.baseline = {"evalLoss": 3.2, "perplexity": 24.5}
    return tracker


def test_status_body_is_the_contract():
    body = _tracker().status_body()
    assert set(body) == {"status"} and set(body["status"]) == {"progress", "checkpoints", "evaluation"}
    progress = body["status"]["progress"]
    assert set(progress) == {"step", "totalSteps", "epoch", "percent", "etaSeconds", "loss", "evalLoss",
                             "tokensPerSecond", "trainedTokens", "updateTime"}
    assert {k: progress[k] for k in ("step", "totalSteps", "epoch", "percent", "loss", "evalLoss", "trainedTokens")} == {
        "step": 40, "totalSteps": 100, "epoch": 1.25, "percent": 40, "loss": 0.8123, "evalLoss": 0.9012,
        "trainedTokens": 204800}
    assert progress["tokensPerSecond"] > 0 and progress["etaSeconds"] >= 0
    assert progress["updateTime"].endswith("Z") or progress["updateTime"].endswith("+00:00")
    assert body["status"]["checkpoints"] == [{"step": 40, "uri": "s3://out/team-a/job1/checkpoints/00000040"}]
    assert body["status"]["evaluation"] == {"baseline": {"evalLoss": 3.2, "perplexity": 24.5}}
    FineTuneJobStatus.model_validate(body["status"])  # the operator's schema accepts it


@pytest.fixture
def api(monkeypatch, tmp_path: Path):
    server = FakeApi()
    token = tmp_path / "token"
    token.write_text("pod-token-1\n")
    monkeypatch.setenv("KUBETUNE_API_URL", server.url)
    monkeypatch.setenv("KUBETUNE_API_TOKEN_FILE", str(token))
    yield server, token
    server.close()


def test_kubernetes_mode_patches_status(api):
    server, token = api
    reporter = Reporter(ProgressReporting(mode="kubernetes", status_path=STATUS_PATH, interval_seconds=300), _tracker())
    reporter.report()  # the first report always goes
    reporter.report()  # throttled: within the interval
    reporter.sender.close()  # flushes
    assert len(server.requests) == 1
    request = server.requests[0]
    assert request["path"] == STATUS_PATH
    assert request["headers"]["Content-Type"] == "application/merge-patch+json"
    assert request["headers"]["Authorization"] == "Bearer pod-token-1"
    assert request["body"]["status"]["progress"]["step"] == 40
    assert set(request["body"]["status"]) == {"progress", "checkpoints", "evaluation"}

    token.write_text("rotated-token")  # projected tokens rotate: re-read on every request
    reporter = Reporter(ProgressReporting(mode="kubernetes", status_path=STATUS_PATH, interval_seconds=300), _tracker())
    reporter.report(force=True)
    reporter.close()
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer rotated-token"


def test_failed_reports_never_raise(monkeypatch, caplog):
    monkeypatch.setenv("KUBETUNE_API_URL", "http://127.0.0.1:9")  # refused
    sender = KubeSender(STATUS_PATH)
    started = time.monotonic()
    assert sender.send({"status": {}}) is False
    assert time.monotonic() - started < 6
    assert sender.failures == 1
    assert "progress: PATCH http://127.0.0.1:9" + STATUS_PATH + " failed" in caplog.text
    sender.close()


def test_api_error_status_is_logged(api, caplog):
    server, _ = api
    server.status = 403
    sender = KubeSender(STATUS_PATH)
    assert sender.send({"status": {}}) is False
    assert "failed (1 so far): 403" in caplog.text
    sender.close()


def test_in_cluster_url_from_service_env(monkeypatch):
    monkeypatch.delenv("KUBETUNE_API_URL", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    sender = KubeSender(STATUS_PATH)
    assert sender.url == "https://[fd00::1]:6443" + STATUS_PATH
    assert str(sender.token_file) == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    sender.close(timeout=0)


def test_file_mode_appends_lines(tmp_path: Path):
    path = tmp_path / "p" / "progress.jsonl"
    reporter = Reporter(ProgressReporting(mode="file", file=str(path), interval_seconds=1), _tracker())
    reporter.report()
    reporter.report(force=True)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["status"]["progress"]["step"] == 40


def test_metrics_render_and_serve():
    tracker = _tracker()
    text = render(tracker, {"namespace": "team-a", "finetunejob": "job1"})
    assert 'kubetune_trainer_step{finetunejob="job1",namespace="team-a"} 40\n' in text
    assert 'kubetune_trainer_loss{finetunejob="job1",namespace="team-a"} 0.8123\n' in text
    assert 'kubetune_trainer_trained_tokens{finetunejob="job1",namespace="team-a"} 204800\n' in text
    assert 'kubetune_trainer_checkpoints{finetunejob="job1",namespace="team-a"} 1\n' in text
    assert "# TYPE kubetune_trainer_eval_loss gauge" in text
    server = MetricsServer(tracker, {"finetunejob": "job1"})
    port = server.start()  # KUBETUNE_METRICS_PORT=0 (trainer_env): a free port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert 'kubetune_trainer_total_steps{finetunejob="job1"} 100' in response.read().decode()
    finally:
        server.stop()


def test_metrics_port_off_and_busy(monkeypatch):
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", "off")
    assert MetricsServer(Tracker(), {}).start() is None
    first = MetricsServer(Tracker(), {})
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", "0")
    port = first.start()
    try:
        monkeypatch.setenv("KUBETUNE_METRICS_PORT", str(port))
        assert MetricsServer(Tracker(), {}).start() is None  # busy: logged, training goes on
    finally:
        first.stop()
