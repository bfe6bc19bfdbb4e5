"""
Which resources the emulated API serves, and the discovery documents that describe them.

Built-in resources come from kmock's bundled discovery data (a recent K3s cluster);
custom resources are added and removed as their CustomResourceDefinitions come and go.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
from collections.abc import Iterable, Mapping
from typing import Any

import kmock

CRD_GROUP = "apiextensions.k8s.io"
CRD_PLURAL = "customresourcedefinitions"

# Built-in kinds that carry metadata.generation in a real cluster (all custom resources do too).
_GENERATION_KINDS = {
    "Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob", "Service",
    "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
    "CustomResourceDefinition", "PersistentVolumeClaim", "PersistentVolume",
}
# Scale subresource paths of the built-in scalable kinds.
_BUILTIN_SCALE = {
    "deployments": (".spec.replicas", ".status.replicas", ".spec.selector"),
    "replicasets": (".spec.replicas", ".status.replicas", ".spec.selector"),
    "statefulsets": (".spec.replicas", ".status.replicas", ".spec.selector"),
}
_DEFAULT_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_SKIPPED_GROUPS = {"metrics.k8s.io"}  # aggregated APIs that nobody could serve here


@dataclasses.dataclass
class ResourceType:
    """One served resource: a (group, version, plural) with its discovery details."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    verbs: list[str] = dataclasses.field(default_factory=lambda: list(_DEFAULT_VERBS))
    short_names: list[str] = dataclasses.field(default_factory=list)
    categories: list[str] = dataclasses.field(default_factory=list)
    subresources: set[str] = dataclasses.field(default_factory=set)
    has_generation: bool = False
    # (specReplicasPath, statusReplicasPath, labelSelectorPath) when the scale subresource exists.
    scale: tuple[str, str, str | None] | None = None
    printer_columns: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    from_crd: bool = False
    schema: dict[str, Any] | None = None  # a CRD version's openAPIV3Schema

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> tuple[str, str]:
        """The storage key: objects are shared across all versions of one group+plural."""
        return (self.group, self.plural)

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    def discovery_entries(self) -> list[dict[str, Any]]:
        main: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        entries = [main]
        for sub in sorted(self.subresources):
            sub_kind = "Scale" if sub == "scale" else self.kind
            entries.append({
                "name": f"{self.plural}/{sub}",
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": sub_kind,
                "verbs": ["get", "patch", "update"],
                **({"group": "autoscaling", "version": "v1"} if sub == "scale" else {}),
            })
        return entries


class Registry:
    """Resource types by (group, version, plural), kept in discovery order."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._preferred: dict[tuple[str, str], ResourceType] = {}

    def load_builtins(self) -> None:
        bundled = kmock.ResourcesArray()  # kmock's load_bundled(), minus its DeprecationWarning
        data = importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
        bundled.load_data(gzip.decompress(data))
        for resource in bundled:
            if resource.group in _SKIPPED_GROUPS:
                continue
            info = bundled[resource]
            verbs = sorted(info.verbs) if info.verbs else list(_DEFAULT_VERBS)
            if not {"get", "list", "create"} & set(verbs):
                continue  # review-style and virtual resources (tokenreviews, bindings)
            kind = info.kind or resource.plural.capitalize()
            scale = _BUILTIN_SCALE.get(resource.plural) if "scale" in info.subresources else None
            self.add(ResourceType(
                group=resource.group or "",
                version=resource.version,
                plural=resource.plural,
                kind=kind,
                singular=info.singular or kind.lower(),
                namespaced=bool(info.namespaced),
                verbs=verbs,
                short_names=sorted(info.shortnames),
                categories=sorted(info.categories),
                subresources={sub for sub in info.subresources if sub in ("status", "scale")},
                has_generation=kind in _GENERATION_KINDS,
                scale=scale,
            ))

    def add(self, rtype: ResourceType) -> None:
        self._types[(rtype.group, rtype.version, rtype.plural)] = rtype
        self._preferred.setdefault(rtype.group_resource, rtype)

    def remove_group_resource(self, group: str, plural: str) -> None:
        for key in [key for key in self._types if key[0] == group and key[2] == plural]:
            del self._types[key]
        self._preferred.pop((group, plural), None)

    def preferred(self, group: str, plural: str) -> ResourceType | None:
        """The first-registered (preferred) version of a group-resource."""
        return self._preferred.get((group, plural))

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def __iter__(self) -> Iterable[ResourceType]:
        return iter(list(self._types.values()))

    def find(self, name: str) -> ResourceType | None:
        """Find by kind, plural, singular or short name (case-insensitive), preferred version first."""
        lowered = name.lower()
        for rtype in self._types.values():
            names = {rtype.kind.lower(), rtype.plural, rtype.singular, *rtype.short_names}
            if lowered in names:
                return rtype
        return None

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        for rtype in self._types.values():
            if rtype.group == group and rtype.version == version and rtype.kind == kind:
                return rtype
        return None

    def versions_of(self, group: str) -> list[str]:
        versions: list[str] = []
        for rtype in self._types.values():
            if rtype.group == group and rtype.version not in versions:
                versions.append(rtype.version)
        return versions

    # Discovery documents ---------------------------------------------------------------------

    def api_versions(self) -> dict[str, Any]:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}

    def api_group(self, group: str) -> dict[str, Any] | None:
        versions = self.versions_of(group)
        if not versions or not group:
            return None
        entries = [{"groupVersion": f"{group}/{version}", "version": version} for version in versions]
        return {"apiVersion": "v1", "kind": "APIGroup", "name": group,
                "versions": entries, "preferredVersion": entries[0]}

    def api_group_list(self) -> dict[str, Any]:
        groups: list[str] = []
        for rtype in self._types.values():
            if rtype.group and rtype.group not in groups:
                groups.append(rtype.group)
        docs = [self.api_group(group) for group in groups]
        for doc in docs:
            assert doc is not None
            doc.pop("apiVersion")
            doc.pop("kind")
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": docs}

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        rtypes = [r for r in self._types.values() if r.group == group and r.version == version]
        if not rtypes:
            return None
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [entry for rtype in rtypes for entry in rtype.discovery_entries()],
        }


def resource_types_from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    """Translate an ``apiextensions.k8s.io/v1`` CustomResourceDefinition into served resource types."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group") or ""
    plural = names.get("plural") or ""
    kind = names.get("kind") or ""
    if not group or not plural or not kind:
        return []
    versions = [v for v in spec.get("versions") or [] if v.get("served", True)]
    versions.sort(key=lambda v: not v.get("storage", False))  # the storage version is preferred
    result = []
    for version in versions:
        subresources = version.get("subresources") or {}
        scale = subresources.get("scale")
        result.append(ResourceType(
            group=group,
            version=version["name"],
            plural=plural,
            kind=kind,
            singular=names.get("singular") or kind.lower(),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            short_names=list(names.get("shortNames") or []),
            categories=list(names.get("categories") or []),
            subresources={name for name in ("status", "scale") if name in subresources},
            has_generation=True,
            scale=(scale["specReplicasPath"], scale["statusReplicasPath"], scale.get("labelSelectorPath"))
            if scale else None,
            printer_columns=list(version.get("additionalPrinterColumns") or []),
            from_crd=True,
            schema=(version.get("schema") or {}).get("openAPIV3Schema"),
        ))
    return result
