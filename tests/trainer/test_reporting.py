"""Progress contract: merge-patch to a (local) API server, file mode, heartbeat and phases, Prometheus metrics."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubetune.api import exit_codes
from kubetune.api.finetunejob import FineTuneJobStatus, TrainerPhase
from kubetune.api.trainer_config import ProgressReporting
from kubetune_trainer import run as run_module
from kubetune_trainer.main import execute
from kubetune_trainer.metrics import MetricsServer, registry
from kubetune_trainer.reporting import KubeSender, Reporter, ReportingHandover, Tracker, take_over_reporting
from tests.fixtures.tiny_data import chat_records, write_jsonl
from tests.trainer.helpers import FakeApi, make_config, progress_lines

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
    assert set(progress) == {"phase", "step", "totalSteps", "epoch", "percent", "etaSeconds", "loss", "evalLoss",
                             "tokensPerSecond", "trainedTokens", "updateTime"}
    assert {k: progress[k] for k in ("phase", "step", "totalSteps", "epoch", "percent", "loss", "evalLoss",
                                     "trainedTokens")} == {
        "phase": "Training", "step": 40, "totalSteps": 100, "epoch": 1.25, "percent": 40, "loss": 0.8123,
        "evalLoss": 0.9012, "trainedTokens": 204800}
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
    reporter.close()  # flushes (and stops the heartbeat)
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
    reporter.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["status"]["progress"]["step"] == 40


# ---- heartbeat and phases: status is never stale and never vague ------------------------------------

INTERVAL, SLACK = 1, 0.6  # seconds: reports may be at most INTERVAL + SLACK apart (a loaded 2-core CI machine)


def _heartbeats() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "kubetune-heartbeat"]


def test_a_slow_model_download_is_reported_every_interval_with_its_phase(api, tmp_path, monkeypatch):
    """The whole trainer (execute), with progress to a real HTTP server: while the base model takes 4 s to
    download, PATCHes keep arriving at most one interval (+ slack) apart and say DownloadingModel."""
    server, _ = api
    real_fetch_model = run_module.fetch_model
    phase: dict[str, float] = {}

    def slow_fetch_model(*args, **kwargs):  # a slow object store: 4 s, then the real (failing) fetch
        phase["start"] = time.monotonic()
        time.sleep(4)
        phase["end"] = time.monotonic()
        return real_fetch_model(*args, **kwargs)

    monkeypatch.setattr(run_module, "fetch_model", slow_fetch_model)
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(20))
    config = make_config(tmp_path / "config.json", job="job1", model=f"file://{tmp_path}/no-such-model",
                         train=f"file://{train}", output=f"file://{tmp_path}/out",
                         progress={"mode": "kubernetes", "statusPath": STATUS_PATH, "intervalSeconds": INTERVAL})
    assert execute(config, work_dir=tmp_path / "work") == exit_codes.USER_ERROR  # the model does not exist
    ended = time.monotonic()

    phases = [r["body"]["status"]["progress"]["phase"] for r in server.requests]
    # in order; a phase shorter than one PATCH may be skipped (the sender sends only the newest pending body)
    seen = list(dict.fromkeys(phases))
    assert seen[-1] == "DownloadingModel" and set(seen) <= {"Starting", "ValidatingData", "DownloadingModel"}, phases
    assert seen == sorted(seen, key=list(TrainerPhase).index), phases
    downloading = [r["time"] for r in server.requests if r["body"]["status"]["progress"]["phase"] == "DownloadingModel"]
    # at every moment of the 4 s, the newest report is at most INTERVAL + SLACK old
    edges = [phase["start"], *downloading, phase["end"]]
    gaps = [round(b - a, 2) for a, b in zip(edges, edges[1:], strict=False)]
    assert len(downloading) >= 4 and max(gaps) <= INTERVAL + SLACK, gaps
    stamps = [r["body"]["status"]["progress"]["updateTime"] for r in server.requests]
    assert stamps == sorted(stamps) and len(set(stamps)) >= 4  # updateTime moves on with every beat
    # the heartbeat stopped with the trainer: nothing arrives after it returned
    assert not _heartbeats()
    count = len(server.requests)
    time.sleep(INTERVAL + SLACK)
    assert len(server.requests) == count and all(r["time"] <= ended for r in server.requests)


def test_heartbeat_fills_only_the_silences(tmp_path: Path):
    """Callbacks reporting often: the heartbeat adds nothing. Silence: one beat per interval. close() stops it."""
    path = tmp_path / "progress.jsonl"
    tracker = Tracker()
    reporter = Reporter(ProgressReporting(mode="file", file=str(path), interval_seconds=INTERVAL), tracker)
    reporter.enter(TrainerPhase.TRAINING)
    busy_until = time.monotonic() + 2.5
    while time.monotonic() < busy_until:  # a training loop reporting (throttled) every 0.1 s
        reporter.report()
        time.sleep(0.1)
    during_training = len(progress_lines(path))
    reporter.enter(TrainerPhase.FINAL_EVALUATION)  # then a silent 2.5 s evaluation
    time.sleep(2.5)
    reporter.close()
    lines = progress_lines(path)
    assert 3 <= during_training <= 4, during_training  # the first + one per interval, never doubled
    evaluating = [x for x in lines if x["progress"]["phase"] == "FinalEvaluation"]
    assert 3 <= len(evaluating) <= 4, len(evaluating)  # the forced one + a beat per interval
    assert not _heartbeats()
    time.sleep(INTERVAL + SLACK)
    assert len(progress_lines(path)) == len(lines)  # closed means silent


def test_no_destination_no_heartbeat():
    """mode none (every rank but 0, pods but pod 0): nothing to send, so no thread."""
    reporter = Reporter(ProgressReporting(mode="none"), Tracker())
    assert reporter._heartbeat is None and not _heartbeats()
    reporter.enter(TrainerPhase.LOADING_MODEL)
    reporter.close()


def test_launcher_hands_reporting_over_to_rank_zero(tmp_path: Path):
    """Pod 0's launcher beats until rank 0 asks; then it stops and answers, and rank 0 reports alone."""
    path = tmp_path / "progress.jsonl"
    launcher = Reporter(ProgressReporting(mode="file", file=str(path), interval_seconds=INTERVAL), Tracker())
    launcher.enter(TrainerPhase.LOADING_MODEL)
    handover = ReportingHandover(tmp_path / "work", launcher.close)
    time.sleep(INTERVAL + SLACK)
    assert len(progress_lines(path)) >= 2  # still beating while the ranks start
    started = time.monotonic()
    assert take_over_reporting(tmp_path / "work", timeout=5) is True
    assert time.monotonic() - started < 1 and not _heartbeats()
    handed_over = len(progress_lines(path))
    time.sleep(INTERVAL + SLACK)
    assert len(progress_lines(path)) == handed_over
    handover.stop()
    assert take_over_reporting(tmp_path / "nobody", timeout=0.2) is False  # no launcher: rank 0 goes on


