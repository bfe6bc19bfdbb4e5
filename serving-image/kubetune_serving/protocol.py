"""The sidecar's plans: what to load, unload and resolve. Pure.

The wire contract itself (desired set in, ``GET /status`` out) is typed once in
``kubetune.api.sidecar``, shared with the operator; it is re-exported here for the sidecar's modules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from kubetune.api.conditions import SyncState
from kubetune.api.sidecar import SHA256, AdapterReport, DesiredAdapter, DesiredSet, SidecarStatus

__all__ = ["SHA256", "AdapterReport", "DesiredAdapter", "DesiredSet", "SidecarStatus", "SyncPlan", "SyncState",
           "plan_resolve", "plan_sync", "sha_from_served_path"]


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
