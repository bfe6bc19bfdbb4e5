"""Live progress: one Tracker (the numbers), one Reporter (where they go), per docs/progress-contract.md.

The Reporter sends at least every progress.intervalSeconds while the trainer runs: a heartbeat thread
reports whenever nothing else did for one interval, so a long download, evaluation or upload shows as
its phase with a fresh updateTime instead of going stale. Only the reporting process (rank 0 of a
distributed run; the launcher of pod 0 before the ranks start) has a destination, so only it beats.

mode kubernetes: HTTP PATCH (application/merge-patch+json) of the FineTuneJob's status subresource
with the pod's ServiceAccount token, from a background thread (the training loop never waits on the
API server); a failed report is logged and dropped. mode file: one JSON line per report.
The body is a kubetune.api.progress.ProgressReport: only `progress`, `checkpoints` and `evaluation`.

Test/ops overrides: KUBETUNE_API_URL (base URL, e.g. http://127.0.0.1:8080), KUBETUNE_API_TOKEN_FILE,
KUBETUNE_API_CA_FILE. Default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.
"""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubetune.api.constants import ENV_API_URL
from kubetune.api.evaluation import EvalProgress
from kubetune.api.finetunejob import MAX_CHECKPOINTS_LISTED, CheckpointInfo, EvalFigures, Evaluation, Progress, TrainerPhase
from kubetune.api.progress import ProgressReport, TrainerStatus
from kubetune.api.tracking import TrackingStatus
from kubetune.api.trainer_config import ProgressReporting

log = logging.getLogger(__name__)

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
ENV_API_TOKEN_FILE = "KUBETUNE_API_TOKEN_FILE"
ENV_API_CA_FILE = "KUBETUNE_API_CA_FILE"
PATCH_TIMEOUT_SECONDS = 5


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass
class Tracker:
    """The latest numbers of this run, fed by the training callback; read by reporters and /metrics."""

    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    trained_tokens: int | None = None
    tokens_per_second: float | None = None
    eta_seconds: int | None = None
    phase: TrainerPhase = TrainerPhase.STARTING
    checkpoints: list[tuple[int, str]] = field(default_factory=list)
    baseline: dict[str, float | None] | None = None
    final: dict[str, float | None] | None = None
    evaluating: EvalProgress | None = None  # phase EvaluatingTask: prompts answered so far (kubetune_trainer.evaluate)
    tracking: TrackingStatus | None = None  # links to the tracked run (kubetune_trainer.tracking)
    _session: tuple[float, int, int] | None = None  # (time, step, tokens) when this process began training
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, step: int, total_steps: int, tokens: int) -> None:
        with self.lock:
            self.step, self.total_steps, self.trained_tokens = step, total_steps, tokens
            self._session = (time.monotonic(), step, tokens)
            self.phase = TrainerPhase.TRAINING

    def enter(self, phase: TrainerPhase) -> None:
        """The run moved on to `phase` (reported by the caller or, within one interval, by the heartbeat)."""
        with self.lock:
            self.phase = phase
            self.evaluating = None

    def update(self, step: int, epoch: float | None, tokens: int | None) -> None:
        with self.lock:
            self.step, self.epoch = step, _finite(epoch)
            if tokens is not None:
                self.trained_tokens = int(tokens)
            if self._session is None:
                return
            started, first_step, first_tokens = self._session
            elapsed = time.monotonic() - started
            done = step - first_step
            if elapsed > 0 and done > 0:
                if self.trained_tokens is not None:
                    self.tokens_per_second = round((self.trained_tokens - first_tokens) / elapsed, 1)
                if self.total_steps:
                    self.eta_seconds = max(0, int(elapsed / done * (self.total_steps - step)))

    def progress(self) -> Progress:
        with self.lock:
            percent = int(100 * self.step / self.total_steps) if self.total_steps else 0
            return Progress(phase=self.phase, step=self.step, total_steps=self.total_steps, epoch=self.epoch,
                            percent=min(100, percent), eta_seconds=self.eta_seconds, loss=self.loss, eval_loss=self.eval_loss,
                            tokens_per_second=self.tokens_per_second, trained_tokens=self.trained_tokens,
                            evaluation=self.evaluating,
                            update_time=datetime.now(timezone.utc).replace(microsecond=0))

    def status_body(self) -> dict[str, Any]:
        """The merge-patch body (kubetune.api.progress.ProgressReport): {"status": {"progress", "checkpoints"?,
        "evaluation"?}} in camelCase."""
        progress = self.progress()
        with self.lock:
            checkpoints = [CheckpointInfo(step=s, uri=u) for s, u in self.checkpoints[-MAX_CHECKPOINTS_LISTED:]]
            evaluation = {k: EvalFigures(eval_loss=v.get("evalLoss"), perplexity=v.get("perplexity"))
                          for k, v in (("baseline", self.baseline), ("final", self.final)) if v}
            tracking = self.tracking
        return ProgressReport(status=TrainerStatus(progress=progress, checkpoints=checkpoints or None,
                                                   evaluation=Evaluation(**evaluation) if evaluation else None,
                                                   tracking=tracking)).body()


