"""
The emulated cluster state: objects, resourceVersions, the event log and the write semantics.

Everything here is synchronous and runs on the emulator's event loop only, so every write
is atomic. Objects are never mutated in place after they are stored: each write stores a
new dict, so event-log entries and watch events can share references safely.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import random
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubetune_emulator import errors, fieldmanager, lifecycle, schemas
from kubetune_emulator.fieldvalidation import FieldValidation, drop_unknown_metadata
from kubetune_emulator.patching import APPLY_PATCH, JSON_PATCH, PatchTestFailed, apply_patch
from kubetune_emulator.registry import ResourceType, Registry
from kubetune_emulator.selectors import Matcher
from kubetune_emulator.validation import now, validate_object

GroupResource = tuple[str, str]  # (group, plural): one storage for all versions
ObjectKey = tuple[str, str]  # (namespace or "", name)

EVENT_LOG_LIMIT = 20_000  # per group-resource; older resourceVersions get "410 Gone" on watch
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_SERVER_MANAGED = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")


@dataclasses.dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict[str, Any]
    prev: dict[str, Any] | None


class Store:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.rv = 0
        self.objects: dict[GroupResource, dict[ObjectKey, dict[str, Any]]] = collections.defaultdict(dict)
        self.uids: dict[str, tuple[GroupResource, ObjectKey]] = {}
        self.logs: dict[GroupResource, collections.deque[Event]] = collections.defaultdict(
            lambda: collections.deque(maxlen=EVENT_LOG_LIMIT))
        self.floors: dict[GroupResource, int] = collections.defaultdict(int)
        self.watchers: dict[GroupResource, set[Callable[[Event], None]]] = collections.defaultdict(set)
        self.listeners: list[Callable[[ResourceType, Event], None]] = []  # e.g. the kmock mirror
        self.check_schemas = True  # prune, default and validate custom resources by their CRD schema
        # Admission checks run on every write that would commit, dry runs included: fn(rtype, new, old or None).
        self.admission: list[Callable[[ResourceType, dict[str, Any], dict[str, Any] | None], None]] = []

    # Reading ----------------------------------------------------------------------------------

    def rtype_for(self, gr: GroupResource) -> ResourceType | None:
        return self.registry.preferred(*gr)

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.objects[rtype.group_resource].get(self._key(rtype, namespace, name))
        if obj is None:
            raise errors.not_found(rtype.group, rtype.plural, name)
        return obj

    def find(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects[rtype.group_resource].get(self._key(rtype, namespace, name))

    def list(self, rtype: ResourceType, namespace: str | None, matcher: Matcher | None = None,
             ) -> list[dict[str, Any]]:
        bucket = self.objects[rtype.group_resource]
        keys = sorted(key for key in bucket if namespace is None or not rtype.namespaced or key[0] == namespace)
        items = [bucket[key] for key in keys]
        return [obj for obj in items if matcher is None or matcher(obj)]

    def iter_all(self) -> Iterator[tuple[GroupResource, ObjectKey, dict[str, Any]]]:
        for gr, bucket in list(self.objects.items()):
            for key, obj in list(bucket.items()):
                yield gr, key, obj

    def events_since(self, rtype: ResourceType, rv: int) -> list[Event]:
        gr = rtype.group_resource
        if rv < self.floors[gr]:
            raise errors.gone(f"too old resource version: {rv} ({self.floors[gr]})")
        return [event for event in self.logs[gr] if event.rv > rv]

    # Writing ----------------------------------------------------------------------------------

    def create(self, rtype: ResourceType, namespace: str | None, body: Any, *, dry_run: bool = False,
               validation: FieldValidation | None = None, managed: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """`validation`: the request's fieldValidation (None: in-process, unknown fields dropped silently).
        `managed`: the managedFields of a server-side apply that creates the object."""
        if not isinstance(body, Mapping):
            raise errors.bad_request("the body of the request must be a JSON object")
        if validation is not None:
            validation.check_decoded(rtype, body, schema=self.check_schemas)
        obj = copy.deepcopy(dict(body))
        meta = obj["metadata"] = drop_unknown_metadata(obj.get("metadata") or {})
        namespace = self._namespace_for(rtype, namespace, meta)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise errors.invalid_for(rtype, None,
                                         "metadata.name: Required value: name or generateName is required")
            meta["name"] = meta["generateName"] + "".join(random.choices(_GENERATE_ALPHABET, k=5))
        name = meta["name"]
        self._check_kind(rtype, obj)
        if rtype.namespaced:
            meta["namespace"] = namespace
            lifecycle.check_namespace_open(self, namespace)
        else:
            meta.pop("namespace", None)
        key = self._key(rtype, namespace, name)
        if key in self.objects[rtype.group_resource]:
            raise errors.already_exists(rtype.group, rtype.plural, name)
        for field in _SERVER_MANAGED + ("resourceVersion", "selfLink", "managedFields"):
            meta.pop(field, None)
        if managed:
            meta["managedFields"] = managed
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        if rtype.has_generation:
            meta["generation"] = 1
        if rtype.has_status:
            obj.pop("status", None)
        lifecycle.on_create(self, rtype, obj)
        if self.check_schemas:
            obj = schemas.conform(rtype, obj)
        validate_object(rtype, obj)
        for admit in self.admission:
            admit(rtype, obj, None)
        if dry_run:
            meta["resourceVersion"] = str(self.rv)
            return obj
        self._commit(rtype, key, obj, "ADDED", None)
        lifecycle.after_create(self, rtype, obj)
        return obj

    def replace(self, rtype: ResourceType, namespace: str | None, name: str, body: Any, *,
                subresource: str | None = None, dry_run: bool = False,
                validation: FieldValidation | None = None) -> dict[str, Any]:
        """PUT: a full replacement, conditional on metadata.resourceVersion when given."""
        if not isinstance(body, Mapping):
            raise errors.bad_request("the body of the request must be a JSON object")
        if validation is not None:
            validation.check_decoded(rtype, body, schema=self.check_schemas)
        old = self.get(rtype, namespace, name)
        body_name = (body.get("metadata") or {}).get("name")
        if body_name and body_name != name:
            raise errors.bad_request(
                f"the name of the object ({body_name}) does not match the name on the URL ({name})")
        return self._update(rtype, old, copy.deepcopy(dict(body)), subresource, dry_run)

    def patch(self, rtype: ResourceType, namespace: str | None, name: str, content_type: str, patch: Any, *,
              subresource: str | None = None, dry_run: bool = False,
              validation: FieldValidation | None = None, manager: str | None = None) -> tuple[dict[str, Any], bool]:
        """PATCH of any flavour. Returns the result and whether it was created (server-side apply, whose
        field ownership by `manager` is fieldmanager.py's)."""
        if validation is not None and content_type == APPLY_PATCH:
            validation.check_applied(rtype, patch, namespace, name, schema=self.check_schemas)
        old = self.find(rtype, namespace, name)
        if old is None:
            if content_type == APPLY_PATCH and subresource is None:
                body = dict(patch) if isinstance(patch, Mapping) else patch
                managed = None
                if isinstance(body, dict):
                    body["metadata"] = dict(body.get("metadata") or {}, name=name)
                    managed = fieldmanager.record(None, manager or "", fieldmanager.field_set(body), body)
                return self.create(rtype, namespace, body, dry_run=dry_run, managed=managed), True
            raise errors.not_found(rtype.group, rtype.plural, name)
        try:
            if content_type == APPLY_PATCH and isinstance(patch, Mapping) and subresource is None:
                candidate = fieldmanager.apply(old, patch, manager or "")
            else:
                candidate = apply_patch(old, content_type, patch)
        except PatchTestFailed as exc:
            raise errors.invalid_for(rtype, name, f"the JSON patch could not be applied: {exc}")
        except ValueError as exc:
            raise errors.bad_request(str(exc))
        if content_type == JSON_PATCH and not isinstance(candidate.get("metadata"), Mapping):
            raise errors.invalid_for(rtype, name, "metadata: Required value")
        if validation is not None and content_type != APPLY_PATCH:
            validation.check_patched(rtype, candidate, schema=self.check_schemas)
        candidate = copy.deepcopy(candidate)
        candidate_meta = candidate.get("metadata") or {}
        if candidate_meta.get("name", name) != name:
            raise errors.bad_request("metadata.name: the name of an object cannot be changed by a patch")
        return self._update(rtype, old, candidate, subresource, dry_run), False

    def delete(self, rtype: ResourceType, namespace: str | None, name: str, options: Mapping[str, Any] | None = None,
               *, dry_run: bool = False) -> dict[str, Any]:
        options = options or {}
        old = self.get(rtype, namespace, name)
        meta = old["metadata"]
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") and preconditions["uid"] != meta.get("uid"):
            raise errors.conflict(rtype.group, rtype.plural, name,
                                  f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                                  f"UID in object meta: {meta.get('uid')}")
        if preconditions.get("resourceVersion") and preconditions["resourceVersion"] != meta.get("resourceVersion"):
            raise errors.conflict(rtype.group, rtype.plural, name)
        lifecycle.check_deletable(self, rtype, old)
        if dry_run:
            return old
        policy = options.get("propagationPolicy") or ("Orphan" if options.get("orphanDependents") else None)
        if policy == "Orphan":
            lifecycle.orphan_dependents(self, meta["uid"])
        elif policy == "Foreground":
            lifecycle.collect_dependents(self, meta["uid"], force=True)
        if lifecycle.delays_deletion(rtype, old):
            if meta.get("deletionTimestamp"):
                return old  # already terminating: nothing changes
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            if rtype.has_generation:
                new["metadata"]["generation"] = meta.get("generation", 1) + 1
            lifecycle.on_terminating(self, rtype, new)
            self._commit(rtype, self._key(rtype, namespace, name), new, "MODIFIED", old)
            lifecycle.after_terminating(self, rtype, new)
            return self.find(rtype, namespace, name) or new
        return self.remove(rtype, old)

    def remove(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """Finally remove an object (no finalizers left): DELETED event, then garbage collection."""
        meta = obj["metadata"]
        key = self._key(rtype, meta.get("namespace"), meta["name"])
        final = copy.deepcopy(obj)
        self._commit(rtype, key, final, "DELETED", obj)
        lifecycle.after_removal(self, rtype, final)
        return final

    # Internals --------------------------------------------------------------------------------

    def _update(self, rtype: ResourceType, old: dict[str, Any], candidate: dict[str, Any],
                subresource: str | None, dry_run: bool) -> dict[str, Any]:
        old_meta = old["metadata"]
        name = old_meta["name"]
        cmeta = candidate.get("metadata") or {}
        if not isinstance(cmeta, Mapping):
            raise errors.bad_request("metadata must be an object")
        if cmeta.get("resourceVersion") and cmeta["resourceVersion"] != old_meta.get("resourceVersion"):
            raise errors.conflict(rtype.group, rtype.plural, name)
        if cmeta.get("uid") and cmeta["uid"] != old_meta.get("uid"):
            raise errors.conflict(rtype.group, rtype.plural, name,
                                  f"Precondition failed: UID in precondition: {cmeta['uid']}, "
                                  f"UID in object meta: {old_meta.get('uid')}")
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
        else:
            new = candidate
            new["metadata"] = drop_unknown_metadata(cmeta)
            if "managedFields" not in new["metadata"] and old_meta.get("managedFields"):
                new["metadata"]["managedFields"] = old_meta["managedFields"]  # an update that leaves them out keeps them
            if rtype.has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
        meta = new["metadata"]
        for field in ("name", "namespace") + _SERVER_MANAGED:
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        meta["resourceVersion"] = old_meta.get("resourceVersion")
        new["apiVersion"] = new.get("apiVersion") or old.get("apiVersion")
        new["kind"] = new.get("kind") or old.get("kind")
        self._check_kind(rtype, new)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise errors.invalid_for(rtype, name,
                                         "metadata.finalizers: Forbidden: no new finalizers can be added "
                                         "if the object is being deleted")
        if self.check_schemas:
            new = schemas.conform(rtype, new, old)
        validate_object(rtype, new)
        for admit in self.admission:
            admit(rtype, new, old)
        lifecycle.on_update(self, rtype, old, new)
        if _same(old, new):
            return old  # a no-op write: no new resourceVersion, no watch event
        if rtype.has_generation and _spec_part(rtype, old) != _spec_part(rtype, new):
            meta["generation"] = old_meta.get("generation", 1) + 1
        if dry_run:
            return new
        key = self._key(rtype, meta.get("namespace"), name)
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and lifecycle.can_vanish(rtype, new):
            return self.remove(rtype, new)  # the last finalizer is gone: one DELETED event
        self._commit(rtype, key, new, "MODIFIED", old)
        lifecycle.after_update(self, rtype, new)
        return self.find(rtype, meta.get("namespace"), name) or new

    def _commit(self, rtype: ResourceType, key: ObjectKey, obj: dict[str, Any], etype: str,
                prev: dict[str, Any] | None) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        gr = rtype.group_resource
        uid = obj["metadata"]["uid"]
        if etype == "DELETED":
            self.objects[gr].pop(key, None)
            self.uids.pop(uid, None)
        else:
            self.objects[gr][key] = obj
            self.uids[uid] = (gr, key)
        event = Event(self.rv, etype, obj, prev)
        log = self.logs[gr]
        if len(log) == log.maxlen:
            self.floors[gr] = log[0].rv
        log.append(event)
        for watcher in list(self.watchers[gr]):
            watcher(event)
        for listener in self.listeners:
            listener(rtype, event)

    def _key(self, rtype: ResourceType, namespace: str | None, name: str) -> ObjectKey:
        return ((namespace or "") if rtype.namespaced else "", name)

    def _namespace_for(self, rtype: ResourceType, namespace: str | None, meta: Mapping[str, Any]) -> str | None:
        if not rtype.namespaced:
            return None
        body_ns = meta.get("namespace")
        if namespace and body_ns and body_ns != namespace:
            raise errors.bad_request("the namespace of the provided object does not match the namespace sent on "
                                     "the request")
        namespace = namespace or body_ns
        if not namespace:
            raise errors.bad_request("an empty namespace may not be set during creation")
        return namespace

    def _check_kind(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        kind = obj.get("kind") or rtype.kind
        api_version = obj.get("apiVersion") or rtype.group_version
        group = api_version.rpartition("/")[0]
        if kind != rtype.kind or group != rtype.group:
            raise errors.bad_request(f"the API version in the data ({api_version}) does not match the expected "
                                     f"API version ({rtype.group_version}) or kind {kind!r} != {rtype.kind!r}")
        obj["kind"], obj["apiVersion"] = kind, api_version


def _without_rv(obj: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(obj)
    result["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    result.pop("apiVersion", None)
    return result


def _same(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return _without_rv(old) == _without_rv(new)


def _spec_part(rtype: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
    skipped = {"metadata", "apiVersion", "kind"} | ({"status"} if rtype.has_status else set())
    return {key: value for key, value in obj.items() if key not in skipped}
