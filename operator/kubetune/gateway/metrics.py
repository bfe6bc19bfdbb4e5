"""The gateway's Prometheus metrics (prometheus_client, in a registry of its own, as the operator's exporter).

    kubetune_gateway_requests_total{namespace,model,endpoint,code}       inference requests answered
    kubetune_gateway_tokens_total{namespace,model,type}                  prompt/completion tokens, from `usage`
    kubetune_gateway_upstream_seconds{endpoint}                          time to the upstream's response headers
    kubetune_gateway_requests_waiting{deployment_namespace,modeldeployment}  requests held for a ModelDeployment
                                                                         with no ready replica (wakes KEDA from 0)
    kubetune_finetunejob_gpu_seconds{namespace,job,model}                status.gpuSeconds of gateway jobs
    kubetune_finetunejob_trained_tokens{namespace,job,model}             status.progress.trainedTokens of them

`namespace` is the tenant; `model` the public name (a base model or ft:...). Token counts come from the
upstream's `usage` (vLLM counts them with the model's tokenizer); for streams the gateway asks for the final
usage chunk (stream_options.include_usage) and hides it from clients that did not ask.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from ..api.scaling import GATEWAY_WAITING_LABELS, GATEWAY_WAITING_METRIC

disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("kubetune_gateway_requests_total", "Inference requests answered, by tenant, model, endpoint and HTTP code.",
                   ["namespace", "model", "endpoint", "code"], registry=REGISTRY)
TOKENS = Counter("kubetune_gateway_tokens_total", "Tokens of answered inference requests (from the responses' usage), "
                 "by tenant, model and type (prompt, completion).", ["namespace", "model", "type"], registry=REGISTRY)
UPSTREAM = Histogram("kubetune_gateway_upstream_seconds", "Seconds from receiving a request to the upstream vLLM's "
                     "response headers.", ["endpoint"], registry=REGISTRY,
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
WAITING = Gauge(GATEWAY_WAITING_METRIC, "Inference requests held for a ModelDeployment that has no ready replica "
                "(scaled to zero, or starting), by the ModelDeployment's namespace and name: the signal that wakes a "
                "KEDA ScaledObject from zero.", list(GATEWAY_WAITING_LABELS), registry=REGISTRY)
GPU_SECONDS = Gauge("kubetune_finetunejob_gpu_seconds", "GPU-seconds of a gateway-created FineTuneJob (status.gpuSeconds).",
                    ["namespace", "job", "model"], registry=REGISTRY)
TRAINED_TOKENS = Gauge("kubetune_finetunejob_trained_tokens", "Tokens trained on by a gateway-created FineTuneJob "
                       "(status.progress.trainedTokens).", ["namespace", "job", "model"], registry=REGISTRY)


def count_usage(namespace: str, model: str, usage: Any) -> None:
    """Add a response's `usage` ({prompt_tokens, completion_tokens, ...}) to the token counters."""
    if not isinstance(usage, dict):
        return
    for kind in ("prompt", "completion"):
        value = usage.get(f"{kind}_tokens")
        if isinstance(value, int) and value > 0:
            TOKENS.labels(namespace=namespace, model=model, type=kind).inc(value)


def record_job(namespace: str, job: str, model: str, status: dict[str, Any]) -> None:
    """Export one job's accounting from its status."""
    if isinstance(status.get("gpuSeconds"), int):
        GPU_SECONDS.labels(namespace=namespace, job=job, model=model).set(status["gpuSeconds"])
    tokens = (status.get("progress") or {}).get("trainedTokens")
    if isinstance(tokens, int):
        TRAINED_TOKENS.labels(namespace=namespace, job=job, model=model).set(tokens)
