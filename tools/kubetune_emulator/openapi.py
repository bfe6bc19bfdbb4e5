"""
OpenAPI v3 documents of the served API, as kube-apiserver publishes them: ``/openapi/v3`` (the
index of group-versions) and ``/openapi/v3/apis/<group>/<version>`` (or ``/api/v1``).

What kubectl reads from them, and so what these documents must get right:

* strict validation (``kubectl apply`` with its default ``--validate=strict``): cli-runtime's
  ``queryParamVerifierV3`` looks for a PATCH operation whose ``x-kubernetes-group-version-kind``
  is the object's GVK and which lists a ``fieldValidation`` query parameter. Found: kubectl sends
  ``fieldValidation=Strict`` and leaves unknown fields to the server. Not found: it falls back to
  client-side validation with /openapi/v2 (protobuf), which the emulator does not serve -- hence
  every served group-version is in the index and every resource has its PATCH operation;
* ``kubectl explain``: the component schema carrying the GVK in ``x-kubernetes-group-version-kind``;
* ``kubectl apply`` to an existing object: a strategic merge patch from the schema when the PATCH
  operation accepts ``application/strategic-merge-patch+json``. Built-in kinds are published with a
  permissive schema (no field list, no patch merge keys), so their PATCH operations do not offer it
  and kubectl computes the patch from its compiled-in types, as with any server without OpenAPI.

Custom resources get their CRD version's ``openAPIV3Schema`` (with apiVersion, kind and an
ObjectMeta ``metadata``, as the API server adds them); built-in kinds a permissive schema.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from kubetune_emulator.registry import Registry, ResourceType

META = "io.k8s.apimachinery.pkg.apis.meta.v1"
OBJECT_META, LIST_META = f"{META}.ObjectMeta", f"{META}.ListMeta"
_REF = "#/components/schemas/"
_DOCS = "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"
_CRD_PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")


def _string(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def _string_map(description: str) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": description}


_OWNER_REFERENCE = {
    "type": "object",
    "description": "OwnerReference contains enough information to let you identify an owning object.",
    "required": ["apiVersion", "kind", "name", "uid"],
    "properties": {
        "apiVersion": _string("API version of the referent."),
        "kind": _string("Kind of the referent."),
        "name": _string("Name of the referent."),
        "uid": _string("UID of the referent."),
        "controller": {"type": "boolean", "description": "If true, this reference points to the managing controller."},
        "blockOwnerDeletion": {"type": "boolean", "description": "If true, the owner cannot be deleted from the "
                               "key-value store until this reference is removed (foreground deletion)."},
    },
    "x-kubernetes-map-type": "atomic",
}
# The fields of ObjectMeta (k8s.io/apimachinery meta/v1): the only ones the API server keeps in metadata.
OBJECT_META_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects "
                   "users must create.",
    "properties": {
        "name": _string("Name must be unique within a namespace. Cannot be updated."),
        "generateName": _string("An optional prefix used by the server to generate a unique name, only if the "
                                "name field has not been provided."),
        "namespace": _string("The namespace within which the name must be unique. Cannot be updated."),
        "selfLink": _string("Deprecated: selfLink is a legacy read-only field that is no longer populated."),
        "uid": _string("UID is the unique in time and space value for this object. Populated by the system."),
        "resourceVersion": _string("An opaque value that represents the internal version of this object, used "
                                   "for optimistic concurrency and watches. Populated by the system."),
        "generation": {"type": "integer", "format": "int64",
                       "description": "A sequence number representing a specific generation of the desired state."},
        "creationTimestamp": {"type": "string", "format": "date-time",
                              "description": "The time this object was created. Populated by the system."},
        "deletionTimestamp": {"type": "string", "format": "date-time",
                              "description": "The time after which this resource will be deleted. Set by the "
                                             "server when a graceful deletion is requested."},
        "deletionGracePeriodSeconds": {"type": "integer", "format": "int64", "description": "Seconds allowed "
                                       "for this object to gracefully terminate before it is removed."},
        "labels": _string_map("Map of string keys and values that can be used to organize and categorize "
                              "(scope and select) objects."),
        "annotations": _string_map("An unstructured key value map stored with a resource that may be set by "
                                   "external tools to store and retrieve arbitrary metadata."),
        "ownerReferences": {"type": "array", "items": {"allOf": [{"$ref": _REF + f"{META}.OwnerReference"}]},
                            "description": "List of objects depended by this object.",
                            "x-kubernetes-list-map-keys": ["uid"], "x-kubernetes-list-type": "map",
                            "x-kubernetes-patch-merge-key": "uid", "x-kubernetes-patch-strategy": "merge"},
        "finalizers": {"type": "array", "items": {"type": "string", "default": ""},
                       "description": "Must be empty before the object is deleted from the registry.",
                       "x-kubernetes-list-type": "set", "x-kubernetes-patch-strategy": "merge"},
        "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                          "description": "Maps workflow-id and version to the set of fields that are managed by "
                                         "that workflow."},
    },
}
OBJECT_META_FIELDS = frozenset(OBJECT_META_SCHEMA["properties"])
OWNER_REFERENCE_FIELDS = frozenset(_OWNER_REFERENCE["properties"])
_COMMON = {
    OBJECT_META: OBJECT_META_SCHEMA,
    f"{META}.OwnerReference": _OWNER_REFERENCE,
    LIST_META: {"type": "object", "description": "ListMeta describes metadata that synthetic resources must have.",
                "properties": {"resourceVersion": _string("The version of this list, for watches."),
                               "continue": _string("Set when more items are available (limit/continue)."),
                               "remainingItemCount": {"type": "integer", "format": "int64"}}},
    f"{META}.Status": {"type": "object", "description": "Status is a return value for calls that don't return "
                       "other objects.", "x-kubernetes-preserve-unknown-fields": True},
    f"{META}.DeleteOptions": {"type": "object", "description": "DeleteOptions may be provided when deleting an "
                              "API object.", "x-kubernetes-preserve-unknown-fields": True},
    f"{META}.Patch": {"type": "object", "description": "Patch is provided to give a concrete name and type to the "
                      "Kubernetes PATCH request body."},
}
_QUERY_PARAMETERS = {
    "dryRun": "When present, indicates that modifications should not be persisted.",
    "fieldManager": "A name associated with the actor or entity that is making these changes.",
    "fieldValidation": "How the server handles fields of the request body that the schema does not know: "
                       "Ignore (drop them), Warn (drop them with a warning; the default) or Strict (fail).",
}


def group_versions(registry: Registry) -> dict[str, list[ResourceType]]:
    """The served resource types by OpenAPI path key: ``api/v1`` or ``apis/<group>/<version>``."""
    result: dict[str, list[ResourceType]] = {}
    for rtype in registry:
        key = f"apis/{rtype.group}/{rtype.version}" if rtype.group else f"api/{rtype.version}"
        result.setdefault(key, []).append(rtype)
    return result


def document_hash(doc: dict[str, Any]) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()


def index(registry: Registry) -> dict[str, Any]:
    """``GET /openapi/v3``: one ``serverRelativeURL`` (with a content hash) per group-version."""
    paths = {}
    for key, rtypes in sorted(group_versions(registry).items()):
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={document_hash(document(rtypes))}"}
    return {"paths": paths}


def document(rtypes: Iterable[ResourceType]) -> dict[str, Any]:
    """The OpenAPI v3 document of one group-version."""
    schemas: dict[str, Any] = copy.deepcopy(_COMMON)
    paths: dict[str, Any] = {}
    for rtype in rtypes:
        name = schema_name(rtype.group, rtype.version, rtype.kind)
        schemas[name] = kind_schema(rtype)
        schemas[name + "List"] = _list_schema(rtype, name)
        if rtype.scale is not None:
            scale = schema_name("autoscaling", "v1", "Scale")
            schemas[scale] = {"type": "object", "description": "Scale represents a scaling request for a resource.",
                              "x-kubernetes-preserve-unknown-fields": True,
                              "x-kubernetes-group-version-kind": [_gvk("autoscaling", "v1", "Scale")]}
        paths.update(_paths(rtype, name))
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.34.0-kubetune-emulator"},
            "paths": paths, "components": {"schemas": schemas}}


def schema_name(group: str, version: str, kind: str) -> str:
    """The component name the API server uses: io.k8s.api.<group>.<version>.<Kind> for built-in groups,
    the reversed group for others (io.kubetune.v1alpha1.FineTuneJob)."""
    if not group:
        return f"io.k8s.api.core.{version}.{kind}"
    if group.endswith(".k8s.io") or "." not in group:
        return f"io.k8s.api.{group.split('.')[0]}.{version}.{kind}"
    return ".".join(reversed(group.split("."))) + f".{version}.{kind}"


def _gvk(group: str, version: str, kind: str) -> dict[str, str]:
    return {"group": group, "kind": kind, "version": version}


def _type_meta() -> dict[str, Any]:
    return {
        "apiVersion": _string("APIVersion defines the versioned schema of this representation of an object. "
                              f"More info: {_DOCS}#resources"),
        "kind": _string(f"Kind is a string value representing the REST resource this object represents. "
                        f"More info: {_DOCS}#types-kinds"),
    }


def kind_schema(rtype: ResourceType) -> dict[str, Any]:
    metadata = {"allOf": [{"$ref": _REF + OBJECT_META}], "description": f"Standard object's metadata. "
                f"More info: {_DOCS}#metadata"}
    if rtype.from_crd and rtype.schema:
        schema = copy.deepcopy(rtype.schema)
        schema["properties"] = {**schema.get("properties", {}), **_type_meta(), "metadata": metadata}
    else:
        schema = {"type": "object", "description": f"{rtype.kind} (the emulator publishes no field list for "
                  "built-in kinds).", "properties": {**_type_meta(), "metadata": metadata},
                  "x-kubernetes-preserve-unknown-fields": True}
    schema["x-kubernetes-group-version-kind"] = [_gvk(rtype.group, rtype.version, rtype.kind)]
    return schema


def _list_schema(rtype: ResourceType, item: str) -> dict[str, Any]:
    return {"type": "object", "description": f"{rtype.kind}List is a list of {rtype.kind}", "required": ["items"],
            "properties": {**_type_meta(), "items": {"type": "array", "items": {"$ref": _REF + item}},
                           "metadata": {"allOf": [{"$ref": _REF + LIST_META}]}},
            "x-kubernetes-group-version-kind": [_gvk(rtype.group, rtype.version, rtype.kind + "List")]}


def _paths(rtype: ResourceType, name: str) -> dict[str, Any]:
    prefix = f"/apis/{rtype.group}/{rtype.version}" if rtype.group else f"/api/{rtype.version}"
    scope = f"{prefix}/namespaces/{{namespace}}" if rtype.namespaced else prefix
    collection, item = f"{scope}/{rtype.plural}", f"{scope}/{rtype.plural}/{{name}}"
    verbs = set(rtype.verbs)
    gvk = _gvk(rtype.group, rtype.version, rtype.kind)
    op = _Operations(rtype, gvk)
    paths = {
        collection: op.path(rtype.namespaced, False, get=("list", name + "List") if "list" in verbs else None,
                            post=("post", name) if "create" in verbs else None,
                            delete=("deletecollection", f"{META}.Status") if "deletecollection" in verbs else None),
        item: op.path(rtype.namespaced, True, get=("get", name) if "get" in verbs else None,
                      put=("put", name) if "update" in verbs else None,
                      patch=("patch", name) if "patch" in verbs else None,
                      delete=("delete", f"{META}.Status") if "delete" in verbs else None),
    }
    if rtype.namespaced and "list" in verbs:
        paths[f"{prefix}/{rtype.plural}"] = op.path(False, False, get=("list", name + "List"))
    for sub in sorted(rtype.subresources):
        target = schema_name("autoscaling", "v1", "Scale") if sub == "scale" else name
        sub_op = _Operations(rtype, _gvk("autoscaling", "v1", "Scale") if sub == "scale" else gvk, sub)
        paths[f"{item}/{sub}"] = sub_op.path(rtype.namespaced, True, get=("get", target), put=("put", target),
                                             patch=("patch", target))
    return paths


class _Operations:
    """Builds the operations of one resource path, as the API server describes them."""

    def __init__(self, rtype: ResourceType, gvk: dict[str, str], subresource: str | None = None):
        self.rtype, self.gvk, self.subresource = rtype, gvk, subresource

    def path(self, namespaced: bool, named: bool, **operations: tuple[str, str] | None) -> dict[str, Any]:
        parameters = [{"name": "pretty", "in": "query", "schema": {"type": "string", "uniqueItems": True},
                       "description": "If 'true', then the output is pretty printed."}]
        if named:
            parameters.insert(0, _path_parameter("name", f"name of the {self.rtype.kind}"))
        if namespaced:
            parameters.insert(0, _path_parameter("namespace", "object name and auth scope, such as for teams "
                                                              "and projects"))
        result: dict[str, Any] = {"parameters": parameters}
        for method, spec in operations.items():
            if spec is not None:
                result[method] = self.operation(method, *spec)
        return result

    def operation(self, method: str, action: str, schema: str) -> dict[str, Any]:
        ref = {"schema": {"$ref": _REF + schema}}
        sub = (self.subresource or "").capitalize()
        op: dict[str, Any] = {
            "operationId": f"{action}{_camel(self.rtype.group)}{self.rtype.version.capitalize()}"
                           f"{'Namespaced' if self.rtype.namespaced else ''}{self.rtype.kind}{sub}",
            "tags": [f"{self.rtype.group or 'core'}_{self.rtype.version}"],
            "responses": {"200": {"description": "OK", "content": {"application/json": ref}}},
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": dict(self.gvk),
        }
        if action in ("post", "put", "patch"):
            op["parameters"] = [{"name": key, "in": "query", "description": text, "schema": {"type": "string",
                                 "uniqueItems": True}} for key, text in _QUERY_PARAMETERS.items()]
        if action == "post":
            op["requestBody"] = {"required": True, "content": {"application/json": ref}}
            op["responses"]["201"] = op["responses"]["202"] = op["responses"]["200"]
        elif action == "put":
            op["requestBody"] = {"required": True, "content": {"application/json": ref}}
        elif action == "patch":
            op["parameters"].append({"name": "force", "in": "query", "schema": {"type": "boolean",
                                     "uniqueItems": True}, "description": "Force is going to \"force\" Apply "
                                     "requests. It must be unset for non-apply patch requests."})
            patch_ref = {"schema": {"$ref": _REF + f"{META}.Patch"}}
            op["requestBody"] = {"required": True, "content": {kind: patch_ref for kind in _CRD_PATCH_TYPES}}
        return op


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "uniqueItems": True}}


def _camel(group: str) -> str:
    return "".join(part.capitalize() for part in group.replace("-", ".").split(".")) or "Core"
