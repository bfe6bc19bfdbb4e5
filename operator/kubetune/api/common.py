"""Building blocks shared by FineTuneJob and ModelDeployment.

Every model forbids unknown fields, uses camelCase aliases and documents every field: the text becomes
the CRD description and `kubectl explain` output. Bounds here become OpenAPI bounds in the CRD.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic.alias_generators import to_camel

from .constants import DEFAULT_CONFIGMAP_ROOT, DEFAULT_PVC_ROOT

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A positive decimal number written as a string, e.g. "2e-4", "0.05", "1".
DECIMAL = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$"
QUANTITY = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"

# hf://org/name, s3://bucket/key, pvc://claim/path, file:///abs/path (local runs only).
MODEL_URI = r"^(hf://[A-Za-z0-9][-._A-Za-z0-9]*(/[A-Za-z0-9][-._A-Za-z0-9]*)?|(s3|pvc)://[a-z0-9][-.a-z0-9]{0,62}(/[^\s]*)?|file:///[^\s]*)$"
# configmap://name/key: one key of a ConfigMap in the job's namespace, mounted into the training pod (small data,
# no object storage; a ConfigMap holds at most 1 MiB).
CONFIGMAP_SCHEME = "configmap"
CONFIGMAP_DATA_URI = r"configmap://[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?/[-._a-zA-Z0-9]{1,253}"
DATA_URI = (r"^(hf://[A-Za-z0-9][-._A-Za-z0-9]*/[A-Za-z0-9][-._A-Za-z0-9]*(/[^\s]*)?|(s3|pvc)://[a-z0-9][-.a-z0-9]{0,62}(/[^\s]*)?"
            r"|https://[^\s]+|file:///[^\s]*|" + CONFIGMAP_DATA_URI + ")$")
STORAGE_URI = r"^((s3|pvc)://[a-z0-9][-.a-z0-9]{0,62}(/[^\s]*)?|file:///[^\s]*)$"
# An adapter on the Hugging Face Hub, pinned to one commit: hf://org/name@<40-hex commit sha>[/folder] (the hf://
# grammar of huggingface_hub's HfFileSystem). A branch or tag can move between reading manifest.json and the files.
HF_COMMIT = r"[0-9a-f]{40}"
HF_ADAPTER_URI = r"hf://[A-Za-z0-9][-._A-Za-z0-9]*/[A-Za-z0-9][-._A-Za-z0-9]*@" + HF_COMMIT + r"(/[^\s@]*)?"
ADAPTER_URI = r"^(" + HF_ADAPTER_URI + "|" + STORAGE_URI[2:-2] + ")$"
ADAPTER_URI_HELP = ("Allowed: s3://bucket/prefix, pvc://claim/path, hf://org/name@<40-hex commit sha>[/folder], "
                    "file:///path (file:// only for `kubetune local`).")
URI_SCHEMES_HELP = "Allowed schemes: hf://, s3://, pvc://, file:// (file:// only for `kubetune local`)."
DATA_URI_HELP = ("Allowed schemes: hf://, s3://, pvc://, https://, configmap://name/key (a key of a ConfigMap in the "
                 "job's namespace, at most 1 MiB), file:// (file:// only for `kubetune local`).")
PVC_SCHEME = "pvc"
# file:///path names a folder on one machine: on a cluster that is inside one pod, gone with the pod.
LOCAL_ONLY_SCHEME = "file"
LOCAL_ONLY_HINT = ("file:// URIs are for `kubetune local` only: on a cluster a file:// path is a folder inside one pod "
                   "and vanishes with it. Use s3:// or pvc://claim/path.")


def uri_scheme(uri: str | None) -> str | None:
    return uri.split("://", 1)[0] if uri and "://" in uri else None


@dataclass(frozen=True)
class HfRef:
    """hf://[datasets/|spaces/]org/name[@revision][/path], split: huggingface_hub's HfFileSystem grammar. A revision
    holding '/' (refs/pr/1) is URL-encoded (refs%2Fpr%2F1). A single-segment name (hf://gpt2) is a legacy model id."""

    repo_type: str  # model, dataset or space
    repo_id: str
    revision: str | None
    path: str  # inside the repo, without leading or trailing '/'

    def uri(self, path: str = "") -> str:
        """The hf:// URI of `path` under this reference."""
        kind = {"model": "", "dataset": "datasets/", "space": "spaces/"}[self.repo_type]
        at = f"@{quote(self.revision, safe='')}" if self.revision else ""
        inner = "/".join(p for p in (self.path, path.strip("/")) if p)
        return f"hf://{kind}{self.repo_id}{at}" + (f"/{inner}" if inner else "")


def parse_hf_uri(uri: str) -> HfRef:
    """Split an hf:// URI; ValueError naming what is wrong."""
    if not uri.startswith("hf://"):
        raise ValueError(f"{uri!r} is not an hf:// URI")
    parts = uri[len("hf://"):].strip("/").split("/")
    repo_type = {"datasets": "dataset", "spaces": "space"}.get(parts[0], "model")
    if repo_type != "model":
        parts = parts[1:]
    if not parts or not parts[0]:
        raise ValueError(f"{uri!r} names no repository: write hf://org/name")
    # hf://org/name[@rev]/path; a lone segment (hf://gpt2[@rev]) is a legacy model id without an org
    count = 1 if "@" in parts[0] or len(parts) == 1 else 2
    repo, _, revision = "/".join(parts[:count]).partition("@")
    if not all(re.fullmatch(r"[A-Za-z0-9][-._A-Za-z0-9]*", seg) for seg in repo.split("/")):
        raise ValueError(f"{uri!r}: {repo!r} is not a Hub repository id (org/name)")
    if "@" in revision or (revision == "" and "@" in "/".join(parts[:count])):
        raise ValueError(f"{uri!r}: empty or repeated '@revision'")
    path = "/".join(parts[count:])
    if ".." in path.split("/"):
        raise ValueError(f"{uri!r} must not contain '..' path segments")
    return HfRef(repo_type, repo, unquote(revision) or None, path)


def check_adapter_uri(value: str | None) -> str | None:
    """An adapter folder: s3://, pvc://, file:// or hf://org/name@<commit sha>[/folder], without '..'."""
    if value is None:
        return value
    if value.startswith("hf://") and not re.fullmatch(HF_ADAPTER_URI, value):
        raise ValueError(f"{value!r}: an hf:// adapter must be pinned to a commit: hf://org/name@<40-hex commit "
                         "sha>[/folder] (a branch or tag can move between reading manifest.json and the files)")
    if not re.match(ADAPTER_URI, value):
        raise ValueError(f"{value!r} is not a valid adapter URI. {ADAPTER_URI_HELP}")
    return _check_uri_path(value)


def pvc_claim(uri: str | None) -> str | None:
    """The PersistentVolumeClaim of a pvc://claim/path URI; None for other schemes."""
    if uri_scheme(uri) != PVC_SCHEME:
        return None
    return uri.split("://", 1)[1].split("/", 1)[0] or None  # type: ignore[union-attr]


def pvc_mount_path(claim: str) -> str:
    """Where pods mount a claim. The trainer and the serving sidecar read pvc://claim/path at
    $KUBETUNE_PVC_ROOT/claim/path, the root defaulting to DEFAULT_PVC_ROOT: this same place."""
    return f"{DEFAULT_PVC_ROOT}/{claim}"


def configmap_key(uri: str | None) -> tuple[str, str] | None:
    """(ConfigMap name, key) of a configmap://name/key URI; None for other schemes."""
    if uri_scheme(uri) != CONFIGMAP_SCHEME:
        return None
    name, _, key = uri.split("://", 1)[1].partition("/")  # type: ignore[union-attr]
    return name, key


def configmap_mount_path(name: str) -> str:
    """Where the training pod mounts ConfigMap `name`: the trainer reads configmap://name/key at
    $KUBETUNE_CONFIGMAP_ROOT/name/key, the root defaulting to DEFAULT_CONFIGMAP_ROOT: this same place."""
    return f"{DEFAULT_CONFIGMAP_ROOT}/{name}"


def local_only_problems(uris: dict[str, str | None]) -> list[str]:
    """`field: message` for every file:// URI among {field path: URI} (refused outside `kubetune local`)."""
    return [f"{path}: {uri!r}: {LOCAL_ONLY_HINT}" for path, uri in uris.items() if uri_scheme(uri) == LOCAL_ONLY_SCHEME]


class KubeModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        validate_assignment=True,
    )

    def to_dict(self) -> dict[str, Any]:
        """The wire form: camelCase, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class KubeObject(KubeModel):
    """A kubetune custom resource: apiVersion, kind, metadata; each kind narrows `kind` and adds spec and status."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(default="kubetune.io/v1alpha1", description="API version.")
    kind: str = Field(description="Kind.")
    metadata: dict = Field(default_factory=dict, description="Standard object metadata.")


