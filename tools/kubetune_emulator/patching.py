"""
The four patch flavours of the Kubernetes API, applied to plain dicts.

* JSON patch (RFC 6902) via ``jsonpatch``; a failing ``test`` op is reported by the caller as 422.
* JSON merge patch (RFC 7386): dicts merge, ``null`` deletes, lists are replaced.
* Strategic merge patch: a merge patch that also merges lists of dicts by their well-known
  merge key (``name`` for containers/env/volumes, ``type`` for conditions, ...), unions
  ``finalizers`` and honours the ``$patch``/``$setElementOrder``/``$deleteFromPrimitiveList``
  directives that ``kubectl apply`` sends. No OpenAPI schema is consulted.
* Server-side apply: a strategic merge after fieldmanager.py removed what the manager no longer applies.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import jsonpatch
import jsonpointer

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
APPLY_PATCH_CBOR = "application/apply-patch+cbor"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)

# The patchMergeKey of list fields in the built-in types that operators commonly touch.
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "volumes": ("name",),
    "env": ("name",),
    "imagePullSecrets": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "ports": ("containerPort", "port"),
    "conditions": ("type",),
    "ownerReferences": ("uid",),
    "hostAliases": ("ip",),
    "topologySpreadConstraints": ("topologyKey",),
    "resourceClaims": ("name",),
}
# List-of-scalars fields with ``patchStrategy: merge`` (a union rather than a replacement).
UNION_LISTS = {"finalizers"}


class PatchTestFailed(Exception):
    """A JSON-patch ``test`` op did not hold, or a path did not exist."""


def json_patch(obj: Mapping[str, Any], ops: Any) -> dict[str, Any]:
    if not isinstance(ops, list):
        raise ValueError("a JSON patch must be a list of operations")
    try:
        return jsonpatch.apply_patch(copy.deepcopy(dict(obj)), ops, in_place=True)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise PatchTestFailed(str(exc)) from exc
    except (jsonpatch.JsonPatchConflict, jsonpointer.JsonPointerException) as exc:
        raise PatchTestFailed(str(exc)) from exc
    except jsonpatch.InvalidJsonPatch as exc:
        raise ValueError(str(exc)) from exc


def merge_patch(obj: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(obj) if isinstance(obj, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(obj: Any, patch: Any) -> Any:
    """A practical subset of the strategic merge patch (see the module docstring)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(obj) if isinstance(obj, Mapping) else {}
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
        elif key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [item for item in result.get(field) or [] if item not in value]
        elif key.startswith("$"):
            continue  # $retainKeys and other directives: nothing to keep in the object
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        elif isinstance(value, Mapping):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = value
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _reorder(field, result[field], order)
    return result


def _merge_key(field: str, items: list[Any]) -> str | None:
    for key in MERGE_KEYS.get(field, ()):
        if items and all(isinstance(item, Mapping) and key in item for item in items):
            return key
    return None


def _merge_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    current_list = current if isinstance(current, list) else []
    if field in UNION_LISTS and all(not isinstance(item, (Mapping, list)) for item in patch):
        return current_list + [item for item in patch if item not in current_list]
    key = _merge_key(field, patch)
    if key is None or (current_list and _merge_key(field, current_list) != key):
        return [strategic_merge_patch(None, item) if isinstance(item, Mapping) else item for item in patch]
    result = [dict(item) for item in current_list]
    for item in patch:
        index = next((i for i, existing in enumerate(result) if existing.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(strategic_merge_patch(None, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _reorder(field: str, items: list[Any], order: list[Any]) -> list[Any]:
    key = _merge_key(field, order) if order and isinstance(order[0], Mapping) else None

    def identity(item: Any) -> Any:
        return item.get(key) if key is not None and isinstance(item, Mapping) else item

    ranks = {repr(identity(item)): rank for rank, item in enumerate(order)}
    return sorted(items, key=lambda item: ranks.get(repr(identity(item)), len(ranks)))


def apply_patch(obj: Mapping[str, Any], content_type: str, patch: Any) -> dict[str, Any]:
    """Apply a patch of the given content type; raises ``ValueError`` / ``PatchTestFailed``."""
    if content_type == JSON_PATCH:
        return json_patch(obj, patch)
    if not isinstance(patch, Mapping):
        raise ValueError(f"a {content_type} patch must be a JSON object")
    if content_type == MERGE_PATCH:
        return merge_patch(obj, patch)
    return strategic_merge_patch(obj, patch)
