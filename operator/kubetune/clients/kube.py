"""The operator's only Kubernetes API client (kopf keeps its own for watching).

Async JSON over aiohttp (kopf's own HTTP client, so no new dependency): raw JSON in and out, bounded
timeouts, bounded retries on transient errors, a bounded connection pool per event loop. The credentials
come from the official `kubernetes` client's configuration loading (in-cluster ServiceAccount token, else
$KUBECONFIG / ~/.kube/config: TLS, client certificates, tokens and their refresh hooks).

Why not that client's own ApiClient: it is synchronous, so every call ran in a thread of a 32-thread pool, a
hop there and back (and GIL handoffs) per call; a burst of creates cost the operator about 20% more CPU that way
(bench/operator_scale.py, docs/reconcile.md).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl
import weakref
from typing import Any

import aiohttp
import kubernetes
from requests.utils import should_bypass_proxies  # the official client's own NO_PROXY check

from ..api import constants as c

log = logging.getLogger(__name__)

TIMEOUT = aiohttp.ClientTimeout(sock_connect=5, sock_read=15)  # connect, read seconds
WORKERS = 32  # concurrent API connections per event loop
RETRIES = 3
TRANSIENT = {0, 429, 500, 502, 503, 504}  # 0: no HTTP answer at all
APPLY_PATCH = "application/apply-patch+yaml"  # server-side apply (a JSON body is YAML too)

# kind -> (api prefix, plural). The operator manages only these kinds.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Service"): "services",
    ("v1", "Secret"): "secrets",
    ("v1", "Pod"): "pods",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("batch/v1", "Job"): "jobs",
    ("apps/v1", "Deployment"): "deployments",
    ("kubetune.io/v1alpha1", "FineTuneJob"): "finetunejobs",
    ("kubetune.io/v1alpha1", "ModelDeployment"): "modeldeployments",
    ("kueue.x-k8s.io/v1beta1", "Workload"): "workloads",  # a queued Job's Kueue Workload (spec.active)
    # A ModelDeployment's scaling children (builders/scaling.py).
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkersets",
}


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        self.status = status
        self.reason = reason
        super().__init__(f"{status} {reason}: {message}")


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{PLURALS[(api_version, kind)]}"


def object_path(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{collection_path(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}"


def load_config() -> kubernetes.client.ApiClient:
    """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


