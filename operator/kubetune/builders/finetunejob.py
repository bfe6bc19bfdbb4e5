"""FineTuneJob -> its children: trainer ConfigMap, per-job ServiceAccount/Role/RoleBinding, batch/v1 Job.

Pure functions: no I/O, no kopf, no client. The per-job Role lets the trainer patch the status of its
own FineTuneJob (resourceNames) and nothing else: that is how live progress reaches status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..api import constants as c
from ..api import exit_codes
from ..api.common import configmap_key, local_only_problems, pvc_claim
from ..api.finetunejob import FineTuneJobSpec
from ..api.trainer_config import TrainerConfig, trainer_config
from ..api.validation import SpecError
from ..config import OperatorSettings
from .preflight import build_preflight_job
from .tracking import tracking_env
from .common import (
    Child,
    Parent,
    child_name,
    configmap_volumes,
    container_security_context,
    label_value,
    object_meta,
    pod_security_context,
    pvc_volumes,
    resources,
    scheduling_fields,
    secret_env,
    service_account_token_volume,
    short_hash,
    storage_env,
    with_storage_defaults,
)

SPEC_HASH_ANNOTATION = c.ANNOTATION_SPEC_HASH
WORK_DIR = "/work"


@dataclass(frozen=True)
class TrainerNames:
    config_map: str
    service_account: str
    role: str
    role_binding: str
    job: str
    headless_service: str
    preflight_job: str

    @classmethod
    def of(cls, ftj_name: str) -> TrainerNames:
        trainer = child_name(ftj_name, "trainer")
        return cls(
            config_map=child_name(ftj_name, "trainer-config"),
            service_account=trainer,
            role=trainer,
            role_binding=trainer,
            job=child_name(ftj_name, "train"),
            headless_service=child_name(ftj_name, "nodes"),
            preflight_job=child_name(ftj_name, "preflight"),
        )


def resolve_spec(spec: FineTuneJobSpec, settings: OperatorSettings) -> FineTuneJobSpec:
    """A copy of the spec with the platform defaults filled in. SpecError if a required one is missing."""
    data = spec.model_copy(deep=True)
    if data.output.uri is None:
        if not settings.default_output_uri:
            raise SpecError(["spec.output.uri: required field is missing (this platform sets no default output)"])
        data.output.uri = settings.default_output_uri
    with_storage_defaults(data.storage, settings.s3_endpoint, settings.s3_region, settings.storage_secret)
    if data.resources.gpu_resource_name is None:
        data.resources.gpu_resource_name = settings.gpu_resource_name
    if data.scheduling.queue_name is None and settings.default_queue:
        data.scheduling.queue_name = settings.default_queue
    if data.image is None:
        data.image = settings.trainer_image
    if not settings.allow_file_uris:
        problems = local_only_problems({"spec.baseModel.uri": data.base_model.uri, "spec.dataset.train": data.dataset.train,
                                        "spec.dataset.validation": data.dataset.validation, "spec.output.uri": data.output.uri,
                                        **evaluation_uris(data)})
        if problems:
            raise SpecError(problems)
    return data


def evaluation_uris(spec: FineTuneJobSpec) -> dict[str, str]:
    """{field path: URI} of the prompt sets spec.evaluation reads (fetched like the dataset)."""
    ev = spec.evaluation
    found = {"spec.evaluation.prompts": ev.prompts, "spec.evaluation.regressionSet": ev.regression_set} if ev else {}
    return {path: uri for path, uri in found.items() if uri}


def pvc_claims(resolved: FineTuneJobSpec) -> dict[str, bool]:
    """{claim: read-only} of the spec's pvc:// URIs: model and data are only read, the output is written."""
    claims: dict[str, bool] = {}
    for uri in (resolved.base_model.uri, resolved.dataset.train, resolved.dataset.validation,
                *evaluation_uris(resolved).values()):
        if claim := pvc_claim(uri):
            claims.setdefault(claim, True)
    if claim := pvc_claim(resolved.output.uri):
        claims[claim] = False
    return claims


def configmap_keys(resolved: FineTuneJobSpec) -> dict[str, list[str]]:
    """{ConfigMap: keys} of the spec's configmap://name/key data URIs."""
    keys: dict[str, list[str]] = {}
    for uri in (resolved.dataset.train, resolved.dataset.validation, *evaluation_uris(resolved).values()):
        if ref := configmap_key(uri):
            keys.setdefault(ref[0], []).append(ref[1])
    return keys


MUTABLE_FIELDS = ("suspend", "cancel")  # the spec fields that act on a Job that already exists


def spec_hash(resolved: FineTuneJobSpec) -> str:
    """Identity of everything a running Job cannot change (all but `suspend` and `cancel`)."""
    return short_hash({k: v for k, v in resolved.to_dict().items() if k not in MUTABLE_FIELDS}, 16)


