"""
Server-side apply's field ownership (structured-merge-diff), simplified to what controllers rely on.

What the real API server does and this module does too (https://kubernetes.io/docs/reference/using-api/server-side-apply/):

* an apply (``application/apply-patch+yaml``) needs ``fieldManager`` (422 otherwise);
* the manager then owns exactly the fields of its applied configuration, recorded in
  ``metadata.managedFields`` (``operation: Apply``, ``fieldsType: FieldsV1``, the ``f:``/``k:``/``.``
  encoding);
* fields the manager applied before and leaves out of its next apply are removed from the object,
  unless another manager's Apply also owns them ("a field removed from the applied configuration is
  deleted if no other manager owns it"); a list item keyed by its merge key (containers and env by
  ``name``, ports by ``port``/``containerPort``, ...) goes as a whole when its key is left out;
* fields nobody applied (server defaults, another client's additions) are left alone.

* an Update of the scale subresource (``kubectl scale``, a HorizontalPodAutoscaler) that changes the replicas
  records an ``operation: Update, subresource: scale`` entry for its manager (``fieldManager``, else the
  user agent's product), which then owns the replicas field; the previous owners lose it (``take_over``).
  So an applier that stops applying replicas leaves them to the autoscaler, as the API server does
  ("Transferring ownership" in the documentation above).

Deviations: other Updates (PUT/POST/other PATCH) record no managedFields entry, so they neither share nor
steal ownership, and there are no conflicts: every apply behaves as ``force=true`` (what kubetune's
operator sends).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from kubetune_emulator.patching import _merge_key, strategic_merge_patch
from kubetune_emulator.validation import now

Path = tuple[str, ...]  # "f:name" / "k:{json}" elements, as in FieldsV1
IDENTITY = {("f:apiVersion",), ("f:kind",), ("f:metadata",), ("f:metadata", "f:name"), ("f:metadata", "f:namespace")}


def field_set(value: Any, prefix: Path = (), field: str | None = None) -> set[Path]:
    """Every field path an applied configuration sets (a map item's path and those under it)."""
    out: set[Path] = set()
    if isinstance(value, Mapping):
        for key, sub in value.items():
            path = prefix + (f"f:{key}",)
            out.add(path)
            out |= field_set(sub, path, key)
    elif isinstance(value, list) and field is not None:
        key = _merge_key(field, value)
        if key is not None:  # a map list: items owned by their key; an atomic list is one leaf
            for item in value:
                path = prefix + ("k:" + json.dumps({key: item[key]}, sort_keys=True),)
                out.add(path)
                out |= field_set({k: v for k, v in item.items() if k != key}, path)
    return out - IDENTITY if not prefix else out


def encode(paths: set[Path]) -> dict[str, Any]:
    """FieldsV1: nested maps of path elements, "." marking a map item that is owned itself."""
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for element in path:
            node = node.setdefault(element, {})
        if path[-1].startswith("k:"):
            node.setdefault(".", {})
    return tree


def decode(tree: Mapping[str, Any], prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for element, sub in tree.items():
        if element == ".":
            continue
        path = prefix + (element,)
        out.add(path)
        out |= decode(sub or {}, path)
    return out


def owned(obj: Mapping[str, Any], manager: str, *, others: bool = False) -> set[Path]:
    """The fields `manager`'s Apply owns (or, with `others`, every other manager's, by Apply or Update)."""
    out: set[Path] = set()
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        mine = entry.get("operation") == "Apply" and entry.get("manager") == manager
        if mine != others and (others or entry.get("operation") == "Apply"):
            out |= decode(entry.get("fieldsV1") or {})
    return out


def take_over(obj: Mapping[str, Any], manager: str, path: Path, subresource: str) -> list[dict[str, Any]]:
    """managedFields after `manager` changed the field at `path` by an Update of `subresource`: the field is its
    own (an ``operation: Update`` entry), no longer anyone else's (an entry left owning nothing is dropped)."""
    entries = []
    for entry in [dict(e) for e in (obj.get("metadata") or {}).get("managedFields") or []]:
        if entry.get("operation") == "Update" and entry.get("manager") == manager and entry.get("subresource") == subresource:
            continue
        paths = {p for p in decode(entry.get("fieldsV1") or {}) if p[:len(path)] != path}
        if paths:
            entries.append(dict(entry, fieldsV1=encode(paths)))
    prefixes = {path[:i] for i in range(1, len(path) + 1)}
    return [*entries, {"manager": manager, "operation": "Update", "apiVersion": obj.get("apiVersion"), "time": now(),
                       "fieldsType": "FieldsV1", "fieldsV1": encode(prefixes), "subresource": subresource}]


def _remove(obj: Any, path: Path) -> None:
    node = obj
    for element in path[:-1]:
        node = _child(node, element)
        if node is None:
            return
    last = path[-1]
    if isinstance(node, dict) and last.startswith("f:"):
        node.pop(last[2:], None)
    elif isinstance(node, list) and last.startswith("k:"):
        key = json.loads(last[2:])
        node[:] = [item for item in node if not (isinstance(item, Mapping) and all(item.get(k) == v for k, v in key.items()))]


def _child(node: Any, element: str) -> Any:
    if isinstance(node, dict) and element.startswith("f:"):
        return node.get(element[2:])
    if isinstance(node, list) and element.startswith("k:"):
        key = json.loads(element[2:])
        return next((item for item in node if isinstance(item, dict) and all(item.get(k) == v for k, v in key.items())), None)
    return None


def apply(old: Mapping[str, Any], config: Mapping[str, Any], manager: str) -> dict[str, Any]:
    """The object after `manager` applies `config` to `old`, with its managedFields entry updated."""
    applied = field_set(config)
    result = copy.deepcopy(dict(old))
    for path in sorted(owned(old, manager) - applied - owned(old, manager, others=True) - IDENTITY, key=len):
        _remove(result, path)
    result = strategic_merge_patch(result, {k: v for k, v in config.items() if k != "status"} if "status" in config else config)
    result["metadata"] = dict(result.get("metadata") or {}, managedFields=record(old, manager, applied, config))
    return result


def record(old: Mapping[str, Any] | None, manager: str, applied: set[Path], config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """managedFields with `manager`'s Apply entry set to `applied` (its time kept when the set did not change)."""
    entries = [dict(e) for e in ((old or {}).get("metadata") or {}).get("managedFields") or []]
    mine = next((e for e in entries if e.get("manager") == manager and e.get("operation") == "Apply"), None)
    fields = encode(applied)
    if mine is not None and mine.get("fieldsV1") == fields:
        return entries
    entry = {"manager": manager, "operation": "Apply", "apiVersion": config.get("apiVersion"), "time": now(),
             "fieldsType": "FieldsV1", "fieldsV1": fields}
    return [entry if e is mine else e for e in entries] if mine is not None else [*entries, entry]