def _check_uri_path(value: str | None) -> str | None:
    """Reject `..` segments: a URI must never climb out of its bucket prefix or claim."""
    if value is not None and ".." in re.split(r"[/\\]", value.split("://", 1)[-1]):
        raise ValueError("must not contain '..' path segments")
    return value


def decimal(description: str, *, default: str | None = None) -> Any:
    """A decimal number carried as a string (no floats in spec where precision matters)."""
    return Field(default=default, description=description, pattern=DECIMAL, max_length=32)


def below_one(*fields: str) -> Any:
    """A field validator for decimal fields (see `decimal`) that must stay below 1: a dropout, a warmup ratio."""

    def check(cls: type, value: str) -> str:
        if not Decimal(value) < 1:
            raise ValueError(f"must be below 1, got {value}")
        return value

    return field_validator(*fields)(classmethod(check))


def cel(rule: str, message: str) -> dict[str, str]:
    """One CEL rule of a CRD's x-kubernetes-validations and the message the API server answers when it fails."""
    return {"rule": rule, "message": message}


def with_rules(*rules: dict[str, str]) -> ConfigDict:
    """KubeModel's config plus CEL rules on the object (x-kubernetes-validations: cross-field rules the API
    server checks on create and update; the pydantic validators say the same for the operator)."""
    return KubeModel.model_config | {"json_schema_extra": {"x-kubernetes-validations": list(rules)}}


