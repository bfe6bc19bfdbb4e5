"""The kubetune API: pydantic models that are the single source of truth for the CRDs."""

from .finetunejob import FineTuneJob, FineTuneJobSpec, FineTuneJobStatus
from .modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus

__all__ = [
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
]
