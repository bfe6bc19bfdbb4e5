"""Prometheus metrics of the operator (prometheus_client), on $KUBETUNE_METRICS_PORT at /metrics.

Counters by `kind`, plus the standard process_* and python_* collectors, in one registry of our own.
Served by an aiohttp route (aiohttp is already a kopf dependency) on the operator's own event loop:
no extra thread. The route negotiates the format from the Accept header like prometheus_client's own
servers (text 0.0.4 by default, OpenMetrics when the scraper asks for it).
"""

from __future__ import annotations

from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, GCCollector, PlatformCollector, ProcessCollector, disable_created_metrics
from prometheus_client.exposition import choose_encoder

# The counters expose kubetune_..._total and nothing else (no ..._created series): the names the
# dashboards and docs/install.md name.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

COUNTERS = {
    name: Counter(name, text, ["kind"], registry=REGISTRY)
    for name, text in (
        ("kubetune_reconciles_total", "Spec reconciliations, by kind."),
        ("kubetune_status_writes_total", "Status subresource writes, by kind (only changed statuses are written)."),
        ("kubetune_children_created_total", "Child objects created, by kind of child."),
        ("kubetune_validation_failures_total", "Specs rejected by the operator's validation, by kind."),
    )
}


def inc(metric: str, kind: str) -> None:
    COUNTERS[metric].labels(kind=kind).inc()


async def _metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(REGISTRY), headers={"Content-Type": content_type})


_runner: web.AppRunner | None = None


@kopf.on.startup()
async def start_metrics(**_: Any) -> None:
    from .runtime import runtime  # runtime imports this module for inc()

    global _runner
    port = runtime().settings.metrics_port
    if not port:
        return
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    _runner = web.AppRunner(app, access_log=None)
    await _runner.setup()
    await web.TCPSite(_runner, "0.0.0.0", port).start()


@kopf.on.cleanup()
async def stop_metrics(**_: Any) -> None:
    if _runner is not None:
        await _runner.cleanup()
