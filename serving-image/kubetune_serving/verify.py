"""Integrity (sha256) checks of a published adapter. Pure except ``sha256_file``.

Integrity failures (``VerificationError``) mean the stored bytes are not what was published: the
adapter is Failed and retried with backoff (storage may be repaired). Admission -- can vLLM ever
serve it -- is ``kubetune.api.admission``, shared with the operator (an ``AdmissionError`` there
makes the adapter Rejected for that manifest). Every message names the value found and the value
expected.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from kubetune.api.manifest import AdapterManifest, ManifestFile
from pydantic import ValidationError


class VerificationError(Exception):
    """The bytes do not match what the manifest (or the desired set) pins."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def parse_manifest(raw: bytes, expected_sha256: str) -> AdapterManifest:
    """Check manifest.json against the desired set's manifestSha256, then parse it."""
    actual = sha256_bytes(raw)
    if actual != expected_sha256:
        raise VerificationError(
            f"manifest.json sha256 {actual} does not match the desired manifestSha256 {expected_sha256} "
            "(re-published or altered since the deployment resolved it)"
        )
    try:
        return AdapterManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise VerificationError(f"manifest.json is not a valid adapter manifest: {exc}") from exc


def adapter_files(manifest: AdapterManifest) -> list[ManifestFile]:
    """The manifest's files under the adapter folder (what vLLM loads); paths must stay inside it."""
    folder = PurePosixPath(manifest.adapter.path)
    files = []
    for entry in manifest.files:
        path = PurePosixPath(entry.path)
        if path.is_absolute() or ".." in path.parts:
            raise VerificationError(f"manifest.json lists {entry.path!r}: paths must be relative, without '..'")
        if folder in path.parents:
            files.append(entry)
    names = {PurePosixPath(f.path).name for f in files}
    for required in ("adapter_config.json", "adapter_model.safetensors"):
        if required not in names:
            raise VerificationError(
                f"manifest.json lists no {manifest.adapter.path}/{required}: found {sorted(names) or 'no files'} "
                f"under {manifest.adapter.path}/"
            )
    return sorted(files, key=lambda f: f.path)


def verify_file(path: Path, entry: ManifestFile) -> None:
    size = path.stat().st_size
    if size != entry.size:
        raise VerificationError(f"{entry.path}: size {size} bytes does not match the manifest's {entry.size}")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise VerificationError(f"{entry.path}: sha256 {actual} does not match the manifest's {entry.sha256}")
