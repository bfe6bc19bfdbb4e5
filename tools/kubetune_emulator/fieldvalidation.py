"""
Server-side field validation (the ``fieldValidation`` query parameter of create, update and patch),
with the API server's responses, as found in its source (k8s.io/apiserver endpoints/handlers,
apiextensions-apiserver customresource_handler.go, structured-merge-diff):

* unknown fields: those the CRD schema prunes (sorted, as ``pruning.PruneWithOptions`` returns
  them), preceded by fields ObjectMeta does not have (``metadata.x``; for every kind);
* ``Strict``: create/update (PUT) fail with 400 BadRequest ``FineTuneJob in version "v1alpha1"
  cannot be handled as a FineTuneJob: strict decoding error: unknown field "spec.x"``
  (``transformDecodeError``); merge/JSON/strategic patches fail with 422 Invalid (empty kind and
  name) whose one cause is ``patch: Invalid value: "<patched object>": strict decoding error: ...``;
* ``Warn`` (also the default when the parameter is absent, as ``fieldValidation("")`` answers):
  the request succeeds, the fields are dropped, and each one is reported in a ``Warning: 299 -
  "unknown field \\"spec.x\\""`` response header (kubectl prints them);
* ``Ignore``: dropped silently;
* server-side apply rejects unknown fields whatever the directive: structured-merge-diff's typed
  conversion fails, which kube-apiserver 1.34 serves as a 500 with ``failed to create typed patch
  object (ns/name; group/version, Kind=K): .spec.x: field not declared in schema``
  (kubernetes/kubernetes#139253 asks for a 400).

Built-in kinds have no schema here, so only their metadata is checked.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from kubetune_emulator import errors
from kubetune_emulator.openapi import OBJECT_META_FIELDS, OWNER_REFERENCE_FIELDS
from kubetune_emulator.registry import ResourceType

IGNORE, WARN, STRICT = "Ignore", "Warn", "Strict"
_ROOT_FIELDS = ("apiVersion", "kind", "metadata")


@dataclasses.dataclass
class FieldValidation:
    """One request's directive, and the warnings its write collected (for ``Warning`` headers)."""

    directive: str = WARN
    warnings: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def from_query(cls, query: Mapping[str, str], options_kind: str) -> FieldValidation:
        """``options_kind``: CreateOptions, UpdateOptions or PatchOptions (named in the 422 for a bad value)."""
        value = query.get("fieldValidation") or WARN
        if value not in (IGNORE, WARN, STRICT):
            why = (f'fieldValidation: Unsupported value: "{value}": supported values: '
                   f'"{IGNORE}", "{STRICT}", "{WARN}"')
            raise errors.invalid("meta.k8s.io", options_kind, None, why, kind=options_kind)
        return cls(directive=value)

    def warning_headers(self) -> list[str]:
        return [f"299 - {json.dumps(text)}" for text in self.warnings]

    def _unknown(self, paths: list[str]) -> list[str]:
        """The strict-decoding messages to fail with (Strict), or [] after noting them as warnings (Warn)."""
        messages = [f'unknown field "{path}"' for path in paths]
        if self.directive == WARN:
            self.warnings.extend(messages)
        return messages if self.directive == STRICT else []

    def check_decoded(self, rtype: ResourceType, body: Any, *, schema: bool = True) -> None:
        """A create or update (PUT) body, as decoded before anything else is looked at."""
        if not isinstance(body, Mapping):
            return
        messages = self._unknown(unknown_fields(rtype, body, schema=schema))
        if messages:
            api_version = str(body.get("apiVersion") or rtype.group_version)
            kind = str(body.get("kind") or rtype.kind)
            raise errors.bad_request(f"{kind} in version \"{api_version.rpartition('/')[2]}\" cannot be handled "
                                     f"as a {rtype.kind}: strict decoding error: {', '.join(messages)}")

    def check_patched(self, rtype: ResourceType, patched: Mapping[str, Any], *, schema: bool = True) -> None:
        """The object a merge, JSON or strategic merge patch produced from the stored one."""
        messages = self._unknown(unknown_fields(rtype, patched, schema=schema))
        if messages:
            shown = json.dumps(json.dumps(patched, sort_keys=True, separators=(",", ":")))
            detail = f"strict decoding error: {', '.join(messages)}"
            cause = {"reason": "FieldValueInvalid", "message": f"Invalid value: {shown}: {detail}", "field": "patch"}
            raise errors.ApiError(422, "Invalid", f' "" is invalid: patch: Invalid value: {shown}: {detail}',
                                  {"causes": [cause]})

    @staticmethod
    def check_applied(rtype: ResourceType, patch: Any, namespace: str | None, name: str, *,
                      schema: bool = True) -> None:
        """A server-side apply configuration (checked whatever the directive)."""
        if not isinstance(patch, Mapping):
            return
        walked = _walk(patch, rtype.schema, (), root=True, first_only=True) if schema else []
        paths = _metadata_unknowns(patch.get("metadata"), smd=True) + [_smd_path(path) for path in walked]
        if paths:
            what = f"{namespace or ''}/{name}; {rtype.group}/{rtype.version}, Kind={rtype.kind}"
            detail = (paths[0] if len(paths) == 1
                      else "errors:\n" + "\n".join(f"  {path}" for path in paths))
            raise errors.ApiError(500, "", f"failed to create typed patch object ({what}): {detail}")


