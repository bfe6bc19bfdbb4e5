"""The pre-flight Job of a FineTuneJob: the trainer image in pre-flight mode, on CPU, before any GPU is asked for.

Pure: no I/O. It is made from the training Job the operator would create, so that it runs as the trainer does:
the same image, ServiceAccount, security context, trainer config, storage and hub credentials (secretKeyRefs) and
volumes. It keeps only what validating data needs: CPU and memory from the platform settings, no GPU, no Kueue
queue label (it takes no GPU quota), no GPU placement (nodeSelector, affinity, tolerations), no distributed-run
env, a short activeDeadlineSeconds and one retry. The trainer reads the per-GPU memory to check the estimate
against in ENV_GPU_MEMORY (kubetune.api.preflight).
"""

from __future__ import annotations

import copy
from typing import Any

from ..api import constants as c
from ..api import exit_codes
from ..api.finetunejob import FineTuneJobSpec
from ..api.preflight import ENV_GPU_MEMORY, PREFLIGHT_FLAG
from ..api.tracking import SECRET_ENV as TRACKER_SECRET_ENV
from ..config import OperatorSettings
from .common import resources

BACKOFF_LIMIT = 1  # one retry after a crash; a user error (exit 1) fails it at once (podFailurePolicy)
POD_FIELDS = ("restartPolicy", "serviceAccountName", "automountServiceAccountToken", "enableServiceLinks", "securityContext",
              "terminationGracePeriodSeconds", "priorityClassName")
CONTAINER_FIELDS = ("name", "image", "imagePullPolicy", "securityContext", "terminationMessagePath", "terminationMessagePolicy")
DISTRIBUTED_ENV = {c.ENV_NNODES, c.ENV_NODE_RANK, "MASTER_ADDR", "MASTER_PORT", c.ENV_STOP_GRACE}
# the pre-flight generates and tracks nothing: it gets no judge key and no tracker credentials
TRAINING_ONLY_SECRETS = {c.ENV_JUDGE_API_KEY, *TRACKER_SECRET_ENV}
GPU_ONLY_VOLUMES = {"dshm"}  # shared memory for data loader workers and NCCL


def gpu_memory(resolved: FineTuneJobSpec, settings: OperatorSettings) -> str | None:
    """The memory of one GPU the pre-flight checks the estimate against: spec.resources.gpuMemory, else the
    platform's value for the GPU type; None for a CPU job or an unknown GPU (not checked)."""
    res = resolved.resources
    if res.gpus == 0:
        return None
    if res.gpu_memory is not None:
        return str(res.gpu_memory)
    return settings.gpu_memory_for(res.gpu_resource_name or settings.gpu_resource_name, resolved.scheduling.node_selector)


def preflight_labels(train_labels: dict[str, str]) -> dict[str, str]:
    """The training Job's labels with its own component and without the Kueue queue: Kueue never sees it."""
    out = {k: v for k, v in train_labels.items() if k != c.LABEL_KUEUE_QUEUE}
    out[c.LABEL_COMPONENT] = c.COMPONENT_PREFLIGHT
    return out


def build_preflight_job(train_job: dict[str, Any], name: str, resolved: FineTuneJobSpec,
                        settings: OperatorSettings) -> dict[str, Any]:
    """The pre-flight Job `name`, made from the training Job `train_job` (see the module docstring)."""
    template = train_job["spec"]["template"]
    trainer = next(ctr for ctr in template["spec"]["containers"] if ctr["name"] == c.TRAINER_CONTAINER)
    volumes = [v for v in template["spec"]["volumes"] if v["name"] not in GPU_ONLY_VOLUMES]
    env = [e for e in trainer["env"] if e["name"] not in DISTRIBUTED_ENV | TRAINING_ONLY_SECRETS]
    if (memory := gpu_memory(resolved, settings)) is not None:
        env.append({"name": ENV_GPU_MEMORY, "value": memory})
    container = {
        **{k: copy.deepcopy(trainer[k]) for k in CONTAINER_FIELDS if k in trainer},
        "args": [*trainer["args"], PREFLIGHT_FLAG],
        "env": env,
        "resources": resources(settings.preflight_cpu, settings.preflight_memory, 0, ""),
        "volumeMounts": [m for m in trainer["volumeMounts"] if m["name"] not in GPU_ONLY_VOLUMES],
    }
    pod_spec = {**{k: copy.deepcopy(template["spec"][k]) for k in POD_FIELDS if k in template["spec"]},
                "containers": [container], "volumes": copy.deepcopy(volumes)}
    labels = preflight_labels(train_job["metadata"]["labels"])
    meta = copy.deepcopy(train_job["metadata"])
    meta.update(name=name, labels=labels)
    meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if k != c.ANNOTATION_USER_HOLD}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": settings.preflight_deadline_seconds,
            "completions": 1,
            "parallelism": 1,
            "podFailurePolicy": {"rules": [
                # Bad data, a job that does not fit its GPUs, a model that is not there: retrying cannot help.
                {"action": "FailJob", "onExitCodes": {"containerName": c.TRAINER_CONTAINER, "operator": "In",
                                                      "values": [exit_codes.USER_ERROR]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }
