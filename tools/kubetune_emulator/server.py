"""
``KubeEmulator``: kmock's ``KubernetesEmulator`` with a realistic API-server core.

kmock provides the request model and DSL (user reactions such as
``emu.handler["get /api/v1/namespaces/default/configmaps/a"][:1] << 503`` take precedence,
for fault injection), the bundled built-in discovery data, and ``handler.objects`` (every stored
version of every object, for kmock-style assertions). This subclass replaces kmock's object
handling with :class:`~kubetune_emulator.store.Store`. What it emulates:

* discovery (/api, /apis, group-versions) of built-ins and of CRDs as soon as they are created;
  ``Table`` output for ``kubectl get`` (CRD printer columns); /version, /healthz;
* OpenAPI v3 (/openapi/v3 and one document per group-version: CRD schemas, permissive built-ins),
  enough for kubectl's default ``--validate=strict`` and ``kubectl explain`` (see openapi.py);
  no OpenAPI v2 (kubectl falls back to it only where v3 says nothing);
* ``fieldValidation`` (Strict/Warn/Ignore; absent = Warn) on create, update and patch, with the API
  server's errors and ``Warning`` headers; unknown metadata fields dropped (see fieldvalidation.py);
* metadata: uid, resourceVersion (one global counter), generation (spec changes only),
  creationTimestamp, generateName, name/label/annotation/ownerReference validation;
* 409 AlreadyExists / Conflict (stale resourceVersion on PUT or in a patch), 404 as a Status,
  422 for a failed JSON-patch ``test``, 415 for strategic merge patches of custom resources;
* JSON, merge, strategic merge (list merge keys; no schema) and server-side apply (a merge that
  rejects unknown fields) patches;
* status and scale subresources; CRD schemas: pruning, defaulting, validation and CEL rules;
* label and field selectors, limit/continue, dryRun; watches from a resourceVersion (410 when
  compacted), sendInitialEvents bookmarks, timeoutSeconds;
* finalizers and deletionTimestamp; ownerReference garbage collection (background, foreground as
  "children first", orphan; a dependent created or updated with only absent owners is collected too);
  namespace termination; Job/Pod/Deployment defaulting and validation;
* opt-in (``Emulator(rbac=True)``): bearer-token authentication (401), TokenRequest for ServiceAccount
  tokens, the RBAC authorizer over the stored Roles/ClusterRoles/bindings with the API server's 403
  messages, RBAC escalation prevention, the OwnerReferencesPermissionEnforcement admission plugin, and
  a per-user record of the permissions used (see rbac.py).
  In-process helpers of ``Emulator`` (``emu.create`` etc.) are not authorized: they play the control plane.

Not emulated: kubelet and the built-in controllers (tests patch child status themselves),
protobuf (``kubectl create <kind>``: use ``kubectl apply -f``), client certificates, impersonation,
ClusterRole aggregation, other admission plugins, admission webhooks, managedFields of Update operations
other than a scale (fieldmanager.py), OpenAPI v2 and full schemas of built-in kinds (their unknown fields
are kept).
"""

from __future__ import annotations

import base64
import json
import logging
import traceback
from collections.abc import Mapping
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import apps, enums, rendering

from kubetune_emulator import errors, fieldmanager, lifecycle, openapi, patching, rbac, selectors, tables
from kubetune_emulator.fieldvalidation import FieldValidation
from kubetune_emulator.recording import ApiPath, RecordedRequest, RequestLog, is_true, k8s_verb, parse_api_path
from kubetune_emulator.registry import Registry, ResourceType
from kubetune_emulator.store import Event, Store
from kubetune_emulator.watching import WatchHub, serve_watch

logger = logging.getLogger(__name__)

INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
SERVER_VERSION = {
    "major": "1", "minor": "34", "gitVersion": "v1.34.0-kubetune-emulator", "gitCommit": "emulator",
    "gitTreeState": "clean", "buildDate": "2025-08-27T00:00:00Z", "goVersion": "go1.24.6", "compiler": "gc",
    "platform": "linux/amd64",
}
_ACTIONS = {"get": enums.action.FETCH, "list": enums.action.LIST, "watch": enums.action.WATCH,
            "create": enums.action.CREATE, "patch": enums.action.UPDATE, "delete": enums.action.DELETE}


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """The aiohttp request handler. Run it with :class:`kubetune_emulator.Emulator`."""

    registry: Registry = attrs.field(factory=Registry, init=False)
    store: Store = attrs.field(init=False)
    request_log: RequestLog = attrs.field(factory=RequestLog, init=False)
    internal_errors: list[BaseException] = attrs.field(factory=list, init=False)
    watch_hub: WatchHub = attrs.field(factory=WatchHub, init=False)
    rbac_enabled: bool = attrs.field(default=False)  # authenticate and authorize every request (see rbac.py)
    rbac: rbac.Rbac = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._payloads.clear()  # drop kmock's fallbacks: only user-defined reactions stay in the DSL
        self.registry.load_builtins()
        self.store = Store(self.registry)
        self.store.listeners.append(self._mirror)
        ns_rtype = self.registry.get("", "v1", "namespaces")
        assert ns_rtype is not None
        for name in INITIAL_NAMESPACES:
            self.store.create(ns_rtype, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        self.rbac = rbac.Rbac(self.store, self.registry)  # tokens are issued either way; enforced when enabled
        if self.rbac_enabled:
            for obj in rbac.bootstrap_objects():
                rtype = self.registry.by_kind(obj["apiVersion"], obj["kind"])
                assert rtype is not None
                self.store.create(rtype, None, obj)
            self.store.admission.append(self.rbac.admit)

    # The HTTP entry point ---------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw_request.read()
        path = parse_api_path(raw_request.path)
        query = dict(raw_request.query)
        verb = k8s_verb(raw_request.method, path, query)
        resource = None
        if path is not None and path.plural is not None:
            resource = f"{path.plural}.{path.group}" if path.group else path.plural
        user = self.rbac.authenticate(raw_request.headers.get("Authorization")) if self.rbac_enabled else None
        self.request_log.add(RecordedRequest(
            method=raw_request.method, path=raw_request.path, query=query, verb=verb, resource=resource,
            namespace=path.namespace if path else None, name=path.name if path else None,
            subresource=path.subresource if path else None, user=user.name if user else None))
        try:
            if self.rbac_enabled:
                if user is None:
                    raise rbac.unauthorized()
                rbac.current_user.set(user)
                self.rbac.authorize(_attributes(user, raw_request, path, verb, query))
            if self._payloads:  # user-defined kmock reactions first
                request = self._kmock_request(raw_request, body, path, verb, query)
                self._requests.append(request)
                try:
                    return await apps.RawHandler._handle(self, request)
                except NotImplementedError:
                    pass  # no reaction matched: serve as the API server
                except kmock.KubernetesError as exc:  # a reaction that raises a Kubernetes error on purpose
                    return await self._render_error(exc)
            return await self._route(raw_request, body, path, query)
        except errors.ApiError as exc:
            return aiohttp.web.json_response(exc.status(), status=exc.code)
        except Exception as exc:  # a bug in the emulator: report it as a 500 Status, keep it for tests
            self.internal_errors.append(exc)
            logger.exception("kube emulator failed on %s %s", raw_request.method, raw_request.path_qs)
            status = errors.ApiError(500, "InternalError", f"emulator error: {exc!r}",
                                     {"causes": [{"message": traceback.format_exc()}]}).status()
            return aiohttp.web.json_response(status, status=500)

    def _kmock_request(self, raw: aiohttp.web.BaseRequest, body: bytes, path: ApiPath | None,
                       verb: str | None, query: dict[str, str]) -> rendering.Request:
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        resource = None
        if path is not None and path.version is not None:
            resource = kmock.resource(group=path.group, version=path.version, plural=path.plural)
        return rendering.Request(
            id=len(self._requests), raw_request=raw, url=raw.url, method=raw.method, params=query,
            headers=dict(raw.headers), cookies=dict(raw.cookies), body=body,
            text=body.decode("utf-8", "replace"), data=data, action=_ACTIONS.get(verb or ""),
            resource=resource, namespace=path.namespace if path else None,
            name=path.name if path else None, subresource=path.subresource if path else None)

    async def _route(self, raw: aiohttp.web.BaseRequest, body: bytes, path: ApiPath | None,
                     query: dict[str, str]) -> aiohttp.web.StreamResponse:
        if path is None:
            return self._non_resource(raw)
        if path.version is None:
            doc = self.registry.api_group(path.group)
        elif path.plural is None:
            doc = self.registry.resource_list(path.group, path.version)
        else:
            return await self._resource(raw, body, path, query)
        if doc is None or raw.method != "GET":
            raise errors.not_found(path.group, "", None)
        return aiohttp.web.json_response(doc)

    def _non_resource(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        route = raw.path.rstrip("/") or "/"
        if raw.method == "GET":
            if route == "/api":
                return aiohttp.web.json_response(self.registry.api_versions())
            if route == "/apis":
                return aiohttp.web.json_response(self.registry.api_group_list())
            if route == "/version":
                return aiohttp.web.json_response(SERVER_VERSION)
            if route in ("/healthz", "/livez", "/readyz"):
                return aiohttp.web.Response(text="ok")
            if route == "/openapi/v3":
                return aiohttp.web.json_response(openapi.index(self.registry))
            if route.startswith("/openapi/v3/"):
                rtypes = openapi.group_versions(self.registry).get(route.removeprefix("/openapi/v3/"))
                if rtypes:
                    return aiohttp.web.json_response(openapi.document(rtypes))
            if route == "/":
                paths = ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v3", "/readyz", "/version"]
                paths += sorted({f"/apis/{r.group}/{r.version}" for r in self.registry if r.group})
                return aiohttp.web.json_response({"paths": paths})
        raise errors.not_found("", "", None)

    # Resources --------------------------------------------------------------------------------

    async def _resource(self, raw: aiohttp.web.BaseRequest, body: bytes, path: ApiPath,
                        query: dict[str, str]) -> aiohttp.web.StreamResponse:
        assert path.version is not None and path.plural is not None
        rtype = self.registry.get(path.group, path.version, path.plural)
        if rtype is None or (path.namespace is not None and not rtype.namespaced):
            raise errors.not_found(path.group, path.plural, None)
        if rtype.group == "" and rtype.plural == "serviceaccounts" and path.subresource == "token":
            return self._token_request(raw, body, path)
        if path.subresource is not None and path.subresource not in rtype.subresources:
            raise errors.not_found(path.group, f"{path.plural}/{path.subresource}", path.name)
        method, name, ns = raw.method, path.name, path.namespace
        dry_run = "dryRun" in query
        as_table = tables.wants_table(raw.headers.get("Accept")) and method == "GET"
        if method == "GET" and (path.legacy_watch or is_true(query.get("watch"))):
            return await self._watch(raw, rtype, path, query, as_table)
        if method == "GET" and name is None:
            return self._list(rtype, ns, query, as_table)
        if method == "GET":
            obj = self.store.get(rtype, ns, name)
            if path.subresource == "scale":
                return aiohttp.web.json_response(lifecycle.scale_of(rtype, obj))
            if as_table:
                table = tables.to_table(rtype, [self._present(rtype, obj)], obj["metadata"]["resourceVersion"],
                                        query.get("includeObject"))
                return aiohttp.web.json_response(table)
            return self._json(rtype, obj)
        if method == "POST" and name is None:
            validation = FieldValidation.from_query(query, "CreateOptions")
            obj = self.store.create(rtype, ns, _decode(body, raw), dry_run=dry_run, validation=validation)
            return self._json(rtype, obj, 201, validation)
        if method == "DELETE" and name is None:
            return self._delete_collection(rtype, ns, query, body, raw)
        if name is None:
            raise errors.method_not_allowed()
        if path.subresource == "scale" and method in ("PUT", "PATCH"):
            return self._scale(raw, rtype, ns, name, body, dry_run)
        if method == "PUT":
            validation = FieldValidation.from_query(query, "UpdateOptions")
            obj = self.store.replace(rtype, ns, name, _decode(body, raw), subresource=path.subresource,
                                     dry_run=dry_run, validation=validation)
            return self._json(rtype, obj, 200, validation)
        if method == "PATCH":
            content_type = raw.content_type
            if content_type not in patching.PATCH_TYPES or (
                    rtype.from_crd and content_type == patching.STRATEGIC_MERGE_PATCH):
                raise errors.unsupported_media_type(content_type)  # as for custom resources in a real cluster
            validation = FieldValidation.from_query(query, "PatchOptions")
            manager = query.get("fieldManager")
            if content_type == patching.APPLY_PATCH:
                if not manager:
                    raise errors.invalid("meta.k8s.io", "PatchOptions", "",
                                         "fieldManager: Required value: is required for apply patch")
                if self.rbac_enabled and path.subresource is None and self.store.find(rtype, ns, name) is None:
                    # An apply that creates is authorized as a create too (apiserver patch.go: createValidation
                    # runs withAuthorization(..., verb "create")).
                    user = rbac.current_user.get()
                    assert user is not None
                    self.rbac.authorize(rbac.Attributes(user, "create", True, rtype.group, rtype.plural, "", ns or "", name))
            obj, created = self.store.patch(rtype, ns, name, content_type, _decode(body, raw),
                                            subresource=path.subresource, dry_run=dry_run, validation=validation,
                                            manager=manager)
            return self._json(rtype, obj, 201 if created else 200, validation)
        if method == "DELETE":
            options = _decode(body, raw) if body else {}
            if "propagationPolicy" in query:
                options = dict(options, propagationPolicy=query["propagationPolicy"])
            return self._json(rtype, self.store.delete(rtype, ns, name, options, dry_run=dry_run))
        raise errors.method_not_allowed()

    def _token_request(self, raw: aiohttp.web.BaseRequest, body: bytes, path: ApiPath) -> aiohttp.web.StreamResponse:
        """TokenRequest (authentication.k8s.io/v1): a bound token for the ServiceAccount, as kubelet asks for one."""
        if raw.method != "POST" or path.name is None or path.namespace is None:
            raise errors.method_not_allowed()
        request = _decode(body, raw) if body else {}
        seconds = (request.get("spec") or {}).get("expirationSeconds")
        status = self.rbac.request_token(path.namespace, path.name, int(seconds) if seconds else None)
        return aiohttp.web.json_response({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "metadata": {"name": path.name, "namespace": path.namespace, "creationTimestamp": None},
            "spec": dict(request.get("spec") or {}, expirationSeconds=int(seconds or rbac.DEFAULT_TOKEN_SECONDS)),
            "status": status}, status=201)

    def _list(self, rtype: ResourceType, ns: str | None, query: dict[str, str],
              as_table: bool) -> aiohttp.web.StreamResponse:
        matcher = self._matcher(rtype, ns, None, query)
        items = self.store.list(rtype, ns, matcher)
        rv = str(self.store.rv)
        start = _decode_continue(query.get("continue"))
        if start is not None:
            items = [obj for obj in items if _sort_key(obj) > start]
        limit = int(query.get("limit") or 0)
        token = None
        remaining = 0
        if limit > 0 and len(items) > limit:
            remaining = len(items) - limit
            items = items[:limit]
            token = base64.urlsafe_b64encode(json.dumps(list(_sort_key(items[-1]))).encode()).decode()
        presented = [self._present(rtype, obj) for obj in items]
        if as_table:
            return aiohttp.web.json_response(tables.to_table(rtype, presented, rv, query.get("includeObject"), token))
        metadata: dict[str, Any] = {"resourceVersion": rv}
        if token:
            metadata.update({"continue": token, "remainingItemCount": remaining})
        return aiohttp.web.json_response({"apiVersion": rtype.group_version, "kind": f"{rtype.kind}List",
                                          "metadata": metadata, "items": presented})

    async def _watch(self, raw: aiohttp.web.BaseRequest, rtype: ResourceType, path: ApiPath,
                     query: dict[str, str], as_table: bool) -> aiohttp.web.StreamResponse:
        visible = self._matcher(rtype, path.namespace, path.name, query) or (lambda obj: True)
        include = query.get("includeObject")

        def present(obj: Mapping[str, Any]) -> Any:
            shown = self._present(rtype, obj)
            if as_table:
                return tables.to_table(rtype, [shown], shown["metadata"]["resourceVersion"], include)
            return shown

        return await serve_watch(raw, self.store, self.watch_hub, rtype, query, visible, present)

    def _delete_collection(self, rtype: ResourceType, ns: str | None, query: dict[str, str], body: bytes,
                           raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        options = _decode(body, raw) if body else {}
        deleted = []
        for obj in self.store.list(rtype, ns, self._matcher(rtype, ns, None, query)):
            meta = obj["metadata"]
            if self.store.find(rtype, meta.get("namespace"), meta["name"]) is not None:
                deleted.append(self._present(rtype, self.store.delete(rtype, meta.get("namespace"), meta["name"],
                                                                      options)))
        return aiohttp.web.json_response({"apiVersion": rtype.group_version, "kind": f"{rtype.kind}List",
                                          "metadata": {"resourceVersion": str(self.store.rv)}, "items": deleted})

    def _scale(self, raw: aiohttp.web.BaseRequest, rtype: ResourceType, ns: str | None, name: str, body: bytes,
               dry_run: bool) -> aiohttp.web.StreamResponse:
        obj = self.store.get(rtype, ns, name)
        scale = lifecycle.scale_of(rtype, obj)
        data = _decode(body, raw)
        if raw.method == "PATCH":
            if raw.content_type not in patching.PATCH_TYPES:
                raise errors.unsupported_media_type(raw.content_type)
            try:
                data = patching.apply_patch(scale, raw.content_type, data)
            except (ValueError, patching.PatchTestFailed) as exc:
                raise errors.invalid("autoscaling", "scale", name, str(exc)) from None
        candidate = lifecycle.with_scale(rtype, obj, data)
        if lifecycle.scale_of(rtype, obj)["spec"]["replicas"] != lifecycle.scale_of(rtype, candidate)["spec"]["replicas"]:
            manager = raw.query.get("fieldManager") or (raw.headers.get("User-Agent") or "unknown").split("/", 1)[0]
            path = tuple(f"f:{part}" for part in rtype.scale[0].strip(".").split("."))
            candidate["metadata"]["managedFields"] = fieldmanager.take_over(candidate, manager, path, "scale")
        updated = self.store.replace(rtype, ns, name, candidate, dry_run=dry_run)
        return aiohttp.web.json_response(lifecycle.scale_of(rtype, updated))

    # Helpers ----------------------------------------------------------------------------------

    def _matcher(self, rtype: ResourceType, ns: str | None, name: str | None,
                 query: dict[str, str]) -> selectors.Matcher | None:
        scope: selectors.Matcher | None = None
        if (ns is not None and rtype.namespaced) or name is not None:
            def scope(obj: Mapping[str, Any]) -> bool:
                meta = obj.get("metadata") or {}
                return ((ns is None or not rtype.namespaced or meta.get("namespace") == ns)
                        and (name is None or meta.get("name") == name))
        return selectors.combine(scope, selectors.parse_label_selector(query.get("labelSelector")),
                                 selectors.parse_field_selector(query.get("fieldSelector")))

    def _present(self, rtype: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        """The object as the requested version shows it (same data: no conversion webhooks)."""
        if obj.get("apiVersion") == rtype.group_version:
            return dict(obj)
        return dict(obj, apiVersion=rtype.group_version)

    def _json(self, rtype: ResourceType, obj: Mapping[str, Any], status: int = 200,
              validation: FieldValidation | None = None) -> aiohttp.web.Response:
        response = aiohttp.web.json_response(self._present(rtype, obj), status=status)
        for warning in validation.warning_headers() if validation else []:
            response.headers.add("Warning", warning)
        return response

    def _mirror(self, rtype: ResourceType, event: Event) -> None:
        """Keep kmock's ``objects`` history in sync, for kmock-style assertions."""
        meta = event.obj["metadata"]
        preferred = self.store.rtype_for(rtype.group_resource) or rtype
        key = (kmock.resource(preferred.group, preferred.version, preferred.plural), meta.get("namespace"),
               meta["name"])
        if key not in self._objects:
            self._objects[key] = event.obj
        elif event.type == "ADDED":
            self._objects[key].create(event.obj)
        else:
            self._objects[key].history.append(event.obj)
        if event.type == "DELETED":
            self._objects[key].delete()

    def close_watches(self) -> None:
        self.watch_hub.close_all()


def _decode(body: bytes, raw: aiohttp.web.BaseRequest) -> Any:
    if not body:
        raise errors.bad_request("the request body is empty")
    try:
        if raw.content_type == patching.APPLY_PATCH or raw.content_type.endswith("yaml"):
            return yaml.safe_load(body)
        return json.loads(body)
    except (ValueError, yaml.YAMLError) as exc:
        if raw.content_type.startswith("application/vnd.kubernetes.protobuf"):
            raise errors.ApiError(415, "UnsupportedMediaType", "the emulator speaks JSON only, not protobuf "
                                  "(kubectl create <kind> sends protobuf: use kubectl apply -f)") from None
        raise errors.bad_request(f"the body could not be decoded: {exc}") from None


def _attributes(user: rbac.User, raw: aiohttp.web.BaseRequest, path: ApiPath | None, verb: str | None,
                query: dict[str, str]) -> rbac.Attributes:
    """The request as the authorizer sees it (apiserver RequestInfo)."""
    if path is None or path.plural is None or verb is None:
        return rbac.Attributes(user, raw.method.lower(), False, path=raw.path)
    name = path.name or ""
    if verb in ("list", "watch") and not name:  # a field selector on one name authorizes like that name
        for term in (query.get("fieldSelector") or "").split(","):
            key, _, value = term.partition("==") if "==" in term else term.partition("=")
            if key.strip() == "metadata.name" and not key.endswith("!"):
                name = value.strip()
    return rbac.Attributes(user, verb, True, path.group, path.plural, path.subresource or "", path.namespace or "",
                           name)


def _sort_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _decode_continue(token: str | None) -> tuple[str, str] | None:
    if not token:
        return None
    try:
        namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        raise errors.bad_request("invalid continue token") from None
    return (namespace, name)
