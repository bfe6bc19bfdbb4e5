"""Small pure helpers shared by the builders: names, labels, owner references, security contexts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..api import constants as c
from ..api.common import ObjectStorage, SecretRef, configmap_mount_path, pvc_mount_path

MAX_NAME = 63  # Job, Service and label values are DNS labels.


@dataclass(frozen=True)
class Parent:
    """The identity of the custom resource that owns the children."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, body: dict[str, Any]) -> Parent:
        meta = body["metadata"]
        return cls(body.get("apiVersion", c.API_VERSION), body["kind"], meta["namespace"], meta["name"], meta["uid"])


@dataclass(frozen=True)
class Child:
    """One desired child of a reconcile: server-side applied (any drift repaired), or `create_only` where the
    API server would reject a change to the existing object (a Job's pod template is immutable), or `delete`: an
    observed child the spec no longer builds (its kind changed, builders.scaling.stale_children). `field_manager`:
    applied as another manager than the operator's (builders.scaling.handover)."""

    manifest: dict[str, Any]
    create_only: bool = False
    delete: bool = False
    field_manager: str | None = None


def short_hash(data: Any, length: int = 10) -> str:
    raw = data if isinstance(data, str) else json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:length]


def child_name(parent: str, suffix: str) -> str:
    """`<parent>-<suffix>`, shortened deterministically (with a hash) to fit a DNS label."""
    name = f"{parent}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    keep = MAX_NAME - len(suffix) - 12
    return f"{parent[:keep].rstrip('-.')}-{short_hash(parent, 10)}-{suffix}"


def label_value(value: str) -> str:
    """A label value (<= 63 chars) that identifies `value`."""
    if len(value) <= MAX_NAME:
        return value
    return f"{value[:52].rstrip('-._')}-{short_hash(value, 10)}"


def owner_reference(parent: Parent) -> dict[str, Any]:
    return {
        "apiVersion": parent.api_version,
        "kind": parent.kind,
        "name": parent.name,
        "uid": parent.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(parent: Parent, name: str, labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": parent.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(parent)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def pod_security_context() -> dict[str, Any]:
    """Pod Security Standard "restricted"."""
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def resources(cpu: int | str | None, memory: int | str | None, gpus: int, gpu_resource: str) -> dict[str, Any]:
    """Requests equal limits (Guaranteed QoS for CPU/memory when set); GPUs are limits only."""
    limits: dict[str, Any] = {}
    if cpu is not None:
        limits["cpu"] = str(cpu)
    if memory is not None:
        limits["memory"] = str(memory)
    out: dict[str, Any] = {}
    if limits:
        out["requests"] = dict(limits)
    if gpus:
        limits[gpu_resource] = str(gpus)
    if limits:
        out["limits"] = limits
    return out


def scheduling_fields(scheduling: Any) -> dict[str, Any]:
    """Pod spec fields from a Scheduling model (queue name is a label, handled by the caller)."""
    out: dict[str, Any] = {}
    if scheduling.priority_class_name:
        out["priorityClassName"] = scheduling.priority_class_name
    if scheduling.node_selector:
        out["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        out["tolerations"] = [t.to_dict() for t in scheduling.tolerations]
    if scheduling.affinity:
        out["affinity"] = scheduling.affinity
    return out


def service_account_token_volume() -> dict[str, Any]:
    """A short-lived token for this pod's ServiceAccount (used only to report progress)."""
    return {
        "name": "kube-api-access",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ]
        },
    }


def with_storage_defaults(storage: ObjectStorage, endpoint: str | None, region: str | None, secret: str | None) -> None:
    """Fill the platform's storage endpoint, region and credentials Secret where the spec left them empty."""
    if storage.endpoint is None and endpoint:
        storage.endpoint = endpoint
    if storage.region is None and region:
        storage.region = region
    if storage.credentials_secret_ref is None and secret:
        storage.credentials_secret_ref = SecretRef(name=secret)


def storage_env(storage: ObjectStorage) -> list[dict[str, Any]]:
    """S3 connection env for a container; credentials only as secretKeyRefs."""
    env: list[dict[str, Any]] = []
    if storage.endpoint:
        env.append({"name": c.ENV_S3_ENDPOINT, "value": storage.endpoint})
    if storage.region:
        env.append({"name": c.ENV_S3_REGION, "value": storage.region})
    if storage.credentials_secret_ref:
        secret = storage.credentials_secret_ref.name
        env.append(secret_env(c.ENV_AWS_ACCESS_KEY_ID, secret, c.SECRET_KEY_ACCESS_KEY_ID))
        env.append(secret_env(c.ENV_AWS_SECRET_ACCESS_KEY, secret, c.SECRET_KEY_SECRET_ACCESS_KEY))
    return env


def volume_name(prefix: str, source: str) -> str:
    """A volume name (a DNS label) for a claim or ConfigMap name (a DNS subdomain: it may hold dots)."""
    name = f"{prefix}-" + source.replace(".", "-")
    return name if name == f"{prefix}-{source}" and len(name) <= MAX_NAME else \
        f"{prefix}-{source.replace('.', '-')[:40].rstrip('-')}-{short_hash(source, 10)}"


def pvc_volume_name(claim: str) -> str:
    return volume_name("pvc", claim)


def pvc_volumes(claims: dict[str, bool]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) for the claims of pvc:// URIs, {claim: read-only}, sorted by claim. Each claim
    is mounted at pvc_mount_path(claim), where the trainer and the serving sidecar resolve pvc://claim/..."""
    volumes, mounts = [], []
    for claim in sorted(claims):
        read_only = {"readOnly": True} if claims[claim] else {}
        volumes.append({"name": pvc_volume_name(claim), "persistentVolumeClaim": {"claimName": claim, **read_only}})
        mounts.append({"name": pvc_volume_name(claim), "mountPath": pvc_mount_path(claim), **read_only})
    return volumes, mounts


def configmap_volumes(keys: dict[str, list[str]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) for configmap://name/key data, {ConfigMap: keys}, sorted: each ConfigMap's named keys
    at configmap_mount_path(name)/key, where the trainer resolves configmap://name/key. Optional, so that a
    missing ConfigMap or key reaches the trainer as a missing file it reports by name (a required one would
    leave the pod in ContainerCreating); mounting needs no RBAC of the operator's or the trainer's."""
    volumes, mounts = [], []
    for name in sorted(keys):
        items = [{"key": key, "path": key} for key in sorted(set(keys[name]))]
        volumes.append({"name": volume_name("cm", name), "configMap": {"name": name, "items": items, "optional": True}})
        mounts.append({"name": volume_name("cm", name), "mountPath": configmap_mount_path(name), "readOnly": True})
    return volumes, mounts
