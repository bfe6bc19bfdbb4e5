"""Object metadata checks that the real API server enforces (names, labels, owner references)."""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Any

from kubetune_emulator.errors import ApiError, bad_request, invalid
from kubetune_emulator.registry import ResourceType

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL_KINDS = {"namespaces", "services"}
_OWNER_FIELDS = ("apiVersion", "kind", "name", "uid")


def now() -> str:
    """The current time in the API's RFC 3339 form with second precision."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_name(rtype: ResourceType, name: str) -> str | None:
    if rtype.plural in _DNS_LABEL_KINDS:
        if len(name) > 63 or not _DNS_LABEL.match(name):
            return ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                    "or '-', and must start and end with an alphanumeric character")
    elif rtype.group != "rbac.authorization.k8s.io":  # RBAC names may hold colons (system:...)
        if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            return ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                    "'-' or '.', and must start and end with an alphanumeric character")
    return None


def _check_qualified(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
                "and end with an alphanumeric character (at most 63 characters)")
    return None


def _string_map(meta: Mapping[str, Any], field: str) -> Mapping[str, Any]:
    value = meta.get(field)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise bad_request(f"metadata.{field} must be a map of strings to strings")
    return value


def validate_object(rtype: ResourceType, obj: Mapping[str, Any]) -> None:
    """Raise 400/422 the way the API server does for malformed metadata."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise bad_request("Object 'metadata' is missing or is not an object")
    name = meta.get("name") or ""
    errors: list[str] = []
    if (why := _check_name(rtype, name)) is not None:
        errors.append(f"metadata.name: Invalid value: {name!r}: {why}")
    for key, value in _string_map(meta, "labels").items():
        if (why := _check_qualified(key)) is not None:
            errors.append(f"metadata.labels: Invalid value: {key!r}: {why}")
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            errors.append(f"metadata.labels: Invalid value: {value!r}: a valid label must be an empty string "
                          "or consist of alphanumeric characters, '-', '_' or '.' (at most 63 characters)")
    for key in _string_map(meta, "annotations"):
        if (why := _check_qualified(key)) is not None:
            errors.append(f"metadata.annotations: Invalid value: {key!r}: {why}")
    for index, ref in enumerate(meta.get("ownerReferences") or []):
        missing = [field for field in _OWNER_FIELDS if not (isinstance(ref, Mapping) and ref.get(field))]
        if missing:
            errors.append(f"metadata.ownerReferences[{index}]: Required value: {', '.join(missing)} must be set")
    refs = meta.get("ownerReferences") or []
    controllers = [ref for ref in refs if isinstance(ref, Mapping) and ref.get("controller")]
    if len(controllers) > 1:
        errors.append("metadata.ownerReferences: Invalid value: only one reference can have Controller set to true")
    finalizers = meta.get("finalizers") or []
    if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
        errors.append("metadata.finalizers: Invalid value: must be a list of strings")
    if errors:
        raise invalid(rtype.group, rtype.plural, name, "; ".join(errors), kind=rtype.kind)


def validate_crd(crd: Mapping[str, Any]) -> ApiError | None:
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural = spec.get("group"), names.get("plural")
    name = (crd.get("metadata") or {}).get("name")
    problems: list[str] = []
    if not group:
        problems.append("spec.group: Required value")
    if not plural or not names.get("kind"):
        problems.append("spec.names: Required value: plural and kind must be specified")
    if group and plural and name != f"{plural}.{group}":
        problems.append(f"metadata.name: Invalid value: {name!r}: must be spec.names.plural+\".\"+spec.group")
    versions = spec.get("versions") or []
    if not versions:
        problems.append("spec.versions: Invalid value: must have at least one version")
    elif sum(1 for v in versions if v.get("storage")) != 1:
        problems.append("spec.versions: Invalid value: must have exactly one version marked as storage version")
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        problems.append("spec.scope: Unsupported value: supported values: \"Cluster\", \"Namespaced\"")
    if problems:
        return invalid("apiextensions.k8s.io", "customresourcedefinitions", name, "; ".join(problems),
                       kind="CustomResourceDefinition")
    return None
