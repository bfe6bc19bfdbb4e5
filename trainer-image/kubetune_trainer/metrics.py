"""Prometheus metrics on TRAINER_METRICS_PORT (9090): GET /metrics, text exposition format 0.0.4.

stdlib only (no prometheus_client dependency): a handful of gauges read from the Tracker.
KUBETUNE_METRICS_PORT overrides the port; "0" picks a free one, "off" disables the endpoint.
A port that cannot be bound is logged and never fails training.
"""

from __future__ import annotations

import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubetune.api.constants import TRAINER_METRICS_PORT

from .reporting import Tracker

log = logging.getLogger(__name__)

ENV_METRICS_PORT = "KUBETUNE_METRICS_PORT"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# name, help, Tracker attribute
GAUGES = (
    ("kubetune_trainer_step", "Optimizer steps done.", "step"),
    ("kubetune_trainer_total_steps", "Optimizer steps planned.", "total_steps"),
    ("kubetune_trainer_epoch", "Epochs done (fractional).", "epoch"),
    ("kubetune_trainer_loss", "Latest training loss.", "loss"),
    ("kubetune_trainer_eval_loss", "Latest evaluation loss.", "eval_loss"),
    ("kubetune_trainer_tokens_per_second", "Training throughput (non-padding tokens).", "tokens_per_second"),
    ("kubetune_trainer_trained_tokens", "Non-padding tokens trained on so far.", "trained_tokens"),
    ("kubetune_trainer_eta_seconds", "Estimated seconds until training ends.", "eta_seconds"),
)


def render(tracker: Tracker, labels: dict[str, str]) -> str:
    """The exposition text for the tracker's current numbers (unknown values are left out)."""
    label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    label_text = "{" + label_text + "}" if label_text else ""
    lines = []
    with tracker.lock:
        values = {attr: getattr(tracker, attr) for _, _, attr in GAUGES}
        checkpoints = len(tracker.checkpoints)
    for name, help_text, attr in GAUGES:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        if values[attr] is not None:
            lines.append(f"{name}{label_text} {float(values[attr]):g}")
    lines += ["# HELP kubetune_trainer_checkpoints Complete checkpoints kept in object storage.",
              "# TYPE kubetune_trainer_checkpoints gauge", f"kubetune_trainer_checkpoints{label_text} {checkpoints}"]
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    def __init__(self, tracker: Tracker, labels: dict[str, str]):
        self.tracker = tracker
        self.labels = labels
        self.server: ThreadingHTTPServer | None = None
        self.port: int | None = None

    def start(self) -> int | None:
        """Serve in a daemon thread; returns the bound port, or None when disabled or not bindable."""
        raw = os.environ.get(ENV_METRICS_PORT, str(TRAINER_METRICS_PORT)).strip().lower()
        if raw in ("off", "none", "disabled", ""):
            return None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = render(outer.tracker, outer.labels).encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes are not worth a log line
                pass

        try:
            self.server = ThreadingHTTPServer(("0.0.0.0", int(raw)), Handler)  # noqa: S104 - scraped from the pod IP
        except (OSError, ValueError) as exc:
            log.warning("metrics: cannot serve on port %s: %s", raw, exc)
            return None
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="kubetune-metrics", daemon=True).start()
        log.info("metrics: serving Prometheus metrics on :%d/metrics", self.port)
        return self.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
