"""
Defaulting and validation of the built-in kinds an operator creates (Job, Pod, Deployment),
limited to what commonly bites operators: the Job's generated selector and labels, required
restartPolicy/containers, the immutable Job template, and Deployment selector/label agreement.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from kubetune_emulator import errors
from kubetune_emulator.registry import ResourceType


def _kind(rtype: ResourceType) -> str:
    return f"{rtype.group}/{rtype.plural}"


def _check_pod_spec(rtype: ResourceType, name: str, spec: Any, path: str, restart_policies: tuple[str, ...]) -> None:
    problems = []
    if not isinstance(spec, Mapping):
        raise errors.invalid_for(rtype, name, f"{path}: Required value")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        problems.append(f"{path}.containers: Required value")
    else:
        for index, container in enumerate(containers):
            for field in ("name", "image"):
                if not isinstance(container, Mapping) or not container.get(field):
                    problems.append(f"{path}.containers[{index}].{field}: Required value")
        names = [c.get("name") for c in containers if isinstance(c, Mapping)]
        if len(names) != len(set(names)):
            problems.append(f"{path}.containers: Duplicate value: container names must be unique")
    policy = spec.get("restartPolicy", "Always")
    if policy not in restart_policies:
        problems.append(f"{path}.restartPolicy: Unsupported value: {policy!r}: supported values: "
                        + ", ".join(f'"{p}"' for p in restart_policies))
    if problems:
        raise errors.invalid_for(rtype, name, "; ".join(problems))


def fold_string_data(rtype: ResourceType, obj: dict[str, Any]) -> None:
    """A Secret's write-only `stringData` is merged into `data` (base64) and dropped, on create and on update,
    as the API server's Secret strategy does: a reader only ever sees `data`."""
    if _kind(rtype) != "/secrets" or "stringData" not in obj:
        return
    string_data = obj.pop("stringData") or {}
    data = dict(obj.get("data") or {})
    data.update({key: base64.b64encode(str(value).encode()).decode() for key, value in string_data.items()})
    obj["data"] = data


def default_and_validate_create(rtype: ResourceType, obj: dict[str, Any]) -> None:
    kind = _kind(rtype)
    fold_string_data(rtype, obj)
    meta = obj["metadata"]
    name = meta["name"]
    spec = obj.setdefault("spec", {})
    if kind == "batch/jobs":
        template = spec.get("template")
        if not isinstance(template, Mapping):
            raise errors.invalid_for(rtype, name, "spec.template: Required value")
        _check_pod_spec(rtype, name, template.get("spec"), "spec.template.spec", ("OnFailure", "Never"))
        uid = meta["uid"]
        generated = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                     "controller-uid": uid, "job-name": name}
        if not spec.get("manualSelector"):
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            template_meta = template.setdefault("metadata", {})  # type: ignore[union-attr]
            template_meta["labels"] = dict(template_meta.get("labels") or {}, **generated)
        if "completions" not in spec and "parallelism" not in spec:
            spec["completions"] = 1
        spec.setdefault("parallelism", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed")
    elif kind == "/pods":
        _check_pod_spec(rtype, name, spec, "spec", ("Always", "OnFailure", "Never"))
        spec.setdefault("restartPolicy", "Always")
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    elif kind in ("apps/deployments", "apps/statefulsets", "apps/replicasets"):
        template = spec.get("template") or {}
        _check_pod_spec(rtype, name, template.get("spec"), "spec.template.spec", ("Always",))
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not selector or any(labels.get(key) != value for key, value in selector.items()):
            raise errors.invalid_for(rtype, name, "spec.template.metadata.labels: Invalid value: "
                                                  "`selector` does not match template `labels`")
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        if kind == "apps/deployments":
            spec.setdefault("progressDeadlineSeconds", 600)
            spec.setdefault("strategy", {"type": "RollingUpdate",
                                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})


def validate_update(rtype: ResourceType, old: Mapping[str, Any], new: dict[str, Any]) -> None:
    fold_string_data(rtype, new)
    if _kind(rtype) in ("apps/deployments", "apps/statefulsets", "apps/replicasets") and isinstance(new.get("spec"), dict):
        new["spec"].setdefault("replicas", 1)  # defaulted on every write (an apply that gave the field up, nobody else owns)
    if _kind(rtype) != "batch/jobs":
        return
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    for field in ("template", "selector", "completionMode"):
        if old_spec.get(field) != new_spec.get(field):
            raise errors.invalid_for(rtype, old["metadata"]["name"],
                                     f"spec.{field}: Invalid value: field is immutable")
