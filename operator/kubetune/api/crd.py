"""Generate the CustomResourceDefinitions from the pydantic models (the one source of truth).

Pydantic emits JSON Schema 2020-12; a CRD needs a *structural* OpenAPI v3 schema: no $ref, no
`title`, no `null` types, no `additionalProperties: false` (the API server prunes unknown fields and
`kubectl apply` rejects them with field validation), int-or-string for quantities.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from .constants import GROUP, VERSION
from .finetunejob import FineTuneJobSpec, FineTuneJobStatus
from .methods import METHODS
from .modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from .template import FineTuneTemplateSpec

_DROP = {"title", "additionalProperties"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**target, **extra}, defs)
    any_of = node.get("anyOf")
    if any_of and not node.get("x-kubernetes-int-or-string"):
        non_null = [branch for branch in any_of if branch.get("type") != "null"]
        if len(non_null) == 1:
            merged = {**non_null[0], **{k: v for k, v in node.items() if k != "anyOf"}}
            if merged.get("default", 0) is None:
                merged.pop("default")
            return _resolve(merged, defs)
        raise ValueError(f"cannot express a union in a structural schema: {node}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP and not (key == "additionalProperties" and isinstance(value, dict)):
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            raise ValueError("use ge/le bounds: CRDs take exclusive bounds as booleans")
        if key == "properties":
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = _resolve(value, defs)
    if out.get("default", 0) is None:
        out.pop("default")
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A structural OpenAPI v3 schema for one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _resolve(raw, defs)
    # Defaults of whole objects (default_factory) stay out: the server would store them verbatim.
    _strip_object_defaults(schema)
    return schema


def _strip_object_defaults(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") in ("object", "array") and "default" in node:
            node.pop("default")
        for value in node.values():
            _strip_object_defaults(value)
    elif isinstance(node, list):
        for item in node:
            _strip_object_defaults(item)


def _strip_defaults(node: Any) -> Any:
    """The schema without any `default`: the API server then stores exactly what was written."""
    if isinstance(node, dict):
        return {k: _strip_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_strip_defaults(item) for item in node]
    return node


def _root_schema(spec: type[BaseModel], status: type[BaseModel] | None, description: str) -> dict[str, Any]:
    schema = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version: kubetune.io/v1alpha1."},
            "kind": {"type": "string", "description": "Kind of the object."},
            "metadata": {"type": "object"},
            "spec": openapi_schema(spec),
            **({"status": openapi_schema(status)} if status is not None else {}),
        },
    }
    return schema


def _crd(*, kind: str, plural: str, singular: str, short: list[str], description: str,
         spec: type[BaseModel], status: type[BaseModel] | None, columns: list[dict[str, Any]],
         subresources: dict[str, Any], scope: str = "Namespaced") -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "kubetune", "app.kubernetes.io/part-of": "kubetune"},
        },
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": singular,
                      "shortNames": short, "categories": ["kubetune", "ml"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": _root_schema(spec, status, description)},
                "subresources": subresources,
                "additionalPrinterColumns": columns,
            }],
        },
    }


def _cond(kind: str) -> str:
    return f'.status.conditions[?(@.type=="{kind}")].status'


def finetunejob_crd() -> dict[str, Any]:
    return _crd(
        kind="FineTuneJob", plural="finetunejobs", singular="finetunejob", short=["ftj"],
        description=f"A fine-tuning run ({', '.join(m.title for m in METHODS.values())}; LoRA, QLoRA, DoRA or full) "
        "that publishes an adapter to object storage.",
        spec=FineTuneJobSpec, status=FineTuneJobStatus,
        subresources={"status": {}},
        columns=[
            {"name": "Succeeded", "type": "string", "jsonPath": _cond("Succeeded")},
            {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Succeeded")].reason'},
            {"name": "Phase", "type": "string", "jsonPath": ".status.progress.phase",
             "description": "What the trainer is doing now (or was doing when it stopped)."},
            {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percent", "description": "Percent of steps done."},
            {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
            {"name": "ETA", "type": "integer", "jsonPath": ".status.progress.etaSeconds", "priority": 1, "description": "Seconds left."},
            {"name": "Reported", "type": "date", "jsonPath": ".status.progress.updateTime", "priority": 1,
             "description": "When the trainer last reported (every few seconds while it runs)."},
            {"name": "Data", "type": "string", "jsonPath": _cond("DataValidated"), "priority": 1,
             "description": "DataValidated: the pre-flight's verdict on the data and the GPU memory."},
            {"name": "Examples", "type": "integer", "jsonPath": ".status.data.train.examples", "priority": 1,
             "description": "Training examples the pre-flight counted."},
            {"name": "Method", "type": "string", "jsonPath": ".spec.method.type", "priority": 1},
            {"name": "Adapter", "type": "string", "jsonPath": ".spec.adapter.type", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def modeldeployment_crd() -> dict[str, Any]:
    return _crd(
        kind="ModelDeployment", plural="modeldeployments", singular="modeldeployment", short=["md"],
        description="vLLM serving of a base model plus LoRA adapters behind an OpenAI-compatible endpoint.",
        spec=ModelDeploymentSpec, status=ModelDeploymentStatus,
        subresources={
            "status": {},
            "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                      "labelSelectorPath": ".status.selector"},
        },
        columns=[
            {"name": "Ready", "type": "string", "jsonPath": _cond("Ready")},
            {"name": "Replicas", "type": "string", "jsonPath": ".status.readyReplicas", "description": "Ready replicas."},
            {"name": "Adapters", "type": "string", "jsonPath": ".status.adaptersReady", "description": "Ready/desired adapters."},
            {"name": "Adapter State", "type": "string", "jsonPath": '.status.conditions[?(@.type=="AdaptersReady")].reason',
             "priority": 1, "description": "Worst adapter state, e.g. AdapterGated (docs/promotion.md)."},
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def finetunetemplate_crd() -> dict[str, Any]:
    """Cluster-scoped, no status (configuration, like a PriorityClass), no defaults in its schema (a field the
    template sets is one written in it: api/template.py)."""
    crd = _crd(
        kind="FineTuneTemplate", plural="finetunetemplates", singular="finetunetemplate", short=["ftt"],
        description="A platform team's preset for fine-tuning one base model: allowed methods and adapter types, "
        "defaults, fixed fields and bounds for FineTuneJobs, their resources, images, queue and priority, and the "
        "ModelDeployment that serves their adapters (docs/templates.md).",
        spec=FineTuneTemplateSpec, status=None, subresources={}, scope="Cluster",
        columns=[
            {"name": "Base Model", "type": "string", "jsonPath": ".spec.baseModel.uri"},
            {"name": "Methods", "type": "string", "jsonPath": ".spec.methods", "description": "Allowed method.type values (empty: all)."},
            {"name": "Adapters", "type": "string", "jsonPath": ".spec.adapterTypes", "description": "Allowed adapter.type values (empty: all)."},
            {"name": "Queue", "type": "string", "jsonPath": ".spec.defaults.scheduling.queueName", "priority": 1},
            {"name": "Serving", "type": "string", "jsonPath": ".spec.serving.name", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )
    version = crd["spec"]["versions"][0]
    version["schema"] = _strip_defaults(version["schema"])
    return crd


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD, as checked in under crds/."""
    return {
        f"{GROUP}_finetunejobs.yaml": finetunejob_crd(),
        f"{GROUP}_modeldeployments.yaml": modeldeployment_crd(),
        f"{GROUP}_finetunetemplates.yaml": finetunetemplate_crd(),
    }


HEADER = "# Generated from kubetune.api by `kubetune crds`. Do not edit by hand.\n"


def render(crd: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=120)
