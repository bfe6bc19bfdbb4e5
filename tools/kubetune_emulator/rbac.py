"""
Authentication and RBAC for the emulator (opt-in: ``Emulator(rbac=True)``), as the API server does them.

* **Authentication**: ``Authorization: Bearer <token>``. Tokens are issued by the emulator: the admin
  token of the emulator's kubeconfig (user ``kubetune:emulator-admin``, group ``system:masters``), and
  ServiceAccount tokens from the TokenRequest subresource
  (``POST /api/v1/namespaces/<ns>/serviceaccounts/<sa>/token``, as kubelet asks for projected tokens),
  user ``system:serviceaccount:<ns>:<sa>`` with groups ``system:serviceaccounts``,
  ``system:serviceaccounts:<ns>``, ``system:authenticated``. A ServiceAccount token stops working when
  its ServiceAccount is deleted (bound tokens). No token or an unknown one: 401 ``Unauthorized``.
* **Authorization**: the RBAC authorizer over the Roles, ClusterRoles, RoleBindings and
  ClusterRoleBindings stored in the emulator: verbs, apiGroups, resources with subresources
  (``finetunejobs/status``, ``*/scale``), resourceNames (a list/watch names its object by a
  ``metadata.name`` field selector), ``*`` wildcards and nonResourceURLs (with a trailing ``*``).
  ``system:masters`` may do everything. The bootstrap ClusterRoles a cluster starts with are stored:
  ``cluster-admin``, ``system:discovery``, ``system:public-info-viewer`` and ``system:basic-user``
  (discovery, /version, health and OpenAPI for every authenticated user). No aggregationRule.
* **Denials**: 403 ``Forbidden`` Statuses with the API server's messages (apimachinery
  ``NewForbidden`` around apiserver ``responsewriters.forbiddenMessage``)::

      finetunejobs.kubetune.io "x" is forbidden: User "system:serviceaccount:ns:sa" cannot patch resource
      "finetunejobs/status" in API group "kubetune.io" in the namespace "ns"
      jobs.batch is forbidden: User "..." cannot list resource "jobs" in API group "batch" at the cluster scope
      forbidden: User "..." cannot get path "/metrics"

* **Escalation prevention** (the RBAC registry's check): creating or updating a Role/ClusterRole needs
  every rule it grants to be held by the requester (or ``escalate`` on it); a RoleBinding/
  ClusterRoleBinding needs the referenced role's rules to be held (or ``bind`` on it). Message:
  ``roles.rbac.authorization.k8s.io "x" is forbidden: user "..." (groups=[...]) is attempting to grant
  RBAC permissions not currently held:\\n{APIGroups:[...], Resources:[...], Verbs:[...]}``.
* **OwnerReferencesPermissionEnforcement** (an admission plugin OpenShift and hardened clusters enable;
  on here with RBAC): a new ``blockOwnerDeletion: true`` ownerReference needs ``update`` on the owner's
  ``finalizers`` subresource, and changing ownerReferences of an existing object needs ``delete`` on it
  (``jobs.batch "x" is forbidden: cannot set blockOwnerDeletion if an ownerReference refers to a resource
  you can't set finalizers on: , <nil>``).
* **Usage**: every allowed request, and every permission an escalation check relied on, is recorded per
  user as ``(verb, group, resource)`` with ``resource`` like ``finetunejobs/status``, so tests can
  compare what an identity used with what its roles grant (least privilege both ways).
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from kubetune_emulator import errors

RBAC_GROUP = "rbac.authorization.k8s.io"
MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
ADMIN_NAME = "kubetune:emulator-admin"
DEFAULT_TOKEN_SECONDS = 3600

Atom = tuple[str, str, str]  # (verb, group, resource[/subresource])

# The user making the request being served (set per request task by the server; None in-process).
current_user: contextvars.ContextVar[User | None] = contextvars.ContextVar("kube_emulator_user", default=None)


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()

    @staticmethod
    def service_account(namespace: str, name: str) -> User:
        return User(f"system:serviceaccount:{namespace}:{name}",
                    ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED))


ADMIN = User(ADMIN_NAME, (MASTERS, AUTHENTICATED))


@dataclasses.dataclass(frozen=True)
class Attributes:
    """What the authorizer decides on (apiserver ``authorizer.Attributes``)."""

    user: User
    verb: str
    resource_request: bool
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    @property
    def combined(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def forbidden_message(attrs: Attributes) -> str:
    """apiserver responsewriters.forbiddenMessage."""
    if not attrs.resource_request:
        return f'User "{attrs.user.name}" cannot {attrs.verb} path "{attrs.path}"'
    where = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    return (f'User "{attrs.user.name}" cannot {attrs.verb} resource "{attrs.combined}" '
            f'in API group "{attrs.group}" {where}')


def forbidden(attrs: Attributes, why: str) -> errors.ApiError:
    """apimachinery errors.NewForbidden(groupResource, name, err)."""
    if not attrs.resource_request:
        return errors.ApiError(403, "Forbidden", f"forbidden: {why}", {})
    qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
    details: dict[str, Any] = {"group": attrs.group, "kind": attrs.resource}
    if attrs.name:
        details["name"] = attrs.name
        return errors.ApiError(403, "Forbidden", f'{qualified} "{attrs.name}" is forbidden: {why}', details)
    return errors.ApiError(403, "Forbidden", f"{qualified} is forbidden: {why}", details)


def unauthorized() -> errors.ApiError:
    return errors.ApiError(401, "Unauthorized", "Unauthorized")


# Rules ------------------------------------------------------------------------------------------

def _has(values: Iterable[str], wanted: str) -> bool:
    values = list(values)
    return "*" in values or wanted in values


def _resource_matches(rule: Mapping[str, Any], combined: str, subresource: str) -> bool:
    for res in rule.get("resources") or []:
        if res in ("*", combined):
            return True
        if subresource and res == f"*/{subresource}":
            return True
    return False


def rule_allows(rule: Mapping[str, Any], attrs: Attributes) -> bool:
    """rbac/validation RuleAllows."""
    if not _has(rule.get("verbs") or [], attrs.verb):
        return False
    if not attrs.resource_request:
        for url in rule.get("nonResourceURLs") or []:
            if url == "*" or url == attrs.path or (url.endswith("*") and attrs.path.startswith(url[:-1])):
                return True
        return False
    if not _has(rule.get("apiGroups") or [], attrs.group) or not _resource_matches(rule, attrs.combined,
                                                                                     attrs.subresource):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def _atoms(rule: Mapping[str, Any]) -> Iterator[tuple[str, str, str, str | None]]:
    """A rule broken into (verb, group, resource, name) pieces (rbac/validation BreakdownRule)."""
    for verb in rule.get("verbs") or []:
        for group in rule.get("apiGroups") or []:
            for res in rule.get("resources") or []:
                for name in rule.get("resourceNames") or [None]:
                    yield verb, group, res, name


def _covers(owner: Mapping[str, Any], verb: str, group: str, res: str, name: str | None) -> bool:
    """rbac/validation ruleCovers: ``*`` in the owner's rule covers anything, literally otherwise."""
    if not owner.get("resources") or not _has(owner.get("verbs") or [], verb):
        return False
    if not _has(owner.get("apiGroups") or [], group):
        return False
    owned = owner.get("resources") or []
    if not ("*" in owned or res in owned
            or ("/" in res and f"*/{res.split('/', 1)[1]}" in owned)):
        return False
    names = owner.get("resourceNames") or []
    return not names or (name is not None and name in names)


