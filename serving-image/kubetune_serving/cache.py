"""A content-addressed local cache of verified adapters. Blocking: call from a thread.

    <cache>/<manifestSha256>/manifest.json
    <cache>/<manifestSha256>/<adapter.path>/...     the folder handed to vLLM (lora_path)

An entry exists only once every file in it matched the manifest (it is assembled in a
``.partial-*`` folder and renamed into place). vLLM reads the same path, so the cache must be a
volume mounted at the same path in the vLLM and the sidecar containers. Because the path carries
the sha, the sidecar can tell from vLLM's ``/v1/models`` (``root``) which version of each adapter is
loaded, even after the sidecar itself restarted.

An unpinned adapter (no manifestSha256 in the desired set) is first ``resolve``d: one read of its
manifest.json, whose sha256 then pins it; ``fetch`` is handed those same bytes.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kubetune.api import storage_layout as layout
from kubetune.api.admission import AdapterFacts, AdmissionError, ServingTarget, admit, admit_adapter_config
from kubetune.api.manifest import AdapterManifest
from kubetune.api.sidecar import SHA256, DesiredAdapter
from kubetune_storage import NotFound, Storage, join_uri

from .verify import VerificationError, adapter_files, parse_manifest, sha256_bytes, verify_file

log = logging.getLogger(__name__)
PARTIAL_PREFIX = ".partial-"


class ManifestMissing(VerificationError):
    """No manifest.json at the URI: the adapter is not published (yet)."""


@dataclass(frozen=True)
class Resolution:
    """An unpinned adapter's manifest.json as read now: its sha256 pins the adapter."""

    sha256: str
    raw: bytes


@dataclass(frozen=True)
class Fetched:
    lora_path: Path
    manifest: AdapterManifest
    downloaded: bool  # False: served from the cache (re-verified)
    seconds: float


class AdapterCache:
    def __init__(self, root: Path, storage: Storage, admission: ServingTarget) -> None:
        self.root = root
        self.storage = storage
        self.admission = admission
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(PARTIAL_PREFIX + "*"):  # left by a sidecar that died mid-download
            shutil.rmtree(stale, ignore_errors=True)

    def entry(self, sha: str) -> Path:
        return self.root / sha

    def read_manifest(self, uri: str) -> bytes:
        """The bytes of ``<uri>/manifest.json``; ManifestMissing when there is none."""
        manifest_uri = join_uri(uri, layout.MANIFEST)
        try:
            return self.storage.read_bytes(manifest_uri)
        except NotFound as exc:
            raise ManifestMissing(
                f"no {layout.MANIFEST} at {manifest_uri}: the adapter is not published (yet), "
                "and an adapter without its manifest does not exist"
            ) from exc

    def resolve(self, uri: str) -> Resolution:
        """Pin an unpinned adapter: read its manifest.json once and hash it. Raises ManifestMissing or
        storage.StorageError. The manifest is checked (parsed, admitted) by ``fetch``, as for a
        pinned adapter."""
        raw = self.read_manifest(uri)
        return Resolution(sha256_bytes(raw), raw)

    def fetch(self, adapter: DesiredAdapter, manifest_raw: bytes | None = None) -> Fetched:
        """Download (or re-verify the cached copy), check integrity, admit. Raises ManifestMissing,
        VerificationError, AdmissionError or storage.StorageError; never leaves unverified files
        where vLLM could load them. ``adapter`` must be pinned (resolved); ``manifest_raw``: its
        manifest.json as just read by ``resolve`` (else it is read from storage)."""
        if adapter.manifest_sha256 is None:
            raise ValueError(f"adapter {adapter.name} is not pinned: resolve it first")
        started = time.monotonic()
        raw = manifest_raw if manifest_raw is not None else self.read_manifest(adapter.uri)
        manifest = parse_manifest(raw, adapter.manifest_sha256)
        admit(AdapterFacts.from_manifest(manifest), self.admission)  # the operator's check, on the manifest itself
        files = adapter_files(manifest)

        final = self.entry(adapter.manifest_sha256)
        if final.is_dir():
            try:
                self._verify_and_admit(final, manifest, files)
                return Fetched(final / manifest.adapter.path, manifest, False, time.monotonic() - started)
            except VerificationError as exc:
                log.warning("cached %s failed verification (%s): downloading again", final, exc)
                shutil.rmtree(final, ignore_errors=True)

        partial = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{adapter.manifest_sha256[:12]}-", dir=self.root))
        try:
            for entry in files:
                dest = partial / entry.path
                try:
                    self.storage.download(join_uri(adapter.uri, entry.path), dest)
                except NotFound as exc:
                    raise VerificationError(f"{entry.path} is listed in the manifest but missing in storage: {exc}") from exc
                verify_file(dest, entry)
            (partial / layout.MANIFEST).write_bytes(raw)
            self._admit_config(partial, manifest)
            try:
                partial.rename(final)
            except OSError:  # a concurrent fetch of the same sha won; its copy is verified too
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return Fetched(final / manifest.adapter.path, manifest, True, time.monotonic() - started)

    def _verify_and_admit(self, folder: Path, manifest: AdapterManifest, files: list) -> None:
        for entry in files:
            path = folder / entry.path
            if not path.is_file():
                raise VerificationError(f"{entry.path} is missing from the cache")
            verify_file(path, entry)
        self._admit_config(folder, manifest)

    def _admit_config(self, folder: Path, manifest: AdapterManifest) -> None:
        config_path = folder / manifest.adapter.path / "adapter_config.json"
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise AdmissionError(f"{manifest.adapter.path}/adapter_config.json is not readable JSON: {exc}") from exc
        admit_adapter_config(config, max_lora_rank=self.admission.max_lora_rank)

    def prune(self, keep: set[str]) -> list[str]:
        """Delete complete entries whose sha is not in ``keep``; returns the deleted shas."""
        removed = []
        for child in sorted(self.root.iterdir()):
            if child.is_dir() and re.match(SHA256, child.name) and child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child.name)
        return removed