class KubeSender:
    """PATCHes the status subresource from a daemon thread; only the newest pending body is sent."""

    def __init__(self, status_path: str):
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        base = os.environ.get(ENV_API_URL) or (f"https://{f'[{host}]' if host and ':' in host else host}:{port}" if host else None)
        self.url = base.rstrip("/") + status_path if base else None
        self.token_file = Path(os.environ.get(ENV_API_TOKEN_FILE) or f"{SA_DIR}/token")
        self.ca_file = Path(os.environ.get(ENV_API_CA_FILE) or f"{SA_DIR}/ca.crt")
        self.failures = 0
        self._pending: dict | None = None
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="kubetune-progress", daemon=True)
        if self.url:
            self._thread.start()
        else:
            log.warning("progress: no Kubernetes API (KUBERNETES_SERVICE_HOST unset): progress is only logged")

    def submit(self, body: dict) -> None:
        if not self.url:
            return
        with self._cond:
            self._pending = body
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                body, self._pending, self._busy = self._pending, None, True
            try:
                self.send(body)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def send(self, body: dict) -> bool:
        headers = {"Content-Type": "application/merge-patch+json", "Accept": "application/json"}
        try:
            if self.token_file.is_file():  # re-read every time: projected tokens rotate
                headers["Authorization"] = "Bearer " + self.token_file.read_text().strip()
            context = None
            if self.url.startswith("https://"):
                context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file.is_file() else None)
            request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="PATCH", headers=headers)
            with urllib.request.urlopen(request, timeout=PATCH_TIMEOUT_SECONDS, context=context) as response:  # noqa: S310
                response.read()
            return True
        except Exception as exc:  # noqa: BLE001 - a failed report never fails training
            self.failures += 1
            if self.failures == 1 or self.failures % 20 == 0:
                log.warning("progress: PATCH %s failed (%d so far): %s", self.url, self.failures,
                            getattr(exc, "code", None) or getattr(exc, "reason", None) or type(exc).__name__)
            return False

    def close(self, timeout: float = PATCH_TIMEOUT_SECONDS + 1) -> None:
        """Send what is pending (bounded by timeout), then stop the thread."""
        if not self.url:
            return
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._pending is not None or self._busy) and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            self._closed = True
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))


