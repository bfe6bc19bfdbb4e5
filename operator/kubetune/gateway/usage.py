"""Usage: the gateway's /metrics (Prometheus) and `kubetune usage` (a table per tenant and model).

Where each figure comes from, and why:
- GPU-seconds and trained tokens: the FineTuneJobs' status (status.gpuSeconds, status.progress.trainedTokens).
  Status is durable (it survives gateway and operator restarts), covers every job (created by the API or by
  kubectl), and is what the operator computed from the pods; --since keeps the jobs that finished at or after
  that time, or are still running (a job's figures are totals, not a time series).
- Inference tokens: only the gateway sees them (counted from the responses' `usage`), as Prometheus counters.
  With --prometheus, `kubetune usage` asks Prometheus for their increase over --since (every replica, restarts
  included); with --gateway (each replica's /metrics URL) it reads the counters themselves, which hold what
  each replica counted since it started, so --since does not apply to them and the table says so.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

from .metrics import REGISTRY
from .routing import job_model

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition (text, or OpenMetrics when the scraper asks). Not under /v1: the chart's Ingress
    example routes only /v1 to the gateway, so tenants' usage is not public."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(REGISTRY), headers={"Content-Type": content_type})


# ------------------------------------------------------------------------------------------ kubetune usage

TokenKey = tuple[str, str, str]  # (namespace, model, type)


@dataclass
class Row:
    namespace: str
    model: str
    jobs: int = 0
    gpu_seconds: int = 0
    trained_tokens: int = 0
    tokens: dict[str, float] = field(default_factory=dict)  # prompt / completion


def parse_since(value: str, now: datetime) -> datetime:
    """`30m`, `24h`, `7d` (before now) or an RFC 3339 time."""
    match = re.fullmatch(r"(\d+)([smhd])", value.strip())
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return now - timedelta(**{unit: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {value!r}: use a duration (30m, 24h, 7d) or an RFC 3339 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def job_label(ftj: dict[str, Any]) -> str:
    """The model a job's usage is shown under: its public ft: name when the gateway created it, else
    finetunejob/<name>."""
    public = job_model(ftj)
    return str(public) if public is not None else f"finetunejob/{ftj['metadata']['name']}"


def _in_window(ftj: dict[str, Any], since: datetime | None) -> bool:
    done = (ftj.get("status") or {}).get("completionTime")
    return since is None or not done or datetime.fromisoformat(done.replace("Z", "+00:00")) >= since


def usage_rows(ftjs: list[dict[str, Any]], tokens: dict[TokenKey, float], since: datetime | None) -> list[Row]:
    """One row per (namespace, model): the jobs' GPU-seconds and trained tokens, the inference tokens."""
    rows: dict[tuple[str, str], Row] = {}
    for ftj in ftjs:
        if not _in_window(ftj, since):
            continue
        key = (ftj["metadata"]["namespace"], job_label(ftj))
        row = rows.setdefault(key, Row(*key))
        status = ftj.get("status") or {}
        row.jobs += 1
        row.gpu_seconds += int(status.get("gpuSeconds") or 0)
        row.trained_tokens += int((status.get("progress") or {}).get("trainedTokens") or 0)
    for (namespace, model, kind), value in tokens.items():
        row = rows.setdefault((namespace, model), Row(namespace, model))
        row.tokens[kind] = row.tokens.get(kind, 0) + value
    return [rows[key] for key in sorted(rows)]


def format_table(rows: list[Row], note: str = "") -> str:
    head = ("NAMESPACE", "MODEL", "JOBS", "GPU-HOURS", "TRAINED TOKENS", "PROMPT TOKENS", "COMPLETION TOKENS")
    body = [(r.namespace, r.model, str(r.jobs), f"{r.gpu_seconds / 3600:.2f}", str(r.trained_tokens),
             str(round(r.tokens.get("prompt", 0))), str(round(r.tokens.get("completion", 0)))) for r in rows]
    widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(line)).rstrip()
             for line in (head, *body)]
    return "\n".join(lines + ([note] if note else [])) + "\n"


def tokens_from_exposition(text: str, namespace: str | None) -> dict[TokenKey, float]:
    """kubetune_gateway_tokens_total samples of one /metrics page."""
    out: dict[TokenKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "kubetune_gateway_tokens_total":
                continue
            labels = sample.labels
            if namespace and labels.get("namespace") != namespace:
                continue
            key = (labels.get("namespace", ""), labels.get("model", ""), labels.get("type", ""))
            out[key] = out.get(key, 0) + sample.value
    return out


def prometheus_query(namespace: str | None, since: datetime | None, now: datetime) -> str:
    selector = f'{{namespace="{namespace}"}}' if namespace else ""
    window = max(60, int((now - since).total_seconds())) if since else None
    series = (f"increase(kubetune_gateway_tokens_total{selector}[{window}s])" if window
              else f"kubetune_gateway_tokens_total{selector}")
    return f"sum by (namespace, model, type) ({series})"


def tokens_from_prometheus(url: str, query: str, timeout: float = 30) -> dict[TokenKey, float]:
    full = url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(full, timeout=timeout) as response:  # noqa: S310 - an operator-given URL
        data = json.loads(response.read())
    if data.get("status") != "success":
        raise RuntimeError(f"Prometheus at {url}: {data.get('error') or data}")
    return {(r["metric"].get("namespace", ""), r["metric"].get("model", ""), r["metric"].get("type", "")): float(r["value"][1])
            for r in data["data"]["result"]}