def _rule_text(verb: str, group: str, res: str, name: str | None) -> str:
    """Go's %+v of a PolicyRule holding one permission, as the escalation error lists them."""
    text = f'{{APIGroups:[{json.dumps(group)}], Resources:[{json.dumps(res)}], '
    if name is not None:
        text += f"ResourceNames:[{json.dumps(name)}], "
    return text + f'Verbs:[{json.dumps(verb)}]}}'


def bootstrap_objects() -> list[dict[str, Any]]:
    """The default ClusterRoles and ClusterRoleBindings every cluster starts with (the ones that matter here)."""
    def role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole", "rules": rules,
                "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}}

    def binding(name: str, groups: list[str]) -> dict[str, Any]:
        return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
                "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": g} for g in groups]}

    return [
        role("cluster-admin", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                               {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        binding("cluster-admin", [MASTERS]),
        role("system:discovery", [{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez",
                                                       "/openapi", "/openapi/*", "/readyz", "/version", "/version/"],
                                   "verbs": ["get"]}]),
        binding("system:discovery", [AUTHENTICATED]),
        role("system:public-info-viewer", [{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version",
                                                                "/version/"], "verbs": ["get"]}]),
        binding("system:public-info-viewer", [AUTHENTICATED, "system:unauthenticated"]),
        role("system:basic-user", [{"apiGroups": ["authorization.k8s.io"], "verbs": ["create"],
                                    "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]}]),
        binding("system:basic-user", [AUTHENTICATED]),
    ]


# The authenticator and authorizer ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Token:
    user: User
    sa_uid: str | None = None  # a bound ServiceAccount token: valid while that ServiceAccount exists


class Rbac:
    """Tokens, the RBAC authorizer over the store's objects, escalation checks, and the usage record."""

    def __init__(self, store: Any, registry: Any) -> None:
        self.store = store
        self.registry = registry
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()
        self._usage: dict[str, set[Atom]] = {}
        self._denials: list[tuple[str, str]] = []
        self.admin_token = self.issue(ADMIN)

    # Tokens ---------------------------------------------------------------------------------------

    def issue(self, user: User, sa_uid: str | None = None) -> str:
        token = secrets.token_urlsafe(32)
        self._tokens[token] = _Token(user, sa_uid)
        return token

    def request_token(self, namespace: str, name: str, seconds: int | None = None) -> dict[str, Any]:
        """TokenRequest status for ServiceAccount namespace/name (404 when it does not exist)."""
        sa = self.store.get(self._rtype("", "serviceaccounts"), namespace, name)
        expires = datetime.now(timezone.utc) + timedelta(seconds=seconds or DEFAULT_TOKEN_SECONDS)
        token = self.issue(User.service_account(namespace, name), sa["metadata"]["uid"])
        return {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def authenticate(self, header: str | None) -> User | None:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer":  # case-insensitive, as the API server's bearer authenticator (the kubernetes
            return None                 # client's in-cluster config sends "bearer")
        found = self._tokens.get(token.strip())
        if found is None:
            return None
        if found.sa_uid is not None and found.sa_uid not in self.store.uids:
            return None  # its ServiceAccount is gone
        return found.user

    # Authorization --------------------------------------------------------------------------------

    def rules_for(self, user: User, namespace: str) -> Iterator[dict[str, Any]]:
        """Every rule that applies to `user` in `namespace` ("" = cluster scope only)."""
        for binding in self.store.list(self._rtype(RBAC_GROUP, "clusterrolebindings"), None):
            if _binds(binding, user):
                yield from self._role_rules(binding["roleRef"], None)
        if namespace:
            for binding in self.store.list(self._rtype(RBAC_GROUP, "rolebindings"), namespace):
                if _binds(binding, user):
                    yield from self._role_rules(binding["roleRef"], namespace)

    def allows(self, attrs: Attributes) -> bool:
        if MASTERS in attrs.user.groups:
            return True
        return any(rule_allows(rule, attrs) for rule in self.rules_for(attrs.user, attrs.namespace))

    def authorize(self, attrs: Attributes) -> None:
        """Raise the API server's 403 unless allowed; record what was used."""
        if not self.allows(attrs):
            error = forbidden(attrs, forbidden_message(attrs))
            with self._lock:
                self._denials.append((attrs.user.name, error.message))
            raise error
        if attrs.resource_request:
            self._record(attrs.user, [(attrs.verb, attrs.group, attrs.combined)])

    # Escalation prevention (an admission step of the RBAC registry) ----------------------------

    def admit(self, rtype: Any, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
        user = current_user.get()
        if user is None or MASTERS in user.groups:
            return
        self._owner_references(user, rtype, obj, old)
        if rtype.group == RBAC_GROUP:
            self._escalation(user, rtype, obj, old)

    def _owner_references(self, user: User, rtype: Any, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
        """The OwnerReferencesPermissionEnforcement admission plugin (plugin/pkg/admission/gc)."""
        meta = obj.get("metadata") or {}
        refs = list(meta.get("ownerReferences") or [])
        old_refs = list(((old or {}).get("metadata") or {}).get("ownerReferences") or [])
        if refs == old_refs or (old is None and not refs):
            return
        name, namespace = meta.get("name", ""), meta.get("namespace") or ""
        attrs = Attributes(user, "create" if old is None else "update", True, rtype.group, rtype.plural, "",
                           namespace, name)
        # Whoever creates an object could have not created it: only a change needs delete on the object.
        if old is not None and not self.allows(dataclasses.replace(attrs, verb="delete")):
            self._deny(forbidden(attrs, "cannot set an ownerRef on a resource you can't delete: , <nil>"))
        was_blocking = {ref.get("uid") for ref in old_refs if ref.get("blockOwnerDeletion")}
        for ref in refs:
            if not ref.get("blockOwnerDeletion") or ref.get("uid") in was_blocking:
                continue
            owner = self.registry.by_kind(str(ref.get("apiVersion", "")), str(ref.get("kind", "")))
            if owner is None:
                continue
            check = Attributes(user, "update", True, owner.group, owner.plural, "finalizers", namespace,
                               ref.get("name", ""))
            if not self.allows(check):
                self._deny(forbidden(attrs, "cannot set blockOwnerDeletion if an ownerReference refers to a "
                                            "resource you can't set finalizers on: , <nil>"))
            self._record(user, [("update", owner.group, f"{owner.plural}/finalizers")])

    def _deny(self, error: errors.ApiError) -> None:
        with self._lock:
            self._denials.append((current_user.get().name if current_user.get() else "", error.message))
        raise error

    def _escalation(self, user: User, rtype: Any, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
        """The RBAC registry's escalation check on Roles, ClusterRoles and their bindings."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or ""
        if rtype.plural in ("roles", "clusterroles"):
            granted = list(obj.get("rules") or [])
            if old is not None and list(old.get("rules") or []) == granted:
                return
            exempt = ("escalate", rtype.plural, meta.get("name", ""))
        elif rtype.plural in ("rolebindings", "clusterrolebindings"):
            ref = obj.get("roleRef") or {}
            if old is not None and old.get("roleRef") == ref and old.get("subjects") == obj.get("subjects"):
                return
            granted = list(self._role_rules(ref, namespace or None))
            exempt = ("bind", "clusterroles" if ref.get("kind") == "ClusterRole" else "roles", ref.get("name", ""))
        else:
            return
        verb, plural, name = exempt
        if self.allows(Attributes(user, verb, True, RBAC_GROUP, plural, "", namespace, name)):
            self._record(user, [(verb, RBAC_GROUP, plural)])
            return
        owned = list(self.rules_for(user, namespace))
        missing, used = [], []
        for rule in granted:
            for atom in _atoms(rule):
                owner = next((o for o in owned if _covers(o, *atom)), None)
                if owner is None:
                    missing.append(_rule_text(*atom))
                else:
                    used.append(atom[:3])
        if missing:
            groups = " ".join(json.dumps(g) for g in user.groups)
            why = (f'user "{user.name}" (groups=[{groups}]) is attempting to grant RBAC permissions not currently '
                   f"held:\n" + "\n".join(missing))
            attrs = Attributes(user, "create" if old is None else "update", True, RBAC_GROUP, rtype.plural, "",
                               namespace, meta.get("name", ""))
            error = forbidden(attrs, why)
            with self._lock:
                self._denials.append((user.name, error.message))
            raise error
        self._record(user, used)

    # The record -----------------------------------------------------------------------------------

    def usage(self, user_name: str) -> set[Atom]:
        with self._lock:
            return set(self._usage.get(user_name, set()))

    def usage_by_user(self) -> dict[str, set[Atom]]:
        with self._lock:
            return {user: set(atoms) for user, atoms in self._usage.items()}

    def denials(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._denials)

    def _record(self, user: User, atoms: Iterable[Atom]) -> None:
        with self._lock:
            self._usage.setdefault(user.name, set()).update(atoms)

    # Internals ------------------------------------------------------------------------------------

    def _rtype(self, group: str, plural: str) -> Any:
        return self.store.rtype_for((group, plural))

    def _role_rules(self, ref: Mapping[str, Any], namespace: str | None) -> list[dict[str, Any]]:
        if ref.get("kind") == "ClusterRole":
            role = self.store.find(self._rtype(RBAC_GROUP, "clusterroles"), None, ref.get("name", ""))
        elif ref.get("kind") == "Role" and namespace:
            role = self.store.find(self._rtype(RBAC_GROUP, "roles"), namespace, ref.get("name", ""))
        else:
            role = None
        return list((role or {}).get("rules") or [])


def _binds(binding: Mapping[str, Any], user: User) -> bool:
    for subject in binding.get("subjects") or []:
        kind, name = subject.get("kind"), subject.get("name")
        if kind == "User" and name == user.name:
            return True
        if kind == "Group" and name in user.groups:
            return True
        if kind == "ServiceAccount" and user.name == f"system:serviceaccount:{subject.get('namespace')}:{name}":
            return True
    return False


def granted_atoms(rules: Iterable[Mapping[str, Any]]) -> set[Atom]:
    """(verb, group, resource) of every permission the rules grant (resourceNames dropped)."""
    return {(verb, group, res) for rule in rules for verb, group, res, _ in _atoms(rule)}
