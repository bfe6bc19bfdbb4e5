"""The gateway's settings: one YAML file (mounted from a ConfigMap by the chart), strictly parsed.

    keysNamespace: kubetune-system          # where the API-key Secrets live (the gateway's own namespace)
    filesUri: s3://kubetune-files/gateway   # uploaded files: <filesUri>/<tenant namespace>/<file id>/...
    maxFileBytes: 536870912                  # an upload larger than this is refused (413)
    coldStartSeconds: 300                    # a request waits this long for a ModelDeployment with no ready replica
    baseModels:                              # the names `model=` accepts, and what each one is
      smollm2-135m:
        uri: s3://models/smollm2-135m-instruct
        resources: {gpus: 1}                 # the FineTuneJob's spec.resources for jobs on this model
    job:                                     # merged into every API-created FineTuneJob's spec
      output: {uri: s3://adapters/gateway}

Object-storage credentials come from the environment, as for every other kubetune component
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / KUBETUNE_S3_ENDPOINT, kubetune_storage).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from ..api.common import BaseModelSource, KubeModel
from ..api.finetunejob import Resources

ENV_CONFIG = "KUBETUNE_GATEWAY_CONFIG"
# A hard upper bound, whatever the config says: a file is read once for validation as it streams in.
MAX_FILE_BYTES = 8 * 1024**3


class ServingRef(KubeModel):
    """A ModelDeployment, by namespace and name."""

    namespace: str = Field(description="Its namespace.", max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    name: str = Field(description="Its name.", max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class BaseModelEntry(BaseModelSource):
    """A base model offered under a name (OpenAI's `model`), and how its jobs run."""

    resources: Resources | None = Field(default=None, description="spec.resources of jobs fine-tuning this model.")
    serving: ServingRef | None = Field(default=None, description="The platform's shared ModelDeployment serving this base "
                                       "model; API jobs on it that succeed are added to it as adapters (kubetune.gateway.models). "
                                       "Empty: offered for fine-tuning only.")


class GatewaySettings(KubeModel):
    """What the gateway serves and where it keeps things. Unknown keys are refused (KubeModel)."""

    keys_namespace: str = Field(default="kubetune-system", description="Namespace of the API-key Secrets.",
                                max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    files_uri: str = Field(description="Object-storage folder for uploaded files (s3://bucket/prefix, file:///dir).",
                           max_length=1024)
    max_file_bytes: int = Field(default=512 * 1024**2, description="Largest accepted upload.", ge=1, le=MAX_FILE_BYTES)
    base_models: dict[str, BaseModelEntry] = Field(default_factory=dict, description="name -> base model.")
    cold_start_seconds: int = Field(
        default=300, ge=0, le=3600,
        description="How long an inference request waits for a ModelDeployment with no ready replica (scaled to zero "
        "by KEDA, or starting) before a 503; while it waits it counts in kubetune_gateway_requests_waiting, which "
        "wakes the ModelDeployment (docs/scaling.md). 0: answer 503 at once.")
    job: dict[str, Any] = Field(default_factory=dict,
                                description="Merged into every API-created FineTuneJob's spec (output, storage, ...).")


def load_settings(path: str | Path | None = None) -> GatewaySettings:
    """Settings from `path`, else from $KUBETUNE_GATEWAY_CONFIG. Errors name the file and the field."""
    from ..api.validation import SpecError, parse

    path = path or os.environ.get(ENV_CONFIG)
    if not path:
        raise SystemExit(f"kubetune gateway: no settings file (--config or ${ENV_CONFIG})")
    try:
        return parse(GatewaySettings, yaml.safe_load(Path(path).read_text()) or {}, prefix=str(path))
    except SpecError as exc:
        raise SystemExit("kubetune gateway: bad settings:\n  " + "\n  ".join(exc.problems)) from None
