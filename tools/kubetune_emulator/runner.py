"""``Emulator``: runs a :class:`KubeEmulator` on 127.0.0.1 in its own thread and event loop."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import copy
import json
import os
import pathlib
import shutil
import ssl
import subprocess
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import aiohttp.web
import yaml

from kubetune_emulator import errors, patching
from kubetune_emulator.recording import RecordedRequest
from kubetune_emulator.registry import ResourceType
from kubetune_emulator.server import KubeEmulator

T = TypeVar("T")


class Emulator:
    """
    A Kubernetes API emulator on a free local port, with a kubeconfig pointing at it.

    Use as a context manager (or ``start()``/``stop()``). All state lives on the emulator's own
    event loop; the in-process helpers below hop onto that loop, so they are thread-safe.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 kubeconfig: str | os.PathLike[str] | None = None, namespace: str = "default",
                 check_schemas: bool = True, rbac: bool = False) -> None:
        self.handler = KubeEmulator(rbac_enabled=rbac)
        self.handler.store.check_schemas = check_schemas
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.namespace = namespace
        self._kubeconfig_arg = pathlib.Path(kubeconfig) if kubeconfig else None
        self._tempdir: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.kubeconfig: str = ""
        # With RBAC the emulator serves HTTPS, like an API server: kubectl (client-go) sends a bearer
        # token only over TLS. The kubeconfig carries the CA; `ca_file` is it as a file.
        self.ca_file: str | None = None
        self._certdir: str | None = None
        self._ssl: ssl.SSLContext | None = None
        if rbac:
            self._certdir = tempfile.mkdtemp(prefix="kube-emulator-tls-")
            self.ca_file, key_file = _self_signed(pathlib.Path(self._certdir), host)
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(self.ca_file, key_file)

    # Lifecycle --------------------------------------------------------------------------------

    def start(self) -> Emulator:
        if self._thread is not None:
            raise RuntimeError("the emulator is already started")
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise RuntimeError("the Kubernetes API emulator failed to start") from self._failure
        self.kubeconfig = str(self._write_kubeconfig())
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop_event is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout=10)
        self._thread = None
        for folder in (self._tempdir, self._certdir):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        self._tempdir = self._certdir = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._failure = exc
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        async with self.handler:
            server = aiohttp.web.Server(self.handler, handler_cancellation=True, access_log=None)
            runner = aiohttp.web.ServerRunner(server, shutdown_timeout=2.0)
            await runner.setup()
            try:
                site = aiohttp.web.TCPSite(runner, self.host, self._requested_port, reuse_address=True,
                                           ssl_context=self._ssl)
                await site.start()
                self.port = runner.addresses[0][1]
                self._ready.set()
                await self._stop_event.wait()
            finally:
                self.handler.close_watches()
                await asyncio.sleep(0)
                await runner.cleanup()

    def _write_kubeconfig(self) -> pathlib.Path:
        path = self._kubeconfig_arg
        if path is None:
            self._tempdir = tempfile.mkdtemp(prefix="kube-emulator-")
            path = pathlib.Path(self._tempdir) / "kubeconfig"
        return self.write_kubeconfig(path, {"token": self.admin_token})

    def write_kubeconfig(self, path: str | os.PathLike[str], user: Mapping[str, Any],
                         namespace: str | None = None) -> pathlib.Path:
        """A kubeconfig for this emulator with the given ``user`` entry (``{"token": ...}``, ``{"tokenFile": ...}``)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": self._cluster_entry()}],
            "users": [{"name": "emulator", "user": dict(user)}],
            "contexts": [{"name": "emulator",
                          "context": {"cluster": "emulator", "user": "emulator",
                                      "namespace": namespace or self.namespace}}],
            "current-context": "emulator",
            "preferences": {},
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _cluster_entry(self) -> dict[str, Any]:
        if self.ca_file is None:
            return {"server": self.url}
        ca = base64.b64encode(pathlib.Path(self.ca_file).read_bytes()).decode()
        return {"server": self.url, "certificate-authority-data": ca}

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context that trusts the emulator's certificate (None when it serves plain HTTP)."""
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None

    # Identities (RBAC) ------------------------------------------------------------------------

    @property
    def rbac(self) -> bool:
        """Whether requests are authenticated and authorized (``Emulator(rbac=True)``)."""
        return self.handler.rbac_enabled

    @property
    def admin_token(self) -> str:
        """The bearer token of the kubeconfig's user (group system:masters: may do anything)."""
        return self.handler.rbac.admin_token

    def token(self, namespace: str, service_account: str, expiration_seconds: int | None = None) -> str:
        """A bound token of the ServiceAccount, like the TokenRequest kubelet makes (404 if it does not exist)."""
        return self.call(lambda: self.handler.rbac.request_token(namespace, service_account,
                                                                 expiration_seconds)["token"])

    def service_account_kubeconfig(self, path: str | os.PathLike[str], namespace: str,
                                   service_account: str) -> pathlib.Path:
        """A kubeconfig acting as system:serviceaccount:<namespace>:<service_account>."""
        return self.write_kubeconfig(path, {"token": self.token(namespace, service_account)}, namespace)

    def used_permissions(self, user: str) -> set[tuple[str, str, str]]:
        """(verb, group, resource[/subresource]) the user was allowed, incl. what escalation checks relied on."""
        return self.handler.rbac.usage(user)

    def used_permissions_by_user(self) -> dict[str, set[tuple[str, str, str]]]:
        return self.handler.rbac.usage_by_user()

    def denials(self, user: str | None = None) -> list[str]:
        """The 403 messages served (to ``user`` only, if given)."""
        return [message for who, message in self.handler.rbac.denials() if user is None or who == user]

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the emulator is not started")
        return f"{'https' if self._ssl else 'http'}://{self.host}:{self.port}"

    # Requests served --------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every HTTP request served so far (a snapshot copy)."""
        return self.handler.request_log.snapshot()

    @property
    def check_schemas(self) -> bool:
        """Whether custom resources are pruned, defaulted and validated by their CRD schema (default: yes)."""
        return self.handler.store.check_schemas

    @check_schemas.setter
    def check_schemas(self, value: bool) -> None:
        self.handler.store.check_schemas = value

    @property
    def request_count(self) -> int:
        return len(self.handler.request_log)

    def reset_requests(self) -> None:
        self.handler.request_log.reset()
        self.handler._requests.clear()

    def request_counts(self) -> dict[tuple[str | None, str | None], int]:
        """Requests per (verb, resource), e.g. ``{("patch", "finetunejobs.kubetune.ai"): 3}``."""
        return self.handler.request_log.counts()

    @property
    def internal_errors(self) -> list[BaseException]:
        """Emulator bugs (served as HTTP 500); tests can assert this stays empty."""
        return list(self.handler.internal_errors)

    # Raw HTTP helpers (recorded like any other request) ---------------------------------------

    def http(self, method: str, path: str, body: Any = None, content_type: str = "application/json", *,
             timeout: float = 10, token: str | None = None) -> tuple[int, Any]:
        """One HTTP request (as admin, or with ``token``); returns (status code, decoded JSON body or None).
        Errors are returned, not raised."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": content_type, "Accept": "application/json",
                                                  "Authorization": f"Bearer {token or self.admin_token}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.ssl_context()) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def watch_events(self, path: str, *, timeout_seconds: float = 0.5, **params: str) -> list[dict[str, Any]]:
        """All events of ``GET path?watch=true&...`` until the server ends the stream after ``timeout_seconds``."""
        query = urllib.parse.urlencode({"watch": "true", "timeoutSeconds": str(timeout_seconds), **params})
        request = urllib.request.Request(f"{self.url}{path}?{query}",
                                         headers={"Authorization": f"Bearer {self.admin_token}"})
        with urllib.request.urlopen(request, timeout=timeout_seconds + 10, context=self.ssl_context()) as response:
            return [json.loads(line) for line in response.read().splitlines() if line.strip()]

    # In-process access (no HTTP, not recorded) ------------------------------------------------

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the emulator's loop (where the state lives); returns a deep copy of its result."""
        if self._loop is None or not self._loop.is_running():
            return copy.deepcopy(fn())

        async def invoke() -> T:
            return copy.deepcopy(fn())  # stored objects are shared with the event log: never hand them out

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(invoke(), self._loop)
        return future.result(timeout=30)

    def resource(self, group: str, version: str, plural: str) -> ResourceType:
        rtype = self.handler.registry.get(group, version, plural)
        if rtype is None:
            raise errors.not_found(group, plural, None)
        return rtype

    def get(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object, or None."""
        return self.call(lambda: self.handler.store.find(self.resource(group, version, plural), namespace, name))

    def list(self, group: str, version: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.call(lambda: self.handler.store.list(self.resource(group, version, plural), namespace))

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        rtype, namespace = self._locate(obj)
        return self.call(lambda: self.handler.store.create(rtype, namespace, obj))

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create, or update like a server-side apply (merge); ``status`` is ignored where it is a subresource."""
        rtype, namespace = self._locate(obj)
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            return self.create(obj)
        result, _ = self.call(lambda: self.handler.store.patch(rtype, namespace, name, patching.APPLY_PATCH,
                                                               dict(obj), manager="emulator"))
        return result

    def patch(self, group: str, version: str, plural: str, namespace: str | None, name: str,
              patch: Any, *, subresource: str | None = None,
              content_type: str = patching.MERGE_PATCH) -> dict[str, Any]:
        """Patch as a client would, e.g. ``subresource="status"`` to play a controller or kubelet."""
        rtype = self.resource(group, version, plural)
        result, _ = self.call(lambda: self.handler.store.patch(rtype, namespace, name, content_type, patch,
                                                               subresource=subresource))
        return result

    def delete(self, group: str, version: str, plural: str, namespace: str | None, name: str,
               propagation_policy: str | None = None) -> dict[str, Any]:
        rtype = self.resource(group, version, plural)
        options = {"propagationPolicy": propagation_policy} if propagation_policy else {}
        return self.call(lambda: self.handler.store.delete(rtype, namespace, name, options))

    def apply_file(self, path: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """Create-or-update every object of a (multi-document) YAML file, in order."""
        text = pathlib.Path(path).read_text()
        return self.apply_all(doc for doc in yaml.safe_load_all(text) if doc)

    def apply_all(self, objs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        results = []
        for obj in objs:
            if obj.get("kind") == "List":
                results.extend(self.apply_all(obj.get("items") or []))
            else:
                results.append(self.apply(obj))
        return results

    def _locate(self, obj: Mapping[str, Any]) -> tuple[ResourceType, str | None]:
        rtype = self.handler.registry.by_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if rtype is None:
            raise errors.not_found("", str(obj.get("kind")), None)
        namespace = (obj.get("metadata") or {}).get("namespace") or (self.namespace if rtype.namespaced else None)
        return rtype, namespace


def _self_signed(folder: pathlib.Path, host: str) -> tuple[str, str]:
    """A throwaway self-signed serving certificate for `host` and localhost (the openssl CLI): (cert = CA, key)."""
    cert_file, key_file = folder / "tls.crt", folder / "tls.key"
    kind = "IP" if host.replace(".", "").isdigit() or ":" in host else "DNS"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", "/CN=kube-emulator", "-addext", f"subjectAltName={kind}:{host},DNS:localhost",
                    "-addext", "basicConstraints=critical,CA:TRUE", "-keyout", str(key_file), "-out", str(cert_file)],
                   check=True, capture_output=True, timeout=30)
    return str(cert_file), str(key_file)