# Kubernetes resource quantity: int or string, like core/v1 resources.
Quantity = Annotated[
    int | str,
    WithJsonSchema(
        {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": QUANTITY}
    ),
]

# Free-form Kubernetes object passed through unchanged (e.g. affinity).
FreeForm = Annotated[dict[str, Any], WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})]


def check_quantity(value: int | str | None, field: str) -> int | str | None:
    if value is None or isinstance(value, int):
        if isinstance(value, int) and value < 0:
            raise ValueError(f"{field} must not be negative")
        return value
    if not re.match(QUANTITY, value):
        raise ValueError(f"{field} {value!r} is not a Kubernetes quantity (e.g. 8, 500m, 32Gi)")
    return value


class SecretRef(KubeModel):
    """A Secret in the same namespace as the resource."""

    name: str = Field(description="Name of the Secret.", min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)


class SecretKeyRef(KubeModel):
    """One key of a Secret in the same namespace. Only the reference is stored; the value never is."""

    name: str = Field(description="Name of the Secret.", min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(description="Key inside the Secret.", min_length=1, max_length=253, pattern=SECRET_KEY)


class BaseModelSource(KubeModel):
    """The pretrained model to start from or to serve."""

    uri: str = Field(
        description="Where the model lives: hf://org/name (Hugging Face Hub), s3://bucket/prefix, "
        "pvc://claim/path, or file:///path for local runs. " + URI_SCHEMES_HELP,
        min_length=6,
        max_length=1024,
        pattern=MODEL_URI,
    )
    revision: str | None = Field(
        default=None,
        description="Hub revision (branch, tag or commit) to pin. Recommended for reproducibility.",
        max_length=128,
        pattern=r"^[-._/A-Za-z0-9]+$",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run Python code shipped with the model. Off by default: enable only for models you trust.",
    )

    @field_validator("uri")
    @classmethod
    def _no_traversal(cls, value: str) -> str:
        return _check_uri_path(value)


class ObjectStorage(KubeModel):
    """How to reach S3-compatible object storage (AWS S3, MinIO, SeaweedFS, Ceph RGW)."""

    endpoint: str | None = Field(
        default=None,
        description="S3 endpoint URL, e.g. http://minio.storage:9000. Empty: the platform default, else AWS.",
        max_length=512,
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
    )
    region: str | None = Field(default=None, description="S3 region.", max_length=64, pattern=r"^[-a-z0-9]+$")
    credentials_secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. Empty: the platform default. "
        "Values are passed to pods as secretKeyRef env and never copied anywhere.",
    )


