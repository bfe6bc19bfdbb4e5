"""Platform defaults the operator applies to every resource (set by the Helm chart as env vars)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "KUBETUNE_"


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

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ
        values = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw not in (None, ""):
                values[name] = raw
        return cls.model_validate(values)
