"""
Server-side printing (``kind: Table``) as ``kubectl get`` asks for it, including the
``additionalPrinterColumns`` of CustomResourceDefinitions (a small JSONPath subset).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from typing import Any

from kubetune_emulator.registry import ResourceType

_BUILTIN_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "pods": [{"name": "Status", "type": "string", "jsonPath": ".status.phase"}],
    "namespaces": [{"name": "Status", "type": "string", "jsonPath": ".status.phase"}],
    "jobs": [{"name": "Succeeded", "type": "integer", "jsonPath": ".status.succeeded"},
             {"name": "Failed", "type": "integer", "jsonPath": ".status.failed"}],
    "deployments": [{"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
                    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}],
    "configmaps": [{"name": "Data", "type": "integer", "jsonPath": ".data", "count": True}],
}
_TOKEN = re.compile(r"\.([A-Za-z0-9_\-]+)|\[(\d+|\*)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*==\s*['\"]([^'\"]*)['\"]\)\]")


def wants_table(accept: str | None) -> bool:
    return bool(accept) and "as=Table" in accept  # type: ignore[operator]


def jsonpath(obj: Any, path: str) -> list[Any]:
    """Evaluate ``.a.b``, ``.a[0]``, ``.a[*].b`` and ``.a[?(@.k=="v")].b``; returns all matches."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    values = [obj]
    position = 0
    while position < len(path):
        match = _TOKEN.match(path, position)
        if match is None:
            return []
        position = match.end()
        field, index, filter_key, filter_value = match.groups()
        next_values: list[Any] = []
        for value in values:
            if field is not None and isinstance(value, Mapping) and field in value:
                next_values.append(value[field])
            elif index == "*" and isinstance(value, list):
                next_values.extend(value)
            elif index is not None and index != "*" and isinstance(value, list) and int(index) < len(value):
                next_values.append(value[int(index)])
            elif filter_key is not None and isinstance(value, list):
                next_values.extend(item for item in value if _equals(jsonpath(item, "." + filter_key), filter_value))
        values = next_values
    return values


def _equals(found: list[Any], expected: str) -> bool:
    return bool(found) and str(found[0]) == expected


def human_age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "<invalid>"
    seconds = max(0, int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    return f"{days}d"


def _columns(rtype: ResourceType) -> list[dict[str, Any]]:
    if rtype.from_crd and rtype.printer_columns:
        return rtype.printer_columns
    return _BUILTIN_COLUMNS.get(rtype.plural, []) + [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]


def _cell(obj: Mapping[str, Any], column: Mapping[str, Any]) -> Any:
    values = jsonpath(obj, column.get("jsonPath", ""))
    if column.get("count"):
        return len(values[0]) if values and isinstance(values[0], (Mapping, list)) else 0
    if column.get("type") == "date":
        return human_age(values[0] if values else None)
    if not values or values == [None]:
        return None
    if len(values) == 1 and isinstance(values[0], (Mapping, list)) and column.get("type") == "string":
        # The API server prints a list or map as compact JSON (client-go jsonpath's PrintResults): ["a","b"].
        return json.dumps(values[0], separators=(",", ":"))
    if len(values) == 1:
        return values[0]
    return ",".join(str(value) for value in values)


def to_table(rtype: ResourceType, objects: list[Mapping[str, Any]], resource_version: str,
             include_object: str | None = None, continue_token: str | None = None) -> dict[str, Any]:
    columns = _columns(rtype)
    definitions = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                    "description": "Name must be unique within a namespace."}]
    for column in columns:
        definitions.append({"name": column["name"], "type": column.get("type", "string"),
                            "format": column.get("format", ""), "priority": column.get("priority", 0),
                            "description": column.get("description", "")})
    rows = []
    for obj in objects:
        if include_object == "Object":
            embedded: Any = obj
        elif include_object == "None":
            embedded = None
        else:
            embedded = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata", {})}
        row: dict[str, Any] = {"cells": [obj["metadata"]["name"], *(_cell(obj, c) for c in columns)]}
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        metadata["continue"] = continue_token
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
            "columnDefinitions": definitions, "rows": rows}
