"""
Structural-schema handling of custom resources, as the API server does it on every write:
pruning of unknown fields, defaulting, then OpenAPI v3 validation and CEL rules
(``x-kubernetes-validations``, with ``self``) -- 422 with field paths.

CEL rules are not re-checked on values an update leaves as they were (ratcheting, as in Kubernetes 1.30+).
Not done: transition rules (``oldSelf``), CEL cost limits, ``format`` checks, ratcheting of the
OpenAPI checks, and pruning inside ``metadata``. Validation needs ``jsonschema`` and CEL needs
``cel-python`` (dev dependencies); without them, only pruning and defaulting run.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from typing import Any

from kubetune_emulator import errors
from kubetune_emulator.registry import ResourceType

try:
    import jsonschema
except ImportError:  # pragma: no cover - jsonschema is a dev dependency
    jsonschema = None  # type: ignore[assignment]
try:
    import celpy
except ImportError:  # pragma: no cover - cel-python is a dev dependency
    celpy = None  # type: ignore[assignment]
else:  # its DEBUG lines dump whole activations on every evaluation: slow, and they flood captured logs
    logging.getLogger("celpy").setLevel(logging.WARNING)

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


def _without_metadata(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if key != "metadata"}


def validate(rtype: ResourceType, obj: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> None:
    if jsonschema is None or not rtype.schema:
        return
    schema = _to_jsonschema(rtype.schema)
    body = _without_metadata(obj)
    causes = []
    for error in sorted(jsonschema.Draft4Validator(schema).iter_errors(body), key=lambda e: list(e.absolute_path)):
        path = _field_path(error)
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else "?"
            causes.append({"field": f"{path + '.' if path else ''}{missing}", "message": "Required value"})
        else:
            shown = json.dumps(error.instance)[:80]
            causes.append({"field": path or "<root>", "message": f"Invalid value: {shown}: {error.message}"})
    if not causes:
        causes = cel_violations(rtype.schema, body, old=_without_metadata(old) if old is not None else _ABSENT)
    if causes:
        name = (obj.get("metadata") or {}).get("name")
        texts = [f"{cause['field']}: {cause['message']}" for cause in causes]
        detail = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
        raise errors.invalid_for(rtype, name, detail, causes=causes)


_PROGRAMS: dict[str, Any] = {}


def _program(rule: str) -> Any:
    if rule not in _PROGRAMS:
        env = celpy.Environment()
        _PROGRAMS[rule] = env.program(env.compile(rule))
    return _PROGRAMS[rule]


_ABSENT = object()


def cel_violations(schema: Mapping[str, Any], value: Any, path: str = "", old: Any = _ABSENT) -> list[dict[str, str]]:
    """The x-kubernetes-validations rules that `value` breaks, at every level of the schema
    (evaluated with `self` bound to the value at that level, like the API server; transition rules
    with `oldSelf` are skipped). Ratcheting: a value equal to `old` (the stored one at that level, on
    updates) is not re-checked, so e.g. a status write never fails on the spec."""
    if celpy is None or not isinstance(schema, Mapping) or value == old:
        return []
    causes = []
    for rule in schema.get("x-kubernetes-validations") or []:
        if "oldSelf" in rule["rule"]:
            continue
        try:
            ok = bool(_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)}))
            why = rule.get("message") or f"failed rule: {rule['rule']}"
        except Exception as exc:  # noqa: BLE001 - an evaluation error rejects, as the API server does
            ok, why = False, f"failed rule: {rule['rule']}: evaluation error: {exc}"
        if not ok:
            shown = "object" if isinstance(value, dict) else ("array" if isinstance(value, list) else json.dumps(value))
            causes.append({"field": path or "<root>", "message": f'Invalid value: "{shown}": {why}'})
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        before = old if isinstance(old, dict) else {}
        for key, item in value.items():
            child = properties.get(key, extra if isinstance(extra, Mapping) else None)
            if child is not None:
                causes += cel_violations(child, item, f"{path}.{key}" if path else key, before.get(key, _ABSENT))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            causes += cel_violations(schema["items"], item, f"{path}[{index}]")
    return causes


def _structural(rtype: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
    """Pruned and defaulted. `obj` itself is not modified: prune builds new containers for every
    schema-described object, the only places apply_defaults writes to."""
    return apply_defaults(prune(obj, rtype.schema, root=True), rtype.schema)


def conform(rtype: ResourceType, obj: dict[str, Any], old: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Prune, default and validate a custom resource about to be stored (`old`: the stored one, on
    updates); returns the stored form."""
    if not rtype.schema:
        return obj
    result = _structural(rtype, obj)
    # CEL ratchets against what a read of the stored object returns: defaults included
    validate(rtype, result, _structural(rtype, old) if old is not None else None)
    return result
