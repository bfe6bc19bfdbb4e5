"""The operator's only Kubernetes API client (kopf keeps its own for watching).

A thin async wrapper over the official `kubernetes` client's ApiClient: raw JSON in and out (no typed
model deserialisation), bounded timeouts, bounded retries on transient errors, run in a thread so the
event loop never blocks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from typing import Any

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from ..api import constants as c

log = logging.getLogger(__name__)

TIMEOUT = (5, 15)  # connect, read seconds
WORKERS = 32  # concurrent API calls (threads); the connection pool is sized to match
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
    configuration.connection_pool_maxsize = WORKERS
    return kubernetes.client.ApiClient(configuration)


class Kube:
    """Async JSON access to the API server."""

    def __init__(self, api: kubernetes.client.ApiClient | None = None):
        self._api = api
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="kube-api")

    @property
    def api(self) -> kubernetes.client.ApiClient:
        if self._api is None:
            self._api = load_config()
        return self._api

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
              query: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            response = self.api.call_api(
                path, method, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
                _request_timeout=TIMEOUT,
            )
        except ApiException as exc:
            raise _error(exc) from None
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # refused / reset / timed out
            raise KubeError(0, "ConnectionFailed", str(exc)) from None
        data = response.data
        return response.status, json.loads(data) if data else None

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                      query: list[tuple[str, str]] | None = None) -> Any:
        return (await self._request(method, path, body, content_type, query))[1]

    async def _request(self, method: str, path: str, body: Any, content_type: str,
                       query: list[tuple[str, str]] | None) -> tuple[int, Any]:
        """(HTTP status, decoded body), retried on transient errors."""
        for attempt in range(RETRIES):
            try:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._pool, self._call, method, path, body, content_type, query)
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


def _error(exc: ApiException) -> KubeError:
    reason, message = exc.reason or "", exc.body or ""
    try:
        status = json.loads(exc.body)
        reason, message = status.get("reason", reason), status.get("message", message)
    except (TypeError, ValueError):
        pass
    return KubeError(exc.status or 0, str(reason), str(message))
