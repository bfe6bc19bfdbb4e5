"""hf://[datasets/]org/name[@revision][/folder] on the Hugging Face Hub (read-only), through huggingface_hub.

The grammar is huggingface_hub's own (HfFileSystem); a revision holding '/' is URL-encoded (refs%2Fpr%2F1).
Connection from the environment: $HF_ENDPOINT (else huggingface.co), $HF_TOKEN (else huggingface_hub's own token
lookup), $HF_HUB_OFFLINE. The token is handed to huggingface_hub only; it never appears in a message.

Single files (``read_bytes``, ``download``) are fetched into a private temporary folder and moved to their
destination: no shared cache a half-written or altered file could be served from later. ``local_folder`` (a
whole model, for the trainer) uses the Hub cache ($HF_HOME) as huggingface_hub does, reused across restarts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api import constants as c
from kubetune.api.common import HfRef, parse_hf_uri

from . import register
from .base import Store, clean_rel
from .errors import Denied, InvalidUri, NotFound, StorageError

if TYPE_CHECKING:
    from . import Storage


def offline(env: Mapping[str, str]) -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as set in ``env`` now."""
    from huggingface_hub import constants as hub

    return bool(hub.HF_HUB_OFFLINE) or env.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def hub_error(uri: str, exc: Exception, is_offline: bool) -> StorageError:
    """A huggingface_hub failure as a storage error naming the URI."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return Denied(f"{uri} is gated: accept its license on the Hub and set spec.hubTokenSecretRef")
    if isinstance(exc, RepositoryNotFoundError):
        return NotFound(f"{uri} not found on the Hugging Face Hub (or it is private: set spec.hubTokenSecretRef)")
    if isinstance(exc, RevisionNotFoundError):
        return NotFound(f"{uri}: revision not found on the Hugging Face Hub")
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        if is_offline:
            return NotFound(f"cannot fetch {uri} (HF_HUB_OFFLINE is set and it is not in the local cache)")
        return StorageError(f"cannot fetch {uri} (the Hub is unreachable)")
    if isinstance(exc, EntryNotFoundError):
        return NotFound(f"{uri} does not exist on the Hugging Face Hub")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            return Denied(f"no access to {uri} on the Hugging Face Hub: check spec.hubTokenSecretRef")
        return StorageError(f"cannot fetch {uri} from the Hugging Face Hub: HTTP {status}")
    if isinstance(exc, OSError):
        return StorageError(f"cannot fetch {uri}: {type(exc).__name__}: {exc}")
    return StorageError(f"cannot fetch {uri}: {type(exc).__name__}")


@register
class HfStore(Store):
    schemes = ("hf",)

    def __init__(self, ref: HfRef, storage: Storage) -> None:
        self.ref = ref
        self.storage = storage
        self.uri = ref.uri()

    @classmethod
    def from_uri(cls, uri: str, storage: Storage) -> HfStore:
        try:
            return cls(parse_hf_uri(uri), storage)
        except ValueError as exc:
            raise InvalidUri(str(exc)) from None

    def _hub(self) -> dict[str, Any]:
        return {"repo_id": self.ref.repo_id, "repo_type": self.ref.repo_type, "revision": self.ref.revision,
                "token": self.storage.env.get(c.ENV_HF_TOKEN) or None,
                "endpoint": self.storage.env.get("HF_ENDPOINT") or None}

    def _path(self, rel: str) -> str:
        return "/".join(x for x in (self.ref.path, clean_rel(rel, self.uri)) if x)

    def list(self, rel: str = "") -> list[str]:
        from huggingface_hub import HfApi

        hub = self._hub()
        api = HfApi(endpoint=hub.pop("endpoint"), token=hub.pop("token"))
        key = self._path(rel)
        try:
            files = api.list_repo_files(**hub)
        except Exception as exc:  # noqa: BLE001 - every hub failure is classified
            raise hub_error(self.uri_of(rel), exc, offline(self.storage.env)) from None
        return sorted(name[len(self.ref.path):].lstrip("/") if self.ref.path else name for name in files
                      if name == key or not key or name.startswith(key + "/"))

    def download(self, rel: str, dest: Path) -> None:
        from huggingface_hub import hf_hub_download

        dest.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".kt-hf-", dir=dest.parent))
        try:
            try:
                got = hf_hub_download(filename=self._path(rel), local_dir=scratch, **self._hub())
            except Exception as exc:  # noqa: BLE001 - every hub failure is classified
                raise hub_error(self.uri_of(rel), exc, offline(self.storage.env)) from None
            os.replace(got, dest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def read_bytes(self, rel: str = "") -> bytes:
        with tempfile.TemporaryDirectory(prefix="kt-hf-") as scratch:
            target = Path(scratch) / "object"
            self.download(rel, target)
            return target.read_bytes()

    def child(self, rel: str) -> HfStore:
        ref = self.ref
        return HfStore(HfRef(ref.repo_type, ref.repo_id, ref.revision, self._path(rel)), self.storage)

    def local_folder(self, dest: Path, skip: Sequence[str] = ()) -> Path:
        """The snapshot in the Hub cache ($HF_HOME): ``dest`` is not used."""
        from huggingface_hub import snapshot_download

        inner = self.ref.path
        allow = [inner, f"{inner}/*", f"{inner}/**"] if inner else None
        try:
            folder = Path(snapshot_download(allow_patterns=allow, ignore_patterns=list(skip) or None, **self._hub()))
        except Exception as exc:  # noqa: BLE001 - every hub failure is classified
            raise hub_error(self.uri, exc, offline(self.storage.env)) from None
        return folder / inner if inner else folder