@dataclass(frozen=True)
class HoldPlan:
    """How the training Job follows spec.suspend / spec.cancel: a merge patch for the Job (or None) and the
    `spec.active` its Kueue Workload must have (None: leave the Workload alone)."""

    job_patch: dict[str, Any] | None = None
    workload_active: bool | None = None


def plan_hold(job: dict[str, Any], resolved: FineTuneJobSpec) -> HoldPlan:
    """Without a queue the Job's `suspend` is the user's. With a Kueue queue it is Kueue's: the operator
    suspends the Job for the user (recorded in ANNOTATION_USER_HOLD) and deactivates its Workload, since
    Kueue starts an admitted Job that is merely suspended again; it releases only a hold it recorded, by
    re-activating the Workload. It never sets `suspend: false` on a queued Job: Kueue does, on admission."""
    stop = resolved.suspend or resolved.cancel
    meta = job.get("metadata") or {}
    suspended = bool((job.get("spec") or {}).get("suspend"))
    if c.LABEL_KUEUE_QUEUE not in (meta.get("labels") or {}):
        return HoldPlan({"spec": {"suspend": stop}} if suspended != stop else None)
    held = (meta.get("annotations") or {}).get(c.ANNOTATION_USER_HOLD) == "true"
    if stop:
        patch = None if held and suspended else {"metadata": {"annotations": {c.ANNOTATION_USER_HOLD: "true"}},
                                                 "spec": {"suspend": True}}
        return HoldPlan(patch, workload_active=False)
    if held:
        return HoldPlan({"metadata": {"annotations": {c.ANNOTATION_USER_HOLD: None}}}, workload_active=True)
    return HoldPlan()


def labels(parent: Parent, resolved: FineTuneJobSpec | None = None) -> dict[str, str]:
    out = {
        c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE,
        c.LABEL_COMPONENT: c.COMPONENT_TRAINER,
        c.LABEL_FINETUNEJOB: label_value(parent.name),
    }
    if resolved is not None and resolved.scheduling.queue_name:
        out[c.LABEL_KUEUE_QUEUE] = resolved.scheduling.queue_name
    return out


def build_config_map(parent: Parent, names: TrainerNames, config: TrainerConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(parent, names.config_map, labels(parent)),
        "data": {c.TRAINER_CONFIG_KEY: json.dumps(config.to_dict(), indent=2, sort_keys=True)},
    }


def build_service_account(parent: Parent, names: TrainerNames) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": object_meta(parent, names.service_account, labels(parent)),
        "automountServiceAccountToken": False,
    }


def build_role(parent: Parent, names: TrainerNames) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": object_meta(parent, names.role, labels(parent)),
        "rules": [
            {
                # The trainer reports live progress into this one FineTuneJob's status, nothing else.
                "apiGroups": [c.GROUP],
                "resources": [f"{c.FINETUNEJOB_PLURAL}/status"],
                "resourceNames": [parent.name],
                "verbs": ["patch"],
            }
        ],
    }


def build_role_binding(parent: Parent, names: TrainerNames) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": object_meta(parent, names.role_binding, labels(parent)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.role},
        "subjects": [{"kind": "ServiceAccount", "name": names.service_account, "namespace": parent.namespace}],
    }


