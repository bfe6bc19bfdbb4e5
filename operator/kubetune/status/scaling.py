"""What status reads of a ModelDeployment's scaling children (builders/scaling.py). Pure."""

from __future__ import annotations

from typing import Any

from ..api.modeldeployment import ModelDeploymentSpec


def observed_workload(spec: ModelDeploymentSpec | None, scaling: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The workload the spec builds, as observed: its LeaderWorkerSet (resources.nodes > 1: one group per replica,
    whose status counts groups as a Deployment's counts pods) or its Deployment."""
    if spec is None:
        return scaling.get("Deployment")
    return scaling.get("LeaderWorkerSet" if spec.resources.nodes > 1 else "Deployment")


def replicas_wanted(spec: ModelDeploymentSpec, workload: dict[str, Any] | None) -> ModelDeploymentSpec:
    """The spec with the replicas the status counts against: with autoscaling, the autoscaler's choice (the
    workload's spec.replicas; before it exists, autoscaling.minReplicas), else spec.replicas."""
    if spec.autoscaling is None:
        return spec
    replicas = ((workload or {}).get("spec") or {}).get("replicas")
    return spec.model_copy(update={"replicas": spec.autoscaling.min_replicas if replicas is None else int(replicas)})