def _scrape(port: int) -> tuple[str, dict[str, tuple[str, dict[tuple[str, tuple], float]]]]:
    """(Content-Type, {family: (type, {(sample name, sorted labels): value})}) parsed by prometheus_client."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        content_type, text = response.headers["Content-Type"], response.read().decode()
    return content_type, {f.name: (f.type, {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples})
                          for f in text_string_to_metric_families(text)}


def test_metrics_serve_the_tracker_and_the_process():
    tracker = _tracker()
    server = MetricsServer(tracker, {"namespace": "team-a", "finetunejob": "job1"})
    port = server.start()  # KUBETUNE_METRICS_PORT=0 (trainer_env): a free port
    try:
        content_type, families = _scrape(port)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        job = (("finetunejob", "job1"), ("namespace", "team-a"))
        ours = {name: family for name, family in families.items() if name.startswith("kubetune_")}
        assert ours == {
            "kubetune_trainer_step": ("gauge", {("kubetune_trainer_step", job): 40}),
            "kubetune_trainer_total_steps": ("gauge", {("kubetune_trainer_total_steps", job): 100}),
            "kubetune_trainer_epoch": ("gauge", {("kubetune_trainer_epoch", job): 1.25}),
            "kubetune_trainer_loss": ("gauge", {("kubetune_trainer_loss", job): 0.8123}),
            "kubetune_trainer_eval_loss": ("gauge", {("kubetune_trainer_eval_loss", job): 0.9012}),
            "kubetune_trainer_trained_tokens": ("gauge", {("kubetune_trainer_trained_tokens", job): 204800}),
            "kubetune_trainer_checkpoints": ("gauge", {("kubetune_trainer_checkpoints", job): 1}),
            "kubetune_trainer_tokens_per_second": ("gauge", {("kubetune_trainer_tokens_per_second", job): pytest.approx(
                tracker.tokens_per_second)}),
            "kubetune_trainer_eta_seconds": ("gauge", {("kubetune_trainer_eta_seconds", job): tracker.eta_seconds}),
        }
        # the standard collectors: this process's CPU, memory and file descriptors, Python's GC
        assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds",
                "python_info", "python_gc_collections"} <= set(families)
        assert families["process_resident_memory_bytes"][1][("process_resident_memory_bytes", ())] > 0
        tracker.update(step=41, epoch=1.3, tokens=210000)  # read at scrape time
        assert _scrape(port)[1]["kubetune_trainer_step"][1] == {("kubetune_trainer_step", job): 41}
    finally:
        server.stop()
    # values not known yet are left out (no made-up 0); the family is still described
    fresh = {f.name: f for f in text_string_to_metric_families(generate_latest(registry(Tracker(), {})).decode())}
    assert (fresh["kubetune_trainer_loss"].type, fresh["kubetune_trainer_loss"].samples) == ("gauge", [])
    assert [s.value for s in fresh["kubetune_trainer_step"].samples] == [0]


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