def ssl_context(configuration: kubernetes.client.Configuration) -> ssl.SSLContext:
    """TLS as the configuration says: its CA (else the system's), its client certificate, verification off only
    where it says so (kubeconfig `insecure-skip-tls-verify`)."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif configuration.assert_hostname is False:
        context.check_hostname = False
    return context


class Kube:
    """Async JSON access to the API server. `api`: where the credentials come from (default: load_config()).
    One aiohttp session per event loop, opened on first use; `close()` closes the running loop's."""

    def __init__(self, api: kubernetes.client.ApiClient | None = None):
        self._api = api
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = \
            weakref.WeakKeyDictionary()

    @property
    def api(self) -> kubernetes.client.ApiClient:
        if self._api is None:
            self._api = load_config()
        return self._api

    @functools.cached_property
    def _options(self) -> dict[str, Any]:
        """Per-request options from the configuration: its proxy (HTTPS_PROXY, unless NO_PROXY covers the API
        server, as the official client does) and the TLS server name."""
        cfg, options = self.api.configuration, {}
        if cfg.proxy and not should_bypass_proxies(cfg.host, no_proxy=cfg.no_proxy or ""):
            options.update(proxy=cfg.proxy, proxy_headers=cfg.proxy_headers)
        if cfg.tls_server_name:
            options["server_hostname"] = cfg.tls_server_name
        return options

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            cfg = self.api.configuration
            tls = ssl_context(cfg) if cfg.host.startswith("https:") else False
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=WORKERS, ssl=tls), timeout=TIMEOUT,
                                            trust_env=False)
            self._sessions[loop] = session
        return session

    async def close(self) -> None:
        """Close the running event loop's session (the operator's clean-up, the gateway's shutdown)."""
        try:
            session = self._sessions.pop(asyncio.get_running_loop())
        except KeyError:
            return
        await session.close()

    async def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                    query: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
        cfg = self.api.configuration
        headers = {"Accept": "application/json", "Content-Type": content_type}
        # The client's own auth settings: the bearer token under either key it has used, after its refresh hook
        # (a rotated ServiceAccount token file, an exec plugin's new token).
        bearer = cfg.auth_settings().get("BearerToken") or {}
        if bearer.get("value"):
            headers["Authorization"] = bearer["value"]
        try:
            async with self._session().request(method, cfg.host + path, params=query or None, headers=headers,
                                               data=None if body is None else json.dumps(body),
                                               **self._options) as response:
                status, phrase, data = response.status, response.reason or "", await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:  # refused / reset / timed out
            raise KubeError(0, "ConnectionFailed", str(exc) or type(exc).__name__) from None
        if status >= 400:
            raise _error(status, phrase, data)
        return status, json.loads(data) if data else None

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                      query: list[tuple[str, str]] | None = None) -> Any:
        return (await self._request(method, path, body, content_type, query))[1]

    async def _request(self, method: str, path: str, body: Any, content_type: str,
                       query: list[tuple[str, str]] | None) -> tuple[int, Any]:
        """(HTTP status, decoded body), retried on transient errors."""
        for attempt in range(RETRIES):
            try:
                return await self._call(method, path, body, content_type, query)
            except KubeError as exc:
                if exc.status in TRANSIENT and attempt + 1 < RETRIES:
                    await asyncio.sleep(0.2 * 2**attempt)
                    continue
                raise
        raise AssertionError("unreachable")

    async def merge_patch(self, obj: dict[str, Any], patch: dict[str, Any], subresource: str = "") -> dict[str, Any]:
        path = object_path(obj) + (f"/{subresource}" if subresource else "")
        return await self.request("PATCH", path, patch, "application/merge-patch+json")

    async def delete(self, obj: dict[str, Any], propagation: str = "Background") -> None:
        try:
            await self.request("DELETE", object_path(obj), {"propagationPolicy": propagation})
        except KubeError as exc:
            if exc.status != 404:
                raise

    async def apply(self, obj: dict[str, Any], manager: str = c.FIELD_MANAGER) -> tuple[dict[str, Any], bool]:
        """Server-side apply `obj` as the operator's field manager, forcing ownership of every field it sets.

        Creates the object if it is missing; otherwise sets exactly the fields `obj` has (drift on them is
        repaired) and removes the ones this manager applied before and no longer applies. Fields other
        managers set (defaults, a user's extra label) are left alone. Needs patch, and create where the
        object is missing, on the kind. Returns (live object, created?).
        """
        query = [("fieldManager", manager), ("force", "true")]
        status, live = await self._request("PATCH", object_path(obj), obj, APPLY_PATCH, query)
        return live, status == 201

    async def create_or_leave(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create `obj` unless it exists; never changes an existing one. Returns the created object, or None
        when it already existed. For children whose spec the API server will not change after creation
        (a Job's pod template): applying a changed one would be rejected, and leaving out the immutable
        fields from an apply would ask the server to remove them."""
        try:
            return await self.request("POST", collection_path(obj["apiVersion"], obj["kind"], obj["metadata"]["namespace"]),
                                      obj, query=[("fieldManager", c.FIELD_MANAGER)])
        except KubeError as exc:
            if exc.status != 409:
                raise
            return None


def _error(status: int, phrase: str, data: bytes) -> KubeError:
    """The API server's Status object (reason, message) as a KubeError; else the HTTP reason phrase and the body."""
    text = data.decode("utf-8", "replace")
    reason, message = phrase, text
    try:
        decoded = json.loads(text)
        reason, message = decoded.get("reason", reason), decoded.get("message", message)
    except (TypeError, ValueError, AttributeError):
        pass
    return KubeError(status, str(reason), str(message))
