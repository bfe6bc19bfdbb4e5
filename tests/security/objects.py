"""Every object the operator builds, from the real builders (kubetune.builders), for a spec and the
platform settings: what the security and RBAC tests inspect."""

from __future__ import annotations

from typing import Any

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.validation import parse
from kubetune.builders import finetunejob as ftj
from kubetune.builders import modeldeployment as md
from kubetune.config import OperatorSettings

NAMESPACE = "team-a"
CANARY = "canary-secret-value-7f3a9c"  # a secret value that must never appear in anything the operator builds
SETTINGS = OperatorSettings(default_output_uri="s3://models/adapters", s3_endpoint="http://minio.storage:9000",
                            s3_region="us-east-1", storage_secret="kubetune-storage", default_queue="default-gpus")
FTJ_SPEC = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"train": "s3://datasets/support/chat.jsonl"},
            "hubTokenSecretRef": {"name": "hf-token", "key": "token"}}
MD_SPEC = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
           "adapters": [{"name": "support-bot", "fineTuneJobRef": {"name": "support-bot"}},
                        {"name": "legal", "uri": "s3://models/adapters/legal/legal"}],
           "apiKeySecretRef": {"name": "support-api-key", "key": "key"}, "hubTokenSecretRef": {"name": "hf-token", "key": "token"}}


def body(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": kind, "spec": spec,
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": "0b7c1e7e-5f0e-4a43-9a39-3f2f3c6c1d11", "generation": 1}}


def finetunejob_children(spec: dict[str, Any] | None = None, settings: OperatorSettings = SETTINGS, nodes: int = 1,
                         name: str = "support-bot") -> list[dict[str, Any]]:
    spec = dict(spec or FTJ_SPEC)
    if nodes > 1:
        spec["resources"] = {**spec.get("resources", {}), "nodes": nodes, "gpus": 8}
    resolved = ftj.resolve_spec(parse(FineTuneJobSpec, spec), settings)
    return ftj.build_children(body("FineTuneJob", name, spec), resolved, settings)


def finetunejob_preflight(spec: dict[str, Any] | None = None, settings: OperatorSettings = SETTINGS,
                          name: str = "support-bot") -> list[dict[str, Any]]:
    """The pre-flight Job the operator creates before the training Job (builders.preflight)."""
    spec = dict(spec or FTJ_SPEC)
    resolved = ftj.resolve_spec(parse(FineTuneJobSpec, spec), settings)
    children = ftj.desired_children(body("FineTuneJob", name, spec), resolved, settings, create_job=False, keep_config=False,
                                    create_preflight=True)
    return [child.manifest for child in children if child.manifest["kind"] == "Job"]


def modeldeployment_children(spec: dict[str, Any] | None = None, settings: OperatorSettings = SETTINGS,
                             name: str = "support") -> list[dict[str, Any]]:
    spec = spec or MD_SPEC
    resolved = md.resolve_spec(parse(ModelDeploymentSpec, spec), settings)
    desired = md.desired_set(1, [{"name": "legal", "uri": "s3://models/adapters/legal/legal", "manifestSha256": "a" * 64}])
    return md.build_children(body("ModelDeployment", name, spec), resolved, settings, desired)
