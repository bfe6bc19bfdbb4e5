"""ModelDeployment scaling: autoscaling on vLLM's own metrics (spec.autoscaling) and multi-node replicas
(spec.resources.nodes). The wire names of vLLM's metrics and of the objects the builders make from them
are typed here once (builders/scaling.py, docs/scaling.md and the chart read them from here).
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from .common import ComputeResources, KubeModel, cel, decimal, with_rules


class ScalingMetric(StrEnum):
    """What the autoscaler holds at its target, averaged over the serving pods."""

    REQUESTS_WAITING = "requestsWaiting"
    KV_CACHE_USAGE = "kvCacheUsage"


# vLLM 0.32's Prometheus gauges (vllm/v1/metrics/loggers.py), per serving pod, labelled model_name=<served name>.
VLLM_METRIC = {ScalingMetric.REQUESTS_WAITING: "vllm:num_requests_waiting",
               ScalingMetric.KV_CACHE_USAGE: "vllm:kv_cache_usage_perc"}
# A metric name in the custom metrics API (autoscaling/v2 Pods metrics) cannot hold ':'; prometheus-adapter's rule in
# docs/scaling.md renames `vllm:<x>` to `vllm_<x>`.
CUSTOM_METRIC = {metric: name.replace(":", "_") for metric, name in VLLM_METRIC.items()}
DEFAULT_TARGET = {ScalingMetric.REQUESTS_WAITING: "5", ScalingMetric.KV_CACHE_USAGE: "0.8"}

# The gateway's gauge of inference requests it holds for a ModelDeployment with no ready replica (scaled to zero, or
# starting): the signal that wakes a KEDA ScaledObject from zero, where no vLLM series exists. Exported by
# kubetune.gateway.metrics, queried by builders.scaling.wake_trigger; the labels name the ModelDeployment.
GATEWAY_WAITING_METRIC = "kubetune_gateway_requests_waiting"
GATEWAY_WAITING_LABELS = ("deployment_namespace", "modeldeployment")

# The Ray cluster of a multi-node replica (vLLM's documented multi-node serving: `ray start --head` on the leader,
# workers join it; vLLM's Ray executor places its pipeline stages on the nodes).
RAY_PORT = 6379


class Autoscaling(KubeModel):
    """Replicas follow vLLM's load: a HorizontalPodAutoscaler on a per-pod metric (prometheus-adapter serves it), or a
    KEDA ScaledObject with a Prometheus trigger where the platform runs KEDA. The autoscaler owns the replica count:
    spec.replicas (and `kubectl scale md`) is then not applied. See docs/scaling.md."""

    model_config = with_rules(cel("self.minReplicas <= self.maxReplicas",
                                  "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))

    min_replicas: int = Field(default=1, description="Fewest replicas. 0 (scale to zero) only where the platform "
                              "runs KEDA (the operator's autoscaler setting is keda); requests through the kubetune "
                              "gateway wake it (they wait there and count as waiting requests).", ge=0, le=64)
    max_replicas: int = Field(description="Most replicas.", ge=1, le=64)
    metric: ScalingMetric = Field(
        default=ScalingMetric.REQUESTS_WAITING,
        description="requestsWaiting: vllm:num_requests_waiting (requests queued for a free slot), kvCacheUsage: "
        "vllm:kv_cache_usage_perc (fraction 0-1 of the KV cache in use); averaged over the replicas.")
    target: str | None = decimal("Average of the metric per replica the autoscaler holds, e.g. \"5\" waiting "
                                 "requests or \"0.8\" KV-cache usage. Empty: 5 or 0.8.")
    scale_down_stabilization_seconds: int = Field(
        default=300, description="Scale down only to the highest recommendation of this window (a vLLM replica "
        "takes minutes to come back).", ge=0, le=3600)

    @field_validator("target")
    @classmethod
    def _positive(cls, value: str | None) -> str | None:
        if value is not None and not Decimal(value) > 0:
            raise ValueError(f"must be above 0, got {value}")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
        if self.metric == ScalingMetric.KV_CACHE_USAGE and self.target is not None and Decimal(self.target) > 1:
            raise ValueError(f"autoscaling.target: kvCacheUsage is a fraction 0-1, got {self.target}")
        return self

    @property
    def effective_target(self) -> str:
        return self.target or DEFAULT_TARGET[self.metric]


class ServingResources(ComputeResources):
    """Compute per replica: one pod, or with nodes > 1 one pod per node (a LeaderWorkerSet group)."""

    model_config = with_rules(cel("!has(self.nodes) || self.nodes == 1 || self.gpus > 0",
                                  "resources.nodes > 1 needs resources.gpus > 0"))

    nodes: int = Field(
        default=1, description="Nodes one replica spans. More than one: a LeaderWorkerSet per deployment, vLLM over a "
        "Ray cluster with tensor parallelism over the gpus of each node and pipeline parallelism over the nodes "
        "(needs LeaderWorkerSet installed, docs/scaling.md).", ge=1, le=16)

    @model_validator(mode="after")
    def _gpus(self) -> ServingResources:
        if self.nodes > 1 and self.gpus == 0:
            raise ValueError("resources.nodes > 1 needs resources.gpus > 0")
        return self
