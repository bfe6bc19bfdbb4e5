"""Prometheus metrics on TRAINER_METRICS_PORT (9090): GET /metrics, served by prometheus_client.

The kubetune_trainer_* gauges are read from the Tracker at scrape time (a custom collector; unknown
values are left out), next to the standard process_* and python_* collectors, in a registry of the
server's own. KUBETUNE_METRICS_PORT overrides the port; "0" picks a free one, "off" disables the
endpoint. A port that cannot be bound is logged and never fails training.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kubetune.api.constants import TRAINER_METRICS_PORT

from .reporting import Tracker

log = logging.getLogger(__name__)

ENV_METRICS_PORT = "KUBETUNE_METRICS_PORT"

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
CHECKPOINTS = ("kubetune_trainer_checkpoints", "Complete checkpoints kept in object storage.")


class TrackerCollector(Collector):
    """The Tracker's current numbers as gauges, labelled with the job."""

    def __init__(self, tracker: Tracker, labels: dict[str, str]):
        self.tracker = tracker
        self.labels = dict(sorted(labels.items()))

    def collect(self) -> Iterator[Metric]:
        with self.tracker.lock:
            values = {attr: getattr(self.tracker, attr) for _, _, attr in GAUGES}
            values["checkpoints"] = len(self.tracker.checkpoints)
        for name, help_text, attr in (*GAUGES, (*CHECKPOINTS, "checkpoints")):
            gauge = GaugeMetricFamily(name, help_text, labels=list(self.labels))
            if values[attr] is not None:
                gauge.add_metric(list(self.labels.values()), float(values[attr]))
            yield gauge


def registry(tracker: Tracker, labels: dict[str, str]) -> CollectorRegistry:
    """The trainer's gauges plus the standard process, platform and GC collectors."""
    reg = CollectorRegistry(auto_describe=True)
    reg.register(TrackerCollector(tracker, labels))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    return reg


class MetricsServer:
    def __init__(self, tracker: Tracker, labels: dict[str, str]):
        self.registry = registry(tracker, labels)
        self.server: WSGIServer | None = None
        self.thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self) -> int | None:
        """Serve in a daemon thread; returns the bound port, or None when disabled or not bindable."""
        raw = os.environ.get(ENV_METRICS_PORT, str(TRAINER_METRICS_PORT)).strip().lower()
        if raw in ("off", "none", "disabled", ""):
            return None
        try:
            self.server, self.thread = start_http_server(int(raw), "0.0.0.0", self.registry)  # noqa: S104 - scraped from the pod IP
        except (OSError, ValueError) as exc:
            log.warning("metrics: cannot serve on port %s: %s", raw, exc)
            return None
        self.port = self.server.server_address[1]
        log.info("metrics: serving Prometheus metrics on :%d/metrics", self.port)
        return self.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.thread is not None:
            self.thread.join(timeout=5)
            self.thread = None
