"""Tenants and their API keys.

An API key belongs to one tenant: one Kubernetes namespace, where its files' jobs run, and that tenant's
limits. Keys live in Secrets in the gateway's namespace (settings.keysNamespace), stored hashed: the Secret
holds the key's SHA-256, never the key. Its name is derived from the hash (`kubetune-key-<first 20 hex>`), so
a request costs one GET by name, and the gateway needs `get` on Secrets in its own namespace only.

    apiVersion: v1
    kind: Secret
    metadata: {name: kubetune-key-<hash[:20]>, namespace: <keysNamespace>, labels: {kubetune.io/gateway-api-key: "true"}}
    data:                               # base64 of:
      sha256: <hex SHA-256 of the key>
      namespace: team-a
      limits: '{"maxConcurrentJobs": 2, "maxGpusPerJob": 1, "allowedBaseModels": ["smollm2-135m"], "allowedMethods": ["supervised", "dpo"]}'

Keys are 256-bit random tokens, so a plain SHA-256 is enough (no salt/KDF: there is nothing to guess).
`kubetune gateway key` makes a key and prints its Secret. Revoking = deleting the Secret (effective within
CACHE_SECONDS).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import Field, ValidationError

from ..api.common import KubeModel
from ..clients.kube import KubeError
from .errors import OpenAIError, unauthorized

KEY_PREFIX = "kt-"
LABEL_API_KEY = "kubetune.io/gateway-api-key"
SECRET_PREFIX = "kubetune-key-"
CACHE_SECONDS = 10.0
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class TenantLimits(KubeModel):
    """What a tenant may do (the Secret's `limits`, JSON)."""

    max_concurrent_jobs: int = Field(default=2, description="Jobs not yet finished at once (429 beyond).", ge=0, le=1000)
    max_gpus_per_job: int = Field(default=1, description="GPUs per node of one job (403 beyond).", ge=0, le=64)
    allowed_base_models: list[str] = Field(default_factory=list, max_length=1000,
                                           description='Base model names it may fine-tune; ["*"]: all the gateway offers.')
    allowed_methods: list[str] = Field(default_factory=lambda: ["supervised", "dpo"], max_length=10,
                                       description="OpenAI method types it may use (supervised, dpo).")

    def allows_model(self, name: str) -> bool:
        return "*" in self.allowed_base_models or name in self.allowed_base_models


@dataclass(frozen=True)
class Tenant:
    """The caller: its namespace (everything it owns lives there) and its limits."""

    namespace: str
    limits: TenantLimits
    key_id: str  # the key's Secret name: safe to log (it is a hash prefix, not the key)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def secret_name(digest: str) -> str:
    return SECRET_PREFIX + digest[:20]


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_secret(key: str, namespace: str, limits: TenantLimits, keys_namespace: str) -> dict[str, Any]:
    """The Secret that makes `key` a key of tenant `namespace` (what `kubetune gateway key` prints)."""
    digest = key_hash(key)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": secret_name(digest), "namespace": keys_namespace, "labels": {LABEL_API_KEY: "true"}},
            "data": {key_: base64.b64encode(value.encode()).decode() for key_, value in
                     {"sha256": digest, "namespace": namespace, "limits": json.dumps(limits.to_dict())}.items()}}


def tenant_of_secret(secret: dict[str, Any], digest: str) -> Tenant | None:
    """The tenant a key Secret names, if it is one for exactly this hash; a malformed Secret is no key."""
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    if (secret.get("metadata", {}).get("labels") or {}).get(LABEL_API_KEY) != "true":
        return None
    if not hmac.compare_digest(data.get("sha256", ""), digest):
        return None
    namespace = data.get("namespace", "")
    if not re.fullmatch(NAMESPACE_PATTERN, namespace) or len(namespace) > 63:
        return None
    try:
        limits = TenantLimits.model_validate(json.loads(data.get("limits") or "{}"))
    except (ValueError, ValidationError):
        return None
    return Tenant(namespace=namespace, limits=limits, key_id=secret["metadata"]["name"])


class KeyStore:
    """Looks keys up in their Secrets, with a short cache (hits and misses) so a burst costs one GET."""

    def __init__(self, kube, keys_namespace: str):
        self.kube, self.keys_namespace = kube, keys_namespace
        self._cache: dict[str, tuple[float, Tenant | None]] = {}

    async def lookup(self, key: str) -> Tenant | None:
        digest = key_hash(key)
        hit = self._cache.get(digest)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        try:
            secret = await self.kube.request("GET", f"/api/v1/namespaces/{self.keys_namespace}/secrets/{secret_name(digest)}")
            found = tenant_of_secret(secret, digest)
        except KubeError as exc:
            if exc.status != 404:
                raise OpenAIError(503, "The key store is unavailable; retry shortly.", code="service_unavailable") from None
            found = None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + CACHE_SECONDS, found)
        return found


async def tenant(request: Request) -> Tenant:
    """FastAPI dependency: the calling tenant, from `Authorization: Bearer <key>`; 401 otherwise.

    Use it in every route: `async def route(who: Tenant = Depends(tenant))` (or `TenantDep`)."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise unauthorized("You didn't provide an API key. Provide it in the Authorization header "
                           "(Authorization: Bearer YOUR_KEY).")
    if scheme.lower() != "bearer" or not key.strip():
        raise unauthorized("The Authorization header must be 'Bearer YOUR_KEY'.")
    found = await request.app.state.gateway.keys.lookup(key.strip())
    if found is None:
        shown = key.strip()[:6] + "..." if len(key.strip()) > 10 else "***"
        raise unauthorized(f"Incorrect API key provided: {shown}.")
    return found


TenantDep = Annotated[Tenant, Depends(tenant)]
