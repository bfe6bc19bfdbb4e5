"""The trainer's one input: a JSON document the operator mounts from a ConfigMap.

It carries the FineTuneJob spec with platform defaults resolved, the job's identity, and where to
report progress. It never carries a secret value: credentials arrive as secretKeyRef env vars.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import KubeModel
from .constants import API_VERSION, FINETUNEJOB_PLURAL
from .finetunejob import FineTuneJobSpec
from .storage_layout import job_prefix
from .validation import SpecError


class JobIdentity(KubeModel):
    """Which FineTuneJob this run belongs to."""

    namespace: str = Field(description="Namespace of the FineTuneJob.", max_length=63)
    name: str = Field(description="Name of the FineTuneJob.", max_length=253)
    uid: str | None = Field(default=None, description="UID of the FineTuneJob.", max_length=64)


class ProgressReporting(KubeModel):
    """How the trainer reports live progress (see docs/progress-contract.md)."""

    mode: Literal["kubernetes", "file", "none"] = Field(
        default="kubernetes",
        description="kubernetes: merge-patch the FineTuneJob's status subresource with the pod's own token; "
        "file: append JSON lines to `file` (local runs); none: log only.",
    )
    status_path: str | None = Field(default=None, description="API path of the FineTuneJob's /status.", max_length=1024)
    file: str | None = Field(default=None, description="Progress file for mode file.", max_length=4096)
    interval_seconds: int = Field(default=5, description="Report at most this often.", ge=1, le=300)


class TrainerConfig(KubeModel):
    """Everything the trainer needs, and nothing secret."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(default=API_VERSION, description="Config version.")
    kind: Literal["TrainerConfig"] = Field(default="TrainerConfig", description="Config kind.")
    job: JobIdentity = Field(description="The FineTuneJob this run belongs to.")
    spec: FineTuneJobSpec = Field(description="The FineTuneJob spec with platform defaults resolved.")
    output_prefix: str = Field(description="<output.uri>/<namespace>/<job>: where everything is published.", max_length=2048)
    progress: ProgressReporting = Field(default_factory=ProgressReporting, description="Progress reporting.")


def status_path(namespace: str, name: str) -> str:
    return f"/apis/{API_VERSION}/namespaces/{namespace}/{FINETUNEJOB_PLURAL}/{name}/status"


def trainer_config(namespace: str, name: str, uid: str | None, resolved: FineTuneJobSpec,
                   progress: ProgressReporting | None = None) -> TrainerConfig:
    """The config for a resolved spec (see resolve_spec)."""
    if resolved.output.uri is None:
        raise SpecError(["spec.output.uri: required field is missing"])
    return TrainerConfig(
        job=JobIdentity(namespace=namespace, name=name, uid=uid),
        spec=resolved,
        output_prefix=job_prefix(resolved.output.uri, namespace, name),
        progress=progress or ProgressReporting(mode="kubernetes", status_path=status_path(namespace, name)),
    )
