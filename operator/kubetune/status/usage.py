"""GPU accounting of a FineTuneJob: status.gpuSeconds from its training pods. Pure: no I/O, no clock reads.

gpuSeconds = the sum, over every ended attempt (training pod) of the job, of that pod's GPUs (the trainer
container's limits of a GPU resource) × the trainer container's running time (its terminated state's
`startedAt` -> `finishedAt`). docs/lifecycle.md ("GPU accounting") is the user-facing definition.

Pods of earlier attempts disappear (a preempted or evicted pod is deleted, a finished Job's pods go with the
Job), so the total is kept in status and grows: an attempt is added once, when its pod is first seen ended.
status.gpuCountedPods names the ended pods already added that still exist, so the next derivation does not
add them again; a pod that no longer exists cannot come back (Job pods have generated names), so its name is
dropped from the list and the list stays as short as the Job's live pods.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..api.finetunejob import MAX_GPU_COUNTED_PODS
from .pods import by_age, terminated

_NOT_GPUS = ("cpu", "memory", "ephemeral-storage", "pods")


@dataclass(frozen=True)
class GpuUsage:
    gpu_seconds: int | None  # None: no attempt has ended and none was counted before
    counted_pods: list[str]


def pod_gpus(pod: dict[str, Any]) -> int:
    """GPUs the pod's containers hold: their limits of GPU resources (nvidia.com/gpu, amd.com/gpu,
    gpu.intel.com/*, nvidia.com/mig-*: any extended resource whose name says gpu or is NVIDIA's)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        for name, value in ((container.get("resources") or {}).get("limits") or {}).items():
            if name in _NOT_GPUS or name.startswith("hugepages-") or "/" not in name:
                continue
            if "gpu" in name or name.startswith("nvidia.com/"):
                try:
                    total += int(str(value))
                except ValueError:  # extended resources are integers; anything else is not a GPU count
                    continue
    return total


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def attempt_seconds(pod: dict[str, Any]) -> int | None:
    """Whole seconds the trainer container ran in this pod, once it has ended (None while it has not). A container
    that never started (image pull failure, deleted while pending) ran 0 s."""
    state = terminated(pod)
    if state is None:
        return None
    start, end = _time(state.get("startedAt")), _time(state.get("finishedAt"))
    if start is None or end is None or end < start:
        return 0
    return round((end - start).total_seconds())


def gpu_usage(pods: list[dict[str, Any]], previous: dict[str, Any]) -> GpuUsage:
    """The job's GPU-seconds: those already in `previous` (the stored status) plus the pods seen ended for the
    first time; and the ended pods counted so far that still exist."""
    before = previous.get("gpuSeconds")
    total = int(before) if isinstance(before, int) else None
    counted_before = set(previous.get("gpuCountedPods") or [])
    counted: list[str] = []
    for pod in by_age(pods):
        seconds = attempt_seconds(pod)
        if seconds is None:
            continue
        name = pod["metadata"]["name"]
        counted.append(name)
        if name not in counted_before:
            total = (total or 0) + pod_gpus(pod) * seconds
    return GpuUsage(total, counted[-MAX_GPU_COUNTED_PODS:])
