"""The operator's /metrics route (prometheus_client registry, aiohttp on the kopf loop): the counter
names the chart's ServiceMonitor and docs/install.md promise, the process metrics, format negotiation."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from kubetune.handlers import metrics

NAMES = ("kubetune_reconciles_total", "kubetune_status_writes_total", "kubetune_children_created_total",
         "kubetune_validation_failures_total")


def _samples(text: str, parse=text_string_to_metric_families) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("kind", "")): s.value for f in parse(text) for s in f.samples}


async def _get(accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    response = await metrics._metrics(make_mocked_request("GET", "/metrics", headers=headers))
    return response.headers["Content-Type"], response.body.decode()


async def test_counters_by_kind_and_process_metrics():
    before = _samples((await _get())[1])
    metrics.inc("kubetune_reconciles_total", "FineTuneJob")
    metrics.inc("kubetune_reconciles_total", "FineTuneJob")
    metrics.inc("kubetune_children_created_total", "Job")
    content_type, text = await _get()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    after = _samples(text)
    assert after[("kubetune_reconciles_total", "FineTuneJob")] == before.get(("kubetune_reconciles_total", "FineTuneJob"), 0) + 2
    assert after[("kubetune_children_created_total", "Job")] == before.get(("kubetune_children_created_total", "Job"), 0) + 1
    for name in NAMES:  # each counter is described even before its first increment
        assert f"# TYPE {name} counter" in text and f"# HELP {name} " in text
    assert not [name for name, _ in after if name.endswith("_created")]  # only the ..._total series
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
            "python_gc_collections_total"} <= {name for name, _ in after}


async def test_openmetrics_when_the_scraper_asks():
    metrics.inc("kubetune_status_writes_total", "ModelDeployment")
    content_type, text = await _get("application/openmetrics-text; version=1.0.0, text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0") and text.endswith("# EOF\n")
    assert _samples(text, openmetrics_families)[("kubetune_status_writes_total", "ModelDeployment")] >= 1
