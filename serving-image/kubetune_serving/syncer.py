"""The reconcile loop: keep vLLM's LoRA adapters equal to the desired set.

Each pass observes vLLM (``GET /v1/models``), diffs with ``protocol.plan_sync`` and acts: unloads
what is not desired, and starts one task per adapter to fetch + verify + admit + load it. Passes run
on every desired-set change, after every load, and every ``poll_interval`` seconds (which is how a
vLLM restart is noticed: its adapters vanish from /v1/models, and all of them are restored).
Nothing here ever restarts vLLM.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from . import protocol
from .cache import AdapterCache, ManifestMissing
from .protocol import AdapterReport, DesiredAdapter, DesiredSet, SidecarStatus
from .sources import Update
from .storage import StorageError
from .verify import AdmissionError, VerificationError
from .vllm_client import VLLMClient, VLLMError

log = logging.getLogger(__name__)


@dataclass
class Record:
    """What the sidecar knows about one desired adapter."""

    adapter: DesiredAdapter
    state: protocol.SyncState = "Loading"
    message: str | None = "queued"
    loaded_at: str | None = None
    loaded_mono: float = 0.0  # monotonic time of the load, to ignore /v1/models answers older than it
    attempts: int = 0
    retry_at: float = 0.0

    def report(self) -> AdapterReport:
        return AdapterReport(name=self.adapter.name, uri=self.adapter.uri, manifest_sha256=self.adapter.manifest_sha256,
                             state=self.state, message=self.message, loaded_at=self.loaded_at)


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """1, 2, 4, ... seconds (times ``base``), at most ``cap``."""
    return min(cap, base * 2 ** max(0, attempts - 1))


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Syncer:
    def __init__(self, vllm: VLLMClient, cache: AdapterCache, *, poll_interval: float = 1.0,
                 retry_base: float = 1.0, retry_max: float = 60.0) -> None:
        self.vllm = vllm
        self.cache = cache
        self.poll_interval = poll_interval
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.desired: DesiredSet | None = None
        self.source_error: str | None = None
        self.records: dict[str, Record] = {}
        self.vllm_ready = False
        self.last_pass = 0.0  # monotonic; /healthz checks the loop is alive
        self._tasks: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()

    # -------------------------------------------------------------------------- reporting

    def status(self) -> SidecarStatus:
        return SidecarStatus(generation=self.desired.generation if self.desired else None, vllm_ready=self.vllm_ready,
                             message=self.source_error, adapters=[r.report() for _, r in sorted(self.records.items())])

    def ready(self) -> tuple[bool, str]:
        """Readiness: vLLM up, a desired set read, and no adapter still Loading (Failed and Rejected
        ones cannot be loaded now and must not keep a replica out of service)."""
        if not self.vllm_ready:
            return False, "vLLM is not ready"
        if self.desired is None:
            return False, self.source_error or "no desired set read yet"
        loading = sorted(name for name, r in self.records.items() if r.state == "Loading")
        if loading:
            return False, f"adapters still loading: {', '.join(loading)}"
        return True, "ok"

    # ---------------------------------------------------------------------------- inputs

    def apply_update(self, update: Update) -> None:
        self.source_error = update.error
        if update.desired is None:
            if update.error:
                log.warning("desired set: %s (keeping the last one)", update.error)
            return
        desired = update.desired
        if self.desired is not None and desired == self.desired:
            return
        log.info("desired set generation %s: %s", desired.generation, [a.name for a in desired.adapters] or "no adapters")
        self.desired = desired
        wanted = {a.name: a for a in desired.adapters}
        for name in list(self.records):
            if name not in wanted:
                del self.records[name]
        for name, adapter in wanted.items():
            record = self.records.get(name)
            if record is None or record.adapter != adapter:
                self.records[name] = Record(adapter)
        self._wake.set()

    async def consume(self, updates) -> None:
        async for update in updates:
            self.apply_update(update)

    # ------------------------------------------------------------------------------ loop

    async def run(self, updates) -> None:
        consumer = asyncio.create_task(self.consume(updates), name="desired-set-source")
        try:
            while True:
                if consumer.done():
                    consumer.result()  # a source never ends; surface its crash
                    raise RuntimeError("the desired-set source ended")
                self._wake.clear()
                try:
                    await self.reconcile_once()
                except Exception:  # the loop must survive anything; next pass retries
                    log.exception("reconcile pass failed")
                self.last_pass = time.monotonic()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                except TimeoutError:
                    pass
        finally:
            consumer.cancel()
            for task in self._tasks.values():
                task.cancel()

    async def reconcile_once(self) -> None:
        asked = time.monotonic()
        listing = await self.vllm.served_adapters()
        if listing is None:
            if self.vllm_ready:
                log.warning("vLLM at %s is not ready", self.vllm.base_url)
            self.vllm_ready = False
            for record in self.records.values():
                if record.state == "Ready":
                    self._set(record, "Loading", "vLLM is not ready; the adapter is restored when it is back")
            return
        if not self.vllm_ready:
            log.info("vLLM is ready; serving adapters %s", sorted(listing) or "none")
        self.vllm_ready = True
        served = {name: protocol.sha_from_served_path(root, str(self.cache.root)) for name, root in listing.items()}
        for record in self.records.values():
            gone = served.get(record.adapter.name) != record.adapter.manifest_sha256
            if record.state == "Ready" and gone and record.loaded_mono < asked:
                self._set(record, "Loading", "no longer loaded in vLLM (vLLM restarted?); restoring")
                record.retry_at = 0.0
        if self.desired is None:
            return  # never unload anything before the desired set is known

        now = time.monotonic()
        blocked = {name for name, r in self.records.items()
                   if name in self._tasks or r.state == "Rejected" or r.retry_at > now}
        plan = protocol.plan_sync(self.desired.adapters, served, blocked)
        for name in plan.unload:
            try:
                await self.vllm.unload(name)
                log.info("unloaded adapter %s", name)
            except VLLMError as exc:
                log.warning("unloading adapter %s failed (retrying next pass): %s", name, exc)
        for name in plan.keep:
            record = self.records[name]
            if record.state != "Ready" and name not in self._tasks:  # e.g. found loaded after a sidecar restart
                self._ready(record)
        for adapter in plan.load:
            self._tasks[adapter.name] = asyncio.create_task(self._load(adapter), name=f"load-{adapter.name}")
        keep = {a.manifest_sha256 for a in self.desired.adapters} | {s for s in served.values() if s}
        removed = await asyncio.to_thread(self.cache.prune, keep)
        if removed:
            log.info("pruned %d cached adapter version(s) no longer used", len(removed))

    # ---------------------------------------------------------------------- one adapter

    async def _load(self, adapter: DesiredAdapter) -> None:
        try:
            record = self.records.get(adapter.name)
            if record is None or record.adapter != adapter:
                return
            self._set(record, "Loading", "downloading and verifying")
            try:
                fetched = await asyncio.to_thread(self.cache.fetch, adapter)
            except AdmissionError as exc:
                return self._rejected(adapter, str(exc))
            except ManifestMissing as exc:
                return self._failed(adapter, str(exc))
            except VerificationError as exc:
                return self._failed(adapter, f"integrity check failed, not loaded: {exc}")
            except StorageError as exc:
                return self._failed(adapter, f"download failed: {exc}")
            if not self._still_wanted(adapter):
                return
            self._set(record, "Loading", "loading into vLLM")
            try:
                await self.vllm.load(adapter.name, str(fetched.lora_path))
            except VLLMError as exc:
                return self._failed(adapter, f"vLLM did not load it: {exc}")
            if self._still_wanted(adapter):
                self._ready(self.records[adapter.name])
                log.info("loaded adapter %s (%s) fetch=%.3fs%s vllm_load=%.3fs", adapter.name, adapter.uri,
                         fetched.seconds, "" if fetched.downloaded else " (cached)", self.vllm.last_load_seconds or 0)
        except Exception as exc:  # internal error: report it, retry later
            log.exception("loading adapter %s failed", adapter.name)
            self._failed(adapter, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._tasks.pop(adapter.name, None)
            self._wake.set()

    def _still_wanted(self, adapter: DesiredAdapter) -> bool:
        record = self.records.get(adapter.name)
        return record is not None and record.adapter == adapter

    def _ready(self, record: Record) -> None:
        record.loaded_at = now_rfc3339()
        record.loaded_mono = time.monotonic()
        record.attempts = 0
        record.retry_at = 0.0
        self._set(record, "Ready", None)

    def _failed(self, adapter: DesiredAdapter, message: str) -> None:
        record = self.records.get(adapter.name)
        if record is None or record.adapter != adapter:
            return
        record.attempts += 1
        delay = backoff_seconds(record.attempts, self.retry_base, self.retry_max)
        record.retry_at = time.monotonic() + delay
        self._set(record, "Failed", f"{message} (attempt {record.attempts}; retrying in {delay:.0f}s)")

    def _rejected(self, adapter: DesiredAdapter, message: str) -> None:
        record = self.records.get(adapter.name)
        if record is not None and record.adapter == adapter:
            self._set(record, "Rejected", message)

    @staticmethod
    def _set(record: Record, state: protocol.SyncState, message: str | None) -> None:
        if (record.state, record.message) != (state, message):
            level = logging.WARNING if state in ("Failed", "Rejected") else logging.INFO
            log.log(level, "adapter %s: %s%s", record.adapter.name, state, f" ({message})" if message else "")
        record.state = state
        record.message = message
        if state != "Ready":
            record.loaded_at = None