def unknown_fields(rtype: ResourceType, obj: Mapping[str, Any], *, schema: bool = True) -> list[str]:
    """The API server's unknown-field paths: metadata ones first, then the schema's, sorted."""
    found = _metadata_unknowns(obj.get("metadata"))
    if schema and rtype.schema:
        found += sorted(_strict_path(path) for path in _walk(obj, rtype.schema, (), root=True))
    return found


def drop_unknown_metadata(meta: Any) -> dict[str, Any]:
    """ObjectMeta as the API server stores it: fields it does not have (here or in ownerReferences) are gone."""
    if not isinstance(meta, Mapping):
        raise errors.bad_request("metadata must be an object")
    result = {key: value for key, value in meta.items() if key in OBJECT_META_FIELDS}
    if isinstance(result.get("ownerReferences"), list):
        result["ownerReferences"] = [
            {key: value for key, value in ref.items() if key in OWNER_REFERENCE_FIELDS} if isinstance(ref, Mapping)
            else ref for ref in result["ownerReferences"]]
    return result


def _metadata_unknowns(meta: Any, *, smd: bool = False) -> list[str]:
    if not isinstance(meta, Mapping):
        return []
    paths = [f"metadata.{key}" for key in meta if key not in OBJECT_META_FIELDS]
    refs = meta.get("ownerReferences")
    for index, ref in enumerate(refs if isinstance(refs, list) else []):
        if isinstance(ref, Mapping):
            paths += [f"metadata.ownerReferences[{index}].{key}" for key in ref if key not in OWNER_REFERENCE_FIELDS]
    if smd:
        return [f".{path}: field not declared in schema" for path in paths]
    return paths


def _walk(value: Any, schema: Any, path: tuple[Any, ...], *, root: bool = False,
          first_only: bool = False) -> list[tuple[Any, ...]]:
    """Paths of the fields that ``schemas.prune`` drops: map keys, and (index, list-map keys or None)."""
    if not isinstance(schema, Mapping):
        return []
    if isinstance(value, list):
        items, keys = schema.get("items"), schema.get("x-kubernetes-list-map-keys")
        found = []
        for index, item in enumerate(value):
            key = {k: item.get(k) for k in keys} if keys and isinstance(item, Mapping) else None
            found += _walk(item, items, (*path, (index, key)), first_only=first_only)
        return found
    if not isinstance(value, Mapping):
        return []
    properties = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or additional is True
    embedded = root or schema.get("x-kubernetes-embedded-resource")
    found: list[tuple[Any, ...]] = []
    unknown: list[tuple[Any, ...]] = []
    for key in sorted(value):
        if embedded and key in _ROOT_FIELDS:
            continue
        if key in properties:
            found += _walk(value[key], properties[key], (*path, key), first_only=first_only)
        elif isinstance(additional, Mapping):
            found += _walk(value[key], additional, (*path, key), first_only=first_only)
        elif not keep_unknown:
            unknown.append((*path, key))
    return found + (unknown[:1] if first_only else unknown)


def _strict_path(path: tuple[Any, ...]) -> str:
    """As apiextensions' pruning writes it: spec.items[0].name."""
    text = ""
    for step in path:
        if isinstance(step, str):
            text += f".{step}" if text else step
        else:
            text += f"[{step[0]}]"
    return text


def _smd_path(path: tuple[Any, ...]) -> str:
    """As structured-merge-diff writes it: .spec.items[name="a"].x: field not declared in schema."""
    text = ""
    for step in path:
        if isinstance(step, str):
            text += f".{step}"
        elif step[1] is None:
            text += f"[{step[0]}]"
        else:
            text += "[" + ",".join(f"{key}={json.dumps(value)}" for key, value in sorted(step[1].items())) + "]"
    return f"{text}: field not declared in schema"
