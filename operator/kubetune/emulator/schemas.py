"""
Structural-schema handling of custom resources, as the API server does it on every write:
pruning of unknown fields, defaulting, then OpenAPI v3 validation (422 with field paths).

Not done: CEL rules (``x-kubernetes-validations``), ``format`` checks, ratcheting, and pruning
inside ``metadata``. Validation needs ``jsonschema``; without it, only pruning and defaulting run.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from kubetune.emulator import errors
from kubetune.emulator.registry import ResourceType

try:
    import jsonschema
except ImportError:  # pragma: no cover - jsonschema is a dev dependency
    jsonschema = None  # type: ignore[assignment]

_ROOT_FIELDS = ("apiVersion", "kind", "metadata")


def prune(value: Any, schema: Mapping[str, Any] | None, *, root: bool = False) -> Any:
    """Drop the fields that the schema does not know (unless x-kubernetes-preserve-unknown-fields)."""
    if not isinstance(schema, Mapping):
        return value
    if isinstance(value, list):
        return [prune(item, schema.get("items")) for item in value]
    if not isinstance(value, dict):
        return value
    properties = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or additional is True
    embedded = root or schema.get("x-kubernetes-embedded-resource")
    result = {}
    for key, item in value.items():
        if embedded and key in _ROOT_FIELDS:
            result[key] = item  # ObjectMeta is not pruned by the schema
        elif key in properties:
            result[key] = prune(item, properties[key])
        elif isinstance(additional, Mapping):
            result[key] = prune(item, additional)
        elif keep_unknown:
            result[key] = item
    return result


def apply_defaults(value: Any, schema: Mapping[str, Any] | None) -> Any:
    """Fill in ``default`` values of absent properties (never creating absent parents)."""
    if not isinstance(schema, Mapping):
        return value
    if isinstance(value, list):
        return [apply_defaults(item, schema.get("items")) for item in value]
    if not isinstance(value, dict):
        return value
    for key, sub in (schema.get("properties") or {}).items():
        if key not in value and isinstance(sub, Mapping) and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            value[key] = apply_defaults(value[key], sub)
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        for key in value:
            if key not in (schema.get("properties") or {}):
                value[key] = apply_defaults(value[key], additional)
    return value


def _to_jsonschema(schema: Any) -> Any:
    """OpenAPI v3 (Kubernetes dialect) to JSON Schema draft 4: nullable and int-or-string."""
    if isinstance(schema, list):
        return [_to_jsonschema(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    result = {key: _to_jsonschema(value) for key, value in schema.items()
              if not key.startswith("x-kubernetes-") and key not in ("nullable", "default", "example")}
    if schema.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in result:
        result["type"] = [result["type"], "null"]
    return result


def _field_path(error: Any) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validate(rtype: ResourceType, obj: Mapping[str, Any]) -> None:
    if jsonschema is None or not rtype.schema:
        return
    schema = _to_jsonschema(rtype.schema)
    body = {key: value for key, value in obj.items() if key != "metadata"}
    causes = []
    for error in sorted(jsonschema.Draft4Validator(schema).iter_errors(body), key=lambda e: list(e.absolute_path)):
        path = _field_path(error)
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else "?"
            causes.append({"field": f"{path + '.' if path else ''}{missing}", "message": "Required value"})
        else:
            shown = json.dumps(error.instance)[:80]
            causes.append({"field": path or "<root>", "message": f"Invalid value: {shown}: {error.message}"})
    if causes:
        name = (obj.get("metadata") or {}).get("name")
        texts = [f"{cause['field']}: {cause['message']}" for cause in causes]
        detail = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
        raise errors.invalid_for(rtype, name, detail, causes=causes)


def conform(rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """Prune, default and validate a custom resource about to be stored; returns the stored form."""
    if not rtype.schema:
        return obj
    result = apply_defaults(prune(obj, rtype.schema, root=True), rtype.schema)
    validate(rtype, result)
    return result