class Reporter:
    """Throttles reports to progress.intervalSeconds (forced ones always go) and logs a line each.

    With a destination (mode kubernetes or file) a heartbeat thread also reports whenever nothing did
    for one interval, so reports are never more than about one interval apart until close()."""

    def __init__(self, settings: ProgressReporting, tracker: Tracker):
        self.settings = settings
        self.tracker = tracker
        self.interval = settings.interval_seconds
        self._last = -math.inf
        self._lock = threading.Lock()  # report() runs on the training thread and on the heartbeat
        self._logged: tuple | None = None
        self.sender = None
        if settings.mode == "kubernetes":
            if settings.status_path:
                self.sender = KubeSender(settings.status_path)
            else:
                log.warning("progress: mode kubernetes without progress.statusPath: progress is only logged")
        self.file = Path(settings.file) if settings.mode == "file" and settings.file else None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        if (self.sender is not None and self.sender.url) or self.file is not None:
            self._heartbeat = threading.Thread(target=self._beat, name="kubetune-heartbeat", daemon=True)
            self._heartbeat.start()

    def _beat(self) -> None:
        """Report when one interval passed since the last report (of anyone); never blocks on the network."""
        while True:
            with self._lock:
                due = self._last + self.interval
            if self._stop.wait(min(self.interval, max(0.05, due - time.monotonic()))):
                return
            try:
                self.report()  # throttled: a no-op when a callback reported meanwhile
            except Exception:  # noqa: BLE001 - the heartbeat never dies and never fails training
                log.exception("progress: heartbeat report failed")

    def report(self, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < self.interval:
                return
            self._last = now
            body = self.tracker.status_body()
            p = body["status"]["progress"]
            shown = tuple(p.get(k) for k in ("phase", "step", "totalSteps", "loss", "evalLoss"))
            if shown != self._logged:  # a heartbeat that says nothing new is not logged again
                self._logged = shown
                log.info("progress: %s step %s/%s (%s%%) loss %s eval_loss %s tokens/s %s eta %ss", p.get("phase"),
                         p.get("step"), p.get("totalSteps", "?"), p.get("percent"), _fmt(p.get("loss")),
                         _fmt(p.get("evalLoss")), p.get("tokensPerSecond", "-"), p.get("etaSeconds", "-"))
            if self.sender is not None:
                self.sender.submit(body)
            elif self.file is not None:
                try:
                    self.file.parent.mkdir(parents=True, exist_ok=True)
                    with self.file.open("a") as handle:
                        handle.write(json.dumps(body, sort_keys=True) + "\n")
                except OSError as exc:
                    log.warning("progress: cannot append to %s: %s", self.file, exc)

    def enter(self, phase: TrainerPhase) -> None:
        """Move the run to `phase` and report it now (a phase change is news)."""
        self.tracker.enter(phase)
        self.report(force=True)

    def close(self) -> None:
        """Stop the heartbeat, then send what is pending (bounded)."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=PATCH_TIMEOUT_SECONDS)
        if self.sender is not None:
            self.sender.close()


# ---- distributed runs: pod 0's launcher reports until global rank 0 takes over ---------------------

HANDOVER_TIMEOUT = 10  # seconds rank 0 waits for the launcher to stop reporting (its last PATCH: 5 s at most)


def _handover_paths(work_dir: Path) -> tuple[Path, Path]:
    folder = work_dir / "ranks"
    return folder / "reporting.take", folder / "reporting.released"


def take_over_reporting(work_dir: Path, timeout: float = HANDOVER_TIMEOUT) -> bool:
    """Global rank 0, before its first report: ask pod 0's launcher to stop reporting and wait until it has
    (its last report is sent), so that an old report never lands after a new one. False on timeout."""
    take, released = _handover_paths(work_dir)
    take.parent.mkdir(parents=True, exist_ok=True)
    take.touch()
    deadline = time.monotonic() + timeout
    while not released.exists():
        if time.monotonic() > deadline:
            log.warning("progress: the launcher did not hand over reporting within %ss; reporting anyway", timeout)
            return False
        time.sleep(0.05)
    return True


class ReportingHandover:
    """Pod 0's launcher: keeps its reporter (and its heartbeat) until rank 0 asks, then stops it and answers."""

    def __init__(self, work_dir: Path, release: Callable[[], None], poll: float = 0.1):
        self.take, self.released = _handover_paths(work_dir)
        self.take.parent.mkdir(parents=True, exist_ok=True)
        for stale in (self.take, self.released):  # from an earlier attempt in this work dir
            stale.unlink(missing_ok=True)
        self._release, self._poll = release, poll
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._wait, name="kubetune-handover", daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        while not self._done.wait(self._poll):
            if self.take.exists():
                try:
                    self._release()
                finally:
                    self.released.touch()
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=HANDOVER_TIMEOUT)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "-"