def build_headless_service(parent: Parent, names: TrainerNames) -> dict[str, Any]:
    """Stable DNS names for the nodes of a multi-node run (torch.distributed rendezvous)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(parent, names.headless_service, labels(parent)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {c.LABEL_FINETUNEJOB: label_value(parent.name), c.LABEL_COMPONENT: c.COMPONENT_TRAINER},
            "ports": [{"name": "rendezvous", "port": c.RENDEZVOUS_PORT, "targetPort": c.RENDEZVOUS_PORT}],
        },
    }


def _env(parent: Parent, names: TrainerNames, resolved: FineTuneJobSpec, settings: OperatorSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": c.ENV_CONFIG_PATH, "value": c.TRAINER_CONFIG_PATH},
        {"name": c.ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": c.ENV_WORK_DIR, "value": f"{WORK_DIR}/run"},
        # the ranks of a distributed run checkpoint within the pod's grace period, with time left to report
        {"name": c.ENV_STOP_GRACE, "value": str(max(10, settings.termination_grace_seconds - 15))},
        {"name": "HOME", "value": f"{WORK_DIR}/home"},
        {"name": "HF_HOME", "value": f"{WORK_DIR}/hf"},
        {"name": "TRITON_CACHE_DIR", "value": f"{WORK_DIR}/triton"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    env += storage_env(resolved.storage)
    env += tracking_env(resolved.tracking)  # tracker credentials, by secretKeyRef
    if resolved.hub_token_secret_ref:
        ref = resolved.hub_token_secret_ref
        env.append(secret_env(c.ENV_HF_TOKEN, ref.name, ref.key))
    if resolved.evaluation and resolved.evaluation.judge and resolved.evaluation.judge.api_key_secret_ref:
        ref = resolved.evaluation.judge.api_key_secret_ref  # the judge's key: an env var from the Secret, never argv
        env.append(secret_env(c.ENV_JUDGE_API_KEY, ref.name, ref.key))
    if resolved.resources.nodes > 1:
        env += [
            {"name": c.ENV_NNODES, "value": str(resolved.resources.nodes)},
            {"name": c.ENV_NODE_RANK, "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
            {"name": "MASTER_ADDR", "value": f"{names.job}-0.{names.headless_service}"},
            {"name": "MASTER_PORT", "value": str(c.RENDEZVOUS_PORT)},
        ]
    return env


def build_job(parent: Parent, names: TrainerNames, resolved: FineTuneJobSpec, settings: OperatorSettings) -> dict[str, Any]:
    pod_labels = labels(parent, resolved)
    nodes = resolved.resources.nodes
    gpu_resource = resolved.resources.gpu_resource_name or settings.gpu_resource_name
    claim_volumes, claim_mounts = pvc_volumes(pvc_claims(resolved))
    data_volumes, data_mounts = configmap_volumes(configmap_keys(resolved))
    container = {
        "name": c.TRAINER_CONTAINER,
        "image": resolved.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["--config", c.TRAINER_CONFIG_PATH],
        "env": _env(parent, names, resolved, settings),
        "ports": [{"name": "metrics", "containerPort": c.TRAINER_METRICS_PORT}]
        + ([{"name": "rendezvous", "containerPort": c.RENDEZVOUS_PORT}] if nodes > 1 else []),
        "resources": resources(resolved.resources.cpu, resolved.resources.memory, resolved.resources.gpus, gpu_resource),
        "securityContext": container_security_context(),
        "terminationMessagePath": c.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "config", "mountPath": c.TRAINER_CONFIG_MOUNT, "readOnly": True},
            {"name": "work", "mountPath": WORK_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True},
            *claim_mounts,
            *data_mounts,
        ],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": names.service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": names.config_map}},
            {"name": "work", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            service_account_token_volume(),
            *claim_volumes,
            *data_volumes,
        ],
        **scheduling_fields(resolved.scheduling),
    }
    if nodes > 1:
        pod_spec["subdomain"] = names.headless_service
    queued = bool(resolved.scheduling.queue_name)
    job_spec: dict[str, Any] = {
        # A queued Job starts suspended: Kueue un-suspends it when it admits it.
        "suspend": resolved.suspend or resolved.cancel or queued,
        "backoffLimit": resolved.backoff_limit,
        "completions": nodes,
        "parallelism": nodes,
        "completionMode": "Indexed" if nodes > 1 else "NonIndexed",
        "podFailurePolicy": {
            "rules": [
                # Bad data or config: retrying cannot help.
                {"action": "FailJob", "onExitCodes": {"containerName": c.TRAINER_CONTAINER, "operator": "In",
                                                      "values": [exit_codes.USER_ERROR]}},
                # Preemption or eviction: resume from the checkpoint without spending a retry.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
    }
    if resolved.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = resolved.active_deadline_seconds
    annotations = {SPEC_HASH_ANNOTATION: spec_hash(resolved)}
    if queued and (resolved.suspend or resolved.cancel):
        annotations[c.ANNOTATION_USER_HOLD] = "true"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_meta(parent, names.job, pod_labels, annotations),
        "spec": job_spec,
    }


def build_children(body: dict[str, Any], resolved: FineTuneJobSpec, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Every child, in creation order: the Job last, so all it mounts and runs as exists first."""
    parent = Parent.of(body)
    names = TrainerNames.of(parent.name)
    config = trainer_config(parent.namespace, parent.name, parent.uid, resolved)
    children = [
        build_config_map(parent, names, config),
        build_service_account(parent, names),
        build_role(parent, names),
        build_role_binding(parent, names),
    ]
    if resolved.resources.nodes > 1:
        children.append(build_headless_service(parent, names))
    children.append(build_job(parent, names, resolved, settings))
    return children


def desired_children(body: dict[str, Any], resolved: FineTuneJobSpec, settings: OperatorSettings, *, create_job: bool,
                     keep_config: bool, create_preflight: bool = False) -> list[Child]:
    """The children one reconcile applies, in order. The Jobs are only ever created (their pod templates are
    immutable; suspend is set by plan_hold): the pre-flight Job when `create_preflight`, the training Job when
    `create_job` (plan.finetunejob: once the pre-flight passed). `keep_config`: a Job of an older spec runs, so
    its trainer config is left as it was (created only if missing) rather than changed under it."""
    *prerequisites, job = build_children(body, resolved, settings)
    out = [Child(child, create_only=keep_config and child["kind"] == "ConfigMap") for child in prerequisites]
    if create_preflight:
        name = TrainerNames.of(Parent.of(body).name).preflight_job
        out.append(Child(build_preflight_job(job, name, resolved, settings), create_only=True))
    return out + ([Child(job, create_only=True)] if create_job else [])
