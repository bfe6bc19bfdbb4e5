"""Platform defaults the operator applies to every resource (set by the Helm chart as env vars)."""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .api.common import check_quantity

ENV_PREFIX = "KUBETUNE_"
# Memory of one GPU by NVIDIA GPU feature discovery's product name (the nvidia.com/gpu.product node label): the
# total nvidia-smi reports, rounded down to GiB. The chart's platform.gpuMemory default is this table.
DEFAULT_GPU_MEMORY = {
    "NVIDIA-H200": "140Gi",
    "NVIDIA-H100-80GB-HBM3": "79Gi",
    "NVIDIA-A100-SXM4-80GB": "79Gi",
    "NVIDIA-A100-SXM4-40GB": "39Gi",
    "NVIDIA-L40S": "44Gi",
    "NVIDIA-A10G": "22Gi",
    "NVIDIA-L4": "22Gi",
    "Tesla-T4": "15Gi",
}


class OperatorSettings(BaseModel):
    """What a platform team decides once so that each FineTuneJob manifest can stay short."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trainer_image: str = "ghcr.io/kubetune/trainer:0.1.0"
    serving_image: str = "ghcr.io/kubetune/serving:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    gpu_resource_name: str = "nvidia.com/gpu"
    default_output_uri: str | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    storage_secret: str | None = Field(default=None, description="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.")
    default_queue: str | None = None
    # Seconds Kubernetes waits after SIGTERM: the trainer saves a checkpoint in that time.
    termination_grace_seconds: int = 120
    # Serve Prometheus metrics at /metrics on this port (none when unset).
    metrics_port: int | None = None
    # file:// URIs name a folder on one machine: accepted only under `kubetune local` (local/run.py sets
    # KUBETUNE_ALLOW_FILE_URIS=true; the Helm chart never does). Elsewhere they fail with ValidationFailed.
    allow_file_uris: bool = False
    # The CPU-only pre-flight Job (docs/lifecycle.md#pre-flight): it validates the data and estimates GPU memory
    # before the training Job (and its GPU quota) is created. Off: the training Job starts at once and the
    # trainer validates the data itself, holding its GPUs meanwhile.
    preflight_enabled: bool = True
    preflight_cpu: str = "1"
    preflight_memory: str = "4Gi"
    preflight_deadline_seconds: int = Field(default=1800, ge=60)
    # Memory of one GPU by GPU type, for the pre-flight's fit check (a spec's resources.gpuMemory wins): keys are
    # GPU products (the value of gpu_product_label in the job's nodeSelector, e.g. NVIDIA-A100-SXM4-80GB) or GPU
    # resource names (nvidia.com/mig-3g.40gb); "default" for any other. No match: the fit is not checked.
    # From the environment as a JSON object.
    gpu_memory: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_GPU_MEMORY))
    gpu_product_label: str = "nvidia.com/gpu.product"
    # Serving autoscalers (docs/scaling.md): "hpa" builds an autoscaling/v2 HorizontalPodAutoscaler on a Pods metric that
    # prometheus-adapter serves; "keda" a KEDA ScaledObject (Prometheus trigger at prometheus_url; scale to zero). The
    # chart grants the rights on the kind chosen here only.
    autoscaler: Literal["hpa", "keda"] = "hpa"
    prometheus_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    # LeaderWorkerSet (leaderworkerset.x-k8s.io/v1) is installed: a ModelDeployment may set resources.nodes > 1.
    leader_worker_set: bool = False

    @field_validator("preflight_cpu", "preflight_memory")
    @classmethod
    def _quantity(cls, value: str, info: Any) -> str:
        check_quantity(value, info.field_name)
        return value

    @field_validator("gpu_memory")
    @classmethod
    def _gpu_memory(cls, value: dict[str, str]) -> dict[str, str]:
        for gpu_type, memory in value.items():
            check_quantity(str(memory), f"gpu_memory[{gpu_type!r}]")
        return {k: str(v) for k, v in value.items()}

    def gpu_memory_for(self, gpu_resource: str | None, node_selector: dict[str, str] | None) -> str | None:
        """The platform's memory of one GPU for a job: by the GPU product its nodeSelector asks for, else by its GPU
        resource name (a MIG profile names its memory), else the "default" entry; None when none applies."""
        product = (node_selector or {}).get(self.gpu_product_label)
        for key in (product, gpu_resource, "default"):
            if key and key in self.gpu_memory:
                return self.gpu_memory[key]
        return None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ
        values = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw not in (None, ""):
                values[name] = _json(name, raw) if name in _JSON_FIELDS else raw
        return cls.model_validate(values)


_JSON_FIELDS = {"gpu_memory"}


def _json(name: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: not JSON ({exc})") from None
