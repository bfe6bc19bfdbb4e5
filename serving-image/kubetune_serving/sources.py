"""Where the desired set comes from. Each source is an async iterator of ``Update``s.

* ``FileSource``: a local JSON file, polled (200 ms) for changes; local runs and tests. Replace the
  file atomically (write + rename).
* ``ConfigMapSource``: one key of one ConfigMap, listed then WATCHED through the API
  (``fieldSelector=metadata.name=NAME``), so a change reaches every pod in well under a second —
  a mounted ConfigMap lags by up to a minute. RBAC: get/list/watch on that ConfigMap only
  (``resourceNames: [NAME]``; list/watch with a metadata.name field selector is allowed by it).

A source never ends: errors are reported as ``Update(None, message)`` and retried with backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
from pydantic import ValidationError

from .kubeapi import KubeConnection
from .protocol import DesiredSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Update:
    desired: DesiredSet | None  # None: no valid desired set now; keep what is loaded
    error: str | None = None


def parse_desired(text: str, origin: str) -> Update:
    try:
        return Update(DesiredSet.model_validate_json(text))
    except ValidationError as exc:
        return Update(None, f"invalid desired set in {origin}: {exc.error_count()} error(s): "
                            + "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()))


@dataclass(eq=False)
class FileSource:
    path: Path
    interval: float = 0.2

    async def updates(self) -> AsyncIterator[Update]:
        last_key: object = None
        while True:
            try:
                stat = self.path.stat()
                key: object = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            except FileNotFoundError:
                key = "missing"
            if key != last_key:
                last_key = key
                if key == "missing":
                    yield Update(None, f"desired-set file {self.path} does not exist")
                else:
                    try:
                        text = self.path.read_text()
                    except OSError as exc:
                        yield Update(None, f"cannot read desired-set file {self.path}: {exc}")
                    else:
                        yield parse_desired(text, str(self.path))
            await asyncio.sleep(self.interval)


@dataclass(eq=False)
class ConfigMapSource:
    connection: KubeConnection
    namespace: str
    name: str
    key: str
    watch_timeout: int = 290
    max_backoff: float = 30.0

    @property
    def origin(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name} key {self.key}"

    @property
    def url(self) -> str:
        return f"{self.connection.server}/api/v1/namespaces/{quote(self.namespace)}/configmaps"

    def _params(self, **extra: str) -> dict[str, str]:
        return {"fieldSelector": f"metadata.name={self.name}", **extra}

    def parse(self, obj: dict | None) -> Update:
        if obj is None:
            return Update(None, f"ConfigMap {self.namespace}/{self.name} does not exist")
        data = obj.get("data") or {}
        if self.key not in data:
            return Update(None, f"{self.origin}: no such key (keys: {sorted(data)})")
        return parse_desired(data[self.key], self.origin)

    async def updates(self) -> AsyncIterator[Update]:
        backoff = 0.5
        connector = aiohttp.TCPConnector(ssl=self.connection.ssl_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                try:
                    version, obj = await self._list(session)
                    yield self.parse(obj)
                    backoff = 0.5
                    while version is not None:  # watch; None means: relist
                        started = asyncio.get_running_loop().time()
                        async for kind, obj, resume_from in self._watch(session, version):
                            version = resume_from
                            if kind in ("ADDED", "MODIFIED"):
                                yield self.parse(obj)
                            elif kind == "DELETED":
                                yield self.parse(None)
                        if asyncio.get_running_loop().time() - started < 1.0:
                            await asyncio.sleep(0.5)  # a server that ends watches at once: don't spin
                except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
                    message = f"cannot read {self.origin}: {type(exc).__name__}: {exc}"
                    log.warning("%s; retrying in %.1fs", message, backoff)
                    yield Update(None, message)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)

    async def _list(self, session: aiohttp.ClientSession) -> tuple[str | None, dict | None]:
        async with session.get(self.url, params=self._params(), headers=self.connection.headers(),
                               timeout=aiohttp.ClientTimeout(total=30)) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, resp.history, status=resp.status,
                                                  message=(await resp.text())[:500])
            body = await resp.json()
        items = body.get("items") or []
        return body.get("metadata", {}).get("resourceVersion"), (items[0] if items else None)

    async def _watch(self, session: aiohttp.ClientSession, version: str) -> AsyncIterator[tuple[str, dict, str | None]]:
        """Yields (type, object, resourceVersion to resume from); that version is None after a 410."""
        params = self._params(watch="true", resourceVersion=version, allowWatchBookmarks="true",
                              timeoutSeconds=str(self.watch_timeout))
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.watch_timeout + 30)
        async with session.get(self.url, params=params, headers=self.connection.headers(), timeout=timeout) as resp:
            if resp.status == 410:
                yield "GONE", {}, None
                return
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, resp.history, status=resp.status,
                                                  message=(await resp.text())[:500])
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:  # our resourceVersion is too old: relist
                            yield "GONE", {}, None
                            return
                        raise ValueError(f"watch error: {obj.get('message') or obj}")
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    yield kind, obj, version
