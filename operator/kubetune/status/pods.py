"""What status reads from a trainer-image pod (training or pre-flight): its container's state. Pure: no I/O."""

from __future__ import annotations

from typing import Any

from ..api.conditions import FineTuneJobReason as Reason
from ..api.constants import TRAINER_CONTAINER

IMAGE_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
SCHEDULING_HINT = "Check spec.resources (GPUs, memory) and spec.scheduling (nodeSelector, tolerations)."


def trainer_status(pod: dict[str, Any]) -> dict[str, Any]:
    """The trainer container's status in the pod (empty when kubelet has not reported it)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == TRAINER_CONTAINER:
            return status
    return {}


def terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    status = trainer_status(pod)
    return (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")


def by_age(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"].get("name", "")))


def stuck(pods: list[dict[str, Any]], scheduling_hint: str = SCHEDULING_HINT) -> tuple[str, str] | None:
    """An active pod that cannot start: image pull failure or unschedulable."""
    for pod in by_age(pods):
        waiting = (trainer_status(pod).get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_PULL_REASONS:
            img = next((ctr.get("image") for ctr in pod["spec"].get("containers", []) if ctr.get("name") == TRAINER_CONTAINER), "?")
            return Reason.IMAGE_PULL_FAILED, (f"Cannot pull trainer image {img}: {waiting.get('reason')}: {waiting.get('message', '')}"
                                               " Check spec.image and the image pull secret.").strip()
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
                return Reason.UNSCHEDULABLE, f"Pod {pod['metadata']['name']} cannot be scheduled: {cond.get('message', '')} {scheduling_hint}"
    return None
