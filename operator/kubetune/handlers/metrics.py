"""Prometheus metrics of the operator, in the text exposition format, on $KUBETUNE_METRICS_PORT.

Served with aiohttp (already a kopf dependency) from the operator's own event loop.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import kopf
from aiohttp import web

COUNTERS: Counter[tuple[str, str]] = Counter()
HELP = {
    "kubetune_reconciles_total": "Spec reconciliations, by kind.",
    "kubetune_status_writes_total": "Status subresource writes, by kind (only changed statuses are written).",
    "kubetune_children_created_total": "Child objects created, by kind of child.",
    "kubetune_validation_failures_total": "Specs rejected by the operator's validation, by kind.",
}


def inc(metric: str, kind: str) -> None:
    COUNTERS[(metric, kind)] += 1


def render() -> str:
    lines = []
    for metric, text in HELP.items():
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} counter"]
        lines += [f'{metric}{{kind="{kind}"}} {value}' for (name, kind), value in sorted(COUNTERS.items()) if name == metric]
    return "\n".join(lines) + "\n"


async def _metrics(_: web.Request) -> web.Response:
    return web.Response(text=render(), content_type="text/plain", charset="utf-8")


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