class ComputeResources(KubeModel):
    """Compute per pod: GPUs as limits, CPU and memory as equal requests and limits."""

    gpus: int = Field(default=1, description="GPUs per pod (0 runs on CPU: only sensible for tiny models).", ge=0, le=16)
    gpu_resource_name: str | None = Field(
        default=None,
        description="Extended resource name of the GPU, e.g. nvidia.com/gpu or amd.com/gpu. Empty: the platform default.",
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-._a-zA-Z0-9]+$",
    )
    cpu: Quantity | None = Field(default=None, description="CPU request and limit, e.g. 8 or 7500m.")
    memory: Quantity | None = Field(default=None, description="Memory request and limit, e.g. 64Gi.")

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: int | str | None, info) -> int | str | None:
        return check_quantity(value, info.field_name)


class Toleration(KubeModel):
    """A core/v1 Toleration."""

    key: str | None = Field(default=None, description="Taint key; empty with operator Exists matches all.", max_length=316)
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: str | None = Field(default=None, description="Taint value for operator Equal.", max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint appears.", ge=0
    )


class Scheduling(KubeModel):
    """Where and when pods may run."""

    queue_name: str | None = Field(
        default=None,
        description="Kueue LocalQueue name; sets the kueue.x-k8s.io/queue-name label on the training Job (Kueue's "
        "batch/Job integration) or on the serving Deployment and its pods (Kueue's deployment integration). "
        "Empty: a FineTuneJob gets the platform default queue, a ModelDeployment none.",
        max_length=63,
        pattern=DNS_LABEL,
    )
    priority_class_name: str | None = Field(
        default=None, description="PriorityClass of the pods.", max_length=253, pattern=DNS_SUBDOMAIN
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(
        default=None, description="Node labels the pods must match.", max_length=32
    )
    tolerations: list[Toleration] | None = Field(default=None, description="Taints the pods tolerate.", max_length=32)
    affinity: FreeForm | None = Field(default=None, description="core/v1 Affinity, passed through unchanged.")


class Condition(KubeModel):
    """Exactly metav1.Condition."""

    type: str = Field(
        description="Type of condition in CamelCase.",
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    status: Literal["True", "False", "Unknown"] = Field(description="Status of the condition.")
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was set from.", ge=0
    )
    last_transition_time: datetime = Field(description="Last time the condition changed status.")
    reason: str = Field(
        description="Programmatic CamelCase identifier of the reason for the last transition.",
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
    )
    message: str = Field(description="Human-readable details about the transition.", max_length=32768)


CONDITIONS_FIELD = Field(
    default_factory=list,
    description="Current state as metav1.Condition entries, one per type.",
    max_length=16,
    json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
)
