"""The reconcile loop: keep vLLM's LoRA adapters equal to the desired set.

Each pass observes vLLM (``GET /v1/models``), diffs with ``protocol.plan_sync`` and acts: unloads
what is not desired, and starts one task per adapter to fetch + verify + admit + load it. Passes run
on every desired-set change, after every load, and every ``poll_interval`` seconds (which is how a
vLLM restart is noticed: its adapters vanish from /v1/models, and all of them are restored).
Nothing here ever restarts vLLM.

An unpinned adapter (no manifestSha256 in the desired set) is resolved first: a task reads its
manifest.json (``protocol.plan_resolve`` says when: at once, every ``resolve_interval`` seconds, and
before each retry of a failure) and pins the record to that file's sha256; from then on it is
handled like a pinned adapter of that sha. A changed sha (re-published) is loaded in place.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from kubetune.api.admission import AdmissionError
from kubetune.api.conditions import AdapterState, SyncState
from kubetune.api.promotion import GateVerdict, TrialReport
from kubetune.api.sidecar import AdapterReport, DesiredAdapter, DesiredSet, SidecarStatus
from kubetune_storage import StorageError

from . import protocol
from .cache import AdapterCache, ManifestMissing, Resolution
from .sources import Update
from .trial import eval_failed, pending, run_trial
from .verify import VerificationError
from .vllm_client import VLLMClient, VLLMError

log = logging.getLogger(__name__)


@dataclass
class Record:
    """What the sidecar knows about one desired adapter."""

    adapter: DesiredAdapter  # as desired; manifest_sha256 None: unpinned
    state: SyncState = AdapterState.LOADING
    message: str | None = "queued"
    loaded_at: str | None = None
    loaded_mono: float = 0.0  # monotonic time of the load, to ignore /v1/models answers older than it
    attempts: int = 0
    retry_at: float = 0.0
    resolved: Resolution | None = None  # unpinned: its manifest.json as last read (the sha pins it)
    resolved_mono: float | None = None  # unpinned: when last read; None: read it before anything else
    trial: TrialReport | None = None  # a trial entry (a gate run on this pod): its verdict

    @property
    def sha(self) -> str | None:
        """The manifest sha256 served or worked on (None: unpinned, not resolved yet)."""
        return self.adapter.manifest_sha256 or (self.resolved.sha256 if self.resolved else None)

    @property
    def target(self) -> DesiredAdapter:
        """The adapter pinned to ``sha`` (still unpinned while not resolved)."""
        if self.adapter.pinned or self.resolved is None:
            return self.adapter
        return self.adapter.model_copy(update={"manifest_sha256": self.resolved.sha256})

    def report(self) -> AdapterReport:
        return AdapterReport(name=self.adapter.name, uri=self.adapter.uri, manifest_sha256=self.sha,
                             state=self.state, message=self.message, loaded_at=self.loaded_at, trial=self.trial)


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """1, 2, 4, ... seconds (times ``base``), at most ``cap``."""
    return min(cap, base * 2 ** max(0, attempts - 1))


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Syncer:
    def __init__(self, vllm: VLLMClient, cache: AdapterCache, *, poll_interval: float = 1.0,
                 retry_base: float = 1.0, retry_max: float = 60.0, resolve_interval: float = 10.0,
                 pod_name: str | None = None) -> None:
        self.pod_name = pod_name  # trial entries (gates) naming another pod are not this sidecar's
        self.vllm = vllm
        self.cache = cache
        self.poll_interval = poll_interval
        self.resolve_interval = resolve_interval
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.desired: DesiredSet | None = None
        self.source_error: str | None = None
        self.records: dict[str, Record] = {}
        self.vllm_ready = False
        self.vllm_problem: str | None = None  # why vLLM is not ready, when known (it rejects our API key)
        self.in_service = False  # Ready once since vLLM (re)started with every adapter of the desired set loaded
        self.last_pass = 0.0  # monotonic; /healthz checks the loop is alive
        self._tasks: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()

    # -------------------------------------------------------------------------- reporting

    def status(self) -> SidecarStatus:
        return SidecarStatus(generation=self.desired.generation if self.desired else None, vllm_ready=self.vllm_ready,
                             message=self.source_error, adapters=[r.report() for _, r in sorted(self.records.items())])

    def ready(self) -> tuple[bool, str]:
        """Readiness: vLLM up, a desired set read, and no adapter still Loading (Failed and Rejected
        ones cannot be loaded now and must not keep a replica out of service) -- until the replica
        has once been in service. After that, an adapter added later loads while the replica keeps
        serving what it has: every replica loads a new adapter at the same moment, so gating on it
        would take the whole Service down (the operator marks the adapter Ready only once every
        replica has it). A vLLM restart empties vLLM, and the replica starts over."""
        if not self.vllm_ready:
            return False, self.vllm_problem or "vLLM is not ready"
        if self.desired is None:
            return False, self.source_error or "no desired set read yet"
        loading = sorted(name for name, r in self.records.items() if r.state == AdapterState.LOADING)
        if loading and not self.in_service:
            return False, f"adapters still loading: {', '.join(loading)}"
        self.in_service = True
        return True, f"ok; loading {', '.join(loading)}" if loading else "ok"

    # ---------------------------------------------------------------------------- inputs

    def apply_update(self, update: Update) -> None:
        self.source_error = update.error
        if update.desired is None:
            if update.error:
                log.warning("desired set: %s (keeping the last one)", update.error)
            return
        # A trial entry is loaded only by the pod it names (kubetune.api.promotion): the others do not see it.
        desired = update.desired.model_copy(update={"adapters": [
            a for a in update.desired.adapters if a.trial is None or a.trial.pod == self.pod_name]})
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
                try:  # not asyncio.wait_for: on Python 3.11 it can swallow a cancel that races the wake-up
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()
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
            problem = self.vllm.rejected
            if self.vllm_ready or (problem and problem != self.vllm_problem):
                log.warning("vLLM at %s is not ready%s", self.vllm.base_url, f": {problem}" if problem else "")
            self.vllm_ready, self.vllm_problem, self.in_service = False, problem, False
            for record in self.records.values():
                if record.state == AdapterState.READY:
                    self._set(record, AdapterState.LOADING, f"{problem or 'vLLM is not ready'}; the adapter is restored when it is back")
            return
        self.vllm_problem = None
        if not self.vllm_ready:
            log.info("vLLM is ready; serving adapters %s", sorted(listing) or "none")
        self.vllm_ready = True
        served = {name: protocol.sha_from_served_path(root, str(self.cache.root)) for name, root in listing.items()}
        for record in self.records.values():
            gone = served.get(record.adapter.name) != record.sha
            if record.state == AdapterState.READY and gone and record.loaded_mono < asked:
                self._set(record, AdapterState.LOADING, "no longer loaded in vLLM (vLLM restarted?); restoring")
                record.retry_at = 0.0
                self.in_service = False
        if self.desired is None:
            return  # never unload anything before the desired set is known

        now = time.monotonic()
        backoff = {name for name, r in self.records.items() if r.retry_at > now}
        unpinned = {name: r.resolved_mono for name, r in self.records.items() if not r.adapter.pinned}
        for name in protocol.plan_resolve(unpinned, now, self.resolve_interval, set(self._tasks) | backoff):
            adapter = self.records[name].adapter
            self._tasks[name] = asyncio.create_task(self._resolve(adapter), name=f"resolve-{name}")
        blocked = {name for name, r in self.records.items()
                   if name in self._tasks or r.state == AdapterState.REJECTED or name in backoff}
        plan = protocol.plan_sync([self.records[a.name].target for a in self.desired.adapters], served, blocked)
        for name in plan.unload:
            try:
                await self.vllm.unload(name)
                log.info("unloaded adapter %s", name)
            except VLLMError as exc:
                log.warning("unloading adapter %s failed (retrying next pass): %s", name, exc)
        for name in plan.keep:
            record = self.records[name]
            # e.g. found loaded after a sidecar restart; not an unpinned one whose manifest must be read
            # again first (its last read failed: it stays Failed while it still serves)
            pending_read = not record.adapter.pinned and record.resolved_mono is None
            if record.state != AdapterState.READY and name not in self._tasks and not pending_read:
                self._ready(record)
        for adapter in plan.load:
            self._tasks[adapter.name] = asyncio.create_task(self._load(adapter), name=f"load-{adapter.name}")
        keep = {r.sha for r in self.records.values() if r.sha} | {s for s in served.values() if s}
        removed = await asyncio.to_thread(self.cache.prune, keep)
        if removed:
            log.info("pruned %d cached adapter version(s) no longer used", len(removed))

    # ---------------------------------------------------------------------- one adapter

    async def _resolve(self, adapter: DesiredAdapter) -> None:
        """Read an unpinned adapter's manifest.json and pin its record to that sha."""
        try:
            record = self.records.get(adapter.name)
            if record is None or record.adapter != adapter:
                return
            if record.resolved is None:
                self._set(record, AdapterState.LOADING, "reading manifest.json")
            try:
                resolution = await asyncio.to_thread(self.cache.resolve, adapter.uri)
            except ManifestMissing as exc:
                return self._resolve_failed(adapter, str(exc), missing=True)
            except StorageError as exc:
                return self._resolve_failed(adapter, f"cannot read manifest.json: {exc}", missing=False)
            record = self.records.get(adapter.name)
            if record is None or record.adapter != adapter:
                return
            record.resolved_mono = time.monotonic()
            if record.resolved is not None and record.resolved.sha256 == resolution.sha256:
                return
            if record.resolved is None:
                log.info("adapter %s: %s resolved to manifest sha256 %s", adapter.name, adapter.uri, resolution.sha256)
            else:
                log.info("adapter %s: %s was re-published: manifest sha256 %s (was %s); loading it in place",
                         adapter.name, adapter.uri, resolution.sha256, record.resolved.sha256)
            # A new version, as if the desired set pinned a new sha: fresh state, no backoff.
            record.resolved = resolution
            record.attempts = 0
            record.retry_at = 0.0
            self._set(record, AdapterState.LOADING, "queued")
        except Exception as exc:  # internal error: report it, retry later
            log.exception("reading the manifest of adapter %s failed", adapter.name)
            self._resolve_failed(adapter, f"internal error: {type(exc).__name__}: {exc}", missing=False)
        finally:
            self._tasks.pop(adapter.name, None)
            self._wake.set()

    def _resolve_failed(self, adapter: DesiredAdapter, message: str, *, missing: bool) -> None:
        record = self.records.get(adapter.name)
        if record is None or record.adapter != adapter:
            return
        if record.state == AdapterState.READY and not missing:
            # A served adapter stays Ready through a storage hiccup; read again at the next interval.
            record.resolved_mono = time.monotonic()
            log.warning("adapter %s: %s (still serving %s; reading it again in %.0fs)", adapter.name, message,
                        record.sha, self.resolve_interval)
            return
        if record.state == AdapterState.READY:
            message += f"; the loaded version {record.sha} keeps serving"
        self._failed_record(record, message)

    async def _load(self, adapter: DesiredAdapter) -> None:
        try:
            record = self.records.get(adapter.name)
            if record is None or record.target != adapter:
                return
            self._set(record, AdapterState.LOADING, "downloading and verifying")
            raw = record.resolved.raw if not record.adapter.pinned and record.resolved else None
            try:
                fetched = await asyncio.to_thread(self.cache.fetch, adapter, raw)
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
            if adapter.trial is not None and (failed := eval_failed(adapter.trial, fetched.manifest)) is not None:
                record.trial = failed  # a gate's eval part failed: never loaded into vLLM (kubetune.api.promotion)
                return self._rejected(adapter, failed.message or "gate failed")
            self._set(record, AdapterState.LOADING, "loading into vLLM")
            try:
                await self.vllm.load(adapter.name, str(fetched.lora_path))
            except VLLMError as exc:
                return self._failed(adapter, f"vLLM did not load it: {exc}")
            if self._still_wanted(adapter) and adapter.trial is not None:
                record = self.records[adapter.name]
                record.trial = pending(adapter.trial, "running the smoke prompts")
                record.trial = await run_trial(self.vllm, adapter.name, adapter.trial, fetched.manifest)
                log.info("adapter %s: gate %s: %s", adapter.name, record.trial.verdict, record.trial.message)
                if record.trial.verdict == GateVerdict.PENDING:  # vLLM did not answer: load and run it again later
                    return self._failed(adapter, record.trial.message or "the gate did not finish")
            if self._still_wanted(adapter):
                self._ready(self.records[adapter.name])
                log.info("loaded adapter %s (%s, manifest %s) fetch=%.3fs%s vllm_load=%.3fs", adapter.name,
                         adapter.uri, adapter.manifest_sha256, fetched.seconds,
                         "" if fetched.downloaded else " (cached)", self.vllm.last_load_seconds or 0)
        except Exception as exc:  # internal error: report it, retry later
            log.exception("loading adapter %s failed", adapter.name)
            self._failed(adapter, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._tasks.pop(adapter.name, None)
            self._wake.set()

    def _still_wanted(self, adapter: DesiredAdapter) -> bool:
        """``adapter`` (pinned, as handed to _load) is still what its record wants."""
        record = self.records.get(adapter.name)
        return record is not None and record.target == adapter

    def _ready(self, record: Record) -> None:
        record.loaded_at = now_rfc3339()
        record.loaded_mono = time.monotonic()
        record.attempts = 0
        record.retry_at = 0.0
        self._set(record, AdapterState.READY, None)

    def _failed(self, adapter: DesiredAdapter, message: str) -> None:
        if self._still_wanted(adapter):
            self._failed_record(self.records[adapter.name], message)

    def _failed_record(self, record: Record, message: str) -> None:
        if not record.adapter.pinned:
            record.resolved_mono = None  # read manifest.json again before the retry (re-published?)
        record.attempts += 1
        delay = backoff_seconds(record.attempts, self.retry_base, self.retry_max)
        record.retry_at = time.monotonic() + delay
        self._set(record, AdapterState.FAILED, f"{message} (attempt {record.attempts}; retrying in {delay:.0f}s)")

    def _rejected(self, adapter: DesiredAdapter, message: str) -> None:
        if self._still_wanted(adapter):
            self._set(self.records[adapter.name], AdapterState.REJECTED, message)

    @staticmethod
    def _set(record: Record, state: SyncState, message: str | None) -> None:
        if (record.state, record.message) != (state, message):
            level = logging.WARNING if state in (AdapterState.FAILED, AdapterState.REJECTED) else logging.INFO
            log.log(level, "adapter %s: %s%s", record.adapter.name, state, f" ({message})" if message else "")
        record.state = state
        record.message = message
        if state != AdapterState.READY:
            record.loaded_at = None
