"""Parsing Kubernetes API paths, and the thread-safe record of every request the emulator served."""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class ApiPath:
    """A resource path: ``/api/v1/namespaces/ns/pods/name/status`` and the like."""

    group: str
    version: str | None  # None for /apis/<group>
    plural: str | None  # None for discovery of a group-version
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    legacy_watch: bool = False  # the deprecated /api/v1/watch/... form


def parse_api_path(path: str) -> ApiPath | None:
    parts = [part for part in path.strip("/").split("/") if part]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 2 and parts[0] == "apis":
        if len(parts) == 2:
            return ApiPath(group=parts[1], version=None, plural=None)
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    legacy_watch = bool(rest) and rest[0] == "watch"
    if legacy_watch:
        rest = rest[1:]
    namespace = None
    if rest[:1] == ["namespaces"] and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return ApiPath(group=group, version=version, plural=None, legacy_watch=legacy_watch)
    return ApiPath(
        group=group,
        version=version,
        plural=rest[0],
        namespace=namespace,
        name=rest[1] if len(rest) >= 2 else None,
        subresource="/".join(rest[2:]) or None,
        legacy_watch=legacy_watch,
    )


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # Go's strconv.ParseBool, as the API server parses flags


def is_true(value: str | None) -> bool:
    return value in _TRUE


def k8s_verb(method: str, path: ApiPath | None, query: Mapping[str, str]) -> str | None:
    """The Kubernetes verb of a request, as RBAC and audit logs name it."""
    if path is None or path.plural is None:
        return None
    watching = path.legacy_watch or is_true(query.get("watch"))
    if method == "GET":
        return "watch" if watching else ("get" if path.name else "list")
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if path.name else "deletecollection"
    return method.lower()


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request served by the emulator."""

    method: str
    path: str
    query: Mapping[str, str]
    verb: str | None = None  # get/list/watch/create/update/patch/delete/deletecollection; None if not a resource
    resource: str | None = None  # "jobs.batch", "pods", "finetunejobs.kubetune.ai"
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    user: str | None = None  # the authenticated user when RBAC is on


class RequestLog:
    """Append-only (until reset) list of requests; safe to read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[RecordedRequest] = []

    def add(self, item: RecordedRequest) -> None:
        with self._lock:
            self._items.append(item)

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._items)

    def reset(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def counts(self) -> dict[tuple[str | None, str | None], int]:
        """Requests per (verb, resource), e.g. ``{("patch", "finetunejobs.kubetune.ai"): 3}``."""
        return dict(collections.Counter((item.verb, item.resource) for item in self.snapshot()))
