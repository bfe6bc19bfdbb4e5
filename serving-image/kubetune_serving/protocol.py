"""The wire contract between the operator and the adapter-sync sidecar. Pure: pydantic only.

In:  the desired set, JSON in one ConfigMap key (or a local file):

    {"generation": 7,
     "adapters": [{"name": "support-bot", "uri": "s3://models/team-a/ftj-1",
                   "manifestSha256": "<sha256 of that folder's manifest.json>"},
                  {"name": "by-uri", "uri": "s3://models/team-a/custom", "manifestSha256": null}]}

``manifestSha256`` pins the exact publication (adapters from a FineTuneJob). null or absent: the
adapter is *unpinned* (an adapter given by URI; the operator cannot read object storage). The
sidecar then resolves it itself: it reads ``<uri>/manifest.json``, pins the adapter to that file's
sha256 and proceeds exactly as for a pinned adapter; it re-reads the manifest every
``--resolve-interval`` seconds (and before retrying a failure) and loads a re-published version in
place. No manifest.json at the URI: Failed, retried, never loaded.

Out: ``GET /status`` of every serving pod's sidecar:

    {"generation": 7, "vllmReady": true, "message": null,
     "adapters": [{"name": "support-bot", "uri": "...", "manifestSha256": "...", "state": "Ready",
                   "message": null, "loadedAt": "2026-11-23T10:00:00Z"}]}

``generation`` echoes the desired set the sidecar is working on, so the operator can tell a pod that
has not seen the latest set yet from one that has. Each report's ``manifestSha256`` is the sha of
the version the pod serves or is working on: the pinned one, or for an unpinned adapter the one
it resolved (null only until its manifest.json was first read).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Literal

from kubetune.api.common import DNS_LABEL, STORAGE_URI, KubeModel
from pydantic import Field, model_validator

SHA256 = r"^[a-f0-9]{64}$"

# Loading: being fetched/verified/loaded, or waiting for vLLM (e.g. restored after its restart).
# Ready: vLLM serves it. Failed: a retryable error (storage, integrity, vLLM refused it); retried
# with backoff. Rejected: it can never be served as is (admission check); not retried for that sha.
SyncState = Literal["Loading", "Ready", "Failed", "Rejected"]


class DesiredAdapter(KubeModel):
    """One adapter the pod must serve."""

    name: str = Field(description="OpenAI model name of the adapter.", min_length=1, max_length=63, pattern=DNS_LABEL)
    uri: str = Field(description="Folder holding manifest.json (s3://, pvc://, file://).", max_length=1024,
                     pattern=STORAGE_URI)
    manifest_sha256: str | None = Field(
        default=None, pattern=SHA256,
        description="sha256 of that manifest.json; pins the exact adapter. None: unpinned, the sidecar reads "
                    "the manifest itself (and re-reads it to follow re-publications).")

    @property
    def pinned(self) -> bool:
        return self.manifest_sha256 is not None


class DesiredSet(KubeModel):
    """What every serving pod must have loaded; written by the operator, read by the sidecar."""

    generation: int = Field(description="Increases with every change; echoed in /status.", ge=0)
    adapters: list[DesiredAdapter] = Field(default_factory=list, description="Adapters to serve.", max_length=256)

    @model_validator(mode="after")
    def _unique_names(self) -> DesiredSet:
        names = [a.name for a in self.adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"adapters: duplicate name(s) {', '.join(dupes)}")
        return self


class AdapterReport(KubeModel):
    """What one pod's sidecar reports about one desired adapter."""

    name: str
    uri: str
    manifest_sha256: str | None = Field(description="sha256 of the manifest.json served or worked on; None: an "
                                                    "unpinned adapter whose manifest was not read yet.")
    state: SyncState
    message: str | None = None
    loaded_at: str | None = Field(default=None, description="RFC 3339 time vLLM loaded it (state Ready).")


class SidecarStatus(KubeModel):
    """``GET /status``."""

    generation: int | None = Field(description="Generation of the desired set in force; None before one was read.")
    vllm_ready: bool
    message: str | None = Field(default=None, description="Problem reading the desired set, if any.")
    adapters: list[AdapterReport] = Field(default_factory=list)


# ------------------------------------------------------------------------------------ diffing


@dataclass(frozen=True)
class SyncPlan:
    """What to do to make vLLM's adapters equal to the desired set."""

    unload: list[str] = field(default_factory=list)
    load: list[DesiredAdapter] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)


def plan_sync(desired: list[DesiredAdapter], served: dict[str, str | None], blocked: set[str] = frozenset()) -> SyncPlan:
    """Diff the desired set against what vLLM serves.

    ``desired`` carries each adapter's sha as resolved: an unpinned adapter not resolved yet
    (``manifest_sha256`` None) is neither loaded nor kept, and not unloaded either (whatever vLLM
    serves under its name stays until its manifest was read). ``served`` maps each adapter name
    vLLM lists to the manifest sha256 it was loaded from (None when unknown, e.g. a
    ``--lora-modules`` adapter), ``blocked`` names adapters not to start now (a load or manifest
    read in flight, a retry backoff, Rejected for that sha). An adapter served from another sha is
    loaded again (in place, so it never answers 404 in between).
    """
    wanted = {a.name: a for a in desired}
    unload = sorted(name for name in served if name not in wanted)
    keep = sorted(a.name for a in desired
                  if a.manifest_sha256 is not None and a.name in served and served[a.name] == a.manifest_sha256)
    load = [a for a in sorted(desired, key=lambda a: a.name)
            if a.manifest_sha256 is not None and a.name not in keep and a.name not in blocked]
    return SyncPlan(unload=unload, load=load, keep=keep)


def plan_resolve(unpinned: Mapping[str, float | None], now: float, interval: float,
                 blocked: Set[str] = frozenset()) -> list[str]:
    """Which unpinned adapters' manifest.json to read now (sorted names).

    ``unpinned`` maps each unpinned adapter's name to the (monotonic) time its manifest was last
    read successfully, None if never (or if it must be read again before anything else, e.g. after
    a failure). Due: never read, or read at least ``interval`` seconds ago; ``blocked`` names are
    skipped (a task in flight, a retry backoff).
    """
    return sorted(name for name, read_at in unpinned.items()
                  if name not in blocked and (read_at is None or now - read_at >= interval))


_CACHE_ENTRY = re.compile(r"/([a-f0-9]{64})(/|$)")


def sha_from_served_path(path: str | None, cache_dir: str) -> str | None:
    """The manifest sha256 an adapter was loaded from, read back from its path in the sidecar's
    content-addressed cache (``<cache>/<sha256>/...``); None for a path outside the cache."""
    if not path:
        return None
    prefix = cache_dir.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    match = _CACHE_ENTRY.match("/" + path[len(prefix):])
    return match.group(1) if match else None
