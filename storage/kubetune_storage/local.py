"""Folders on this machine: file:///abs/path (local runs, tests), pvc://claim/path (a mounted claim) and
configmap://name/key (a key of a ConfigMap mounted into the pod, read-only).

A folder is treated like a bucket: writes are atomic (a hidden temporary file renamed into place), listing skips
those temporaries, and deleting the last file of a folder removes the folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kubetune.api.constants import (
    CONFIGMAP_MAX_BYTES,
    DEFAULT_CONFIGMAP_ROOT,
    DEFAULT_PVC_ROOT,
    ENV_CONFIGMAP_ROOT,
    ENV_PVC_ROOT,
)

from . import register
from .base import Store, clean_rel
from .errors import Denied, InvalidUri, NotFound, ReadOnly, StorageError

if TYPE_CHECKING:
    from . import Storage

TMP_PREFIX = ".kt-tmp-"


class FolderStore(Store):
    """The behaviour both local schemes share; they differ only in where the URI points."""

    def __init__(self, root: Path, uri: str) -> None:
        self.root = root
        self.uri = uri.rstrip("/")

    @property
    def local_path(self) -> Path:
        return self.root

    def _path(self, rel: str) -> Path:
        rel = clean_rel(rel, self.uri)
        return self.root / rel if rel else self.root

    def list(self, rel: str = "") -> list[str]:
        base = self._path(rel)
        if base.is_file():
            return [clean_rel(rel)]
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith(TMP_PREFIX))

    def read_bytes(self, rel: str = "") -> bytes:
        try:
            return self._path(rel).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"{self.uri_of(rel)} does not exist") from None
        except PermissionError as exc:
            raise Denied(f"no permission to read {self.uri_of(rel)}: {exc.strerror}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri_of(rel)}: {exc.strerror or exc}") from None

    def download(self, rel: str, dest: Path) -> None:
        src = self._path(rel)
        if not src.is_file():
            raise NotFound(f"{self.uri_of(rel)} does not exist")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        except OSError as exc:
            raise StorageError(f"cannot copy {self.uri_of(rel)}: {exc.strerror or exc}") from None

    def _atomic(self, rel: str, write) -> None:
        target = self._path(rel)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{TMP_PREFIX}{target.name}")
            write(tmp)
            os.replace(tmp, target)
        except PermissionError as exc:
            raise Denied(f"no permission to write {self.uri_of(rel)}: {exc.strerror}") from None
        except OSError as exc:
            raise StorageError(f"cannot write {self.uri_of(rel)}: {exc.strerror or exc}") from None

    def upload(self, src: Path, rel: str) -> None:
        self._atomic(rel, lambda tmp: shutil.copyfile(src, tmp))

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._atomic(rel, lambda tmp: tmp.write_bytes(data))

    def delete(self, rels: list[str]) -> None:
        for rel in rels:
            with contextlib.suppress(FileNotFoundError):
                self._path(rel).unlink()
        for rel in rels:  # drop folders left empty
            parent = self._path(rel).parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent

    def child(self, rel: str) -> FolderStore:
        return type(self)(self._path(rel), self.uri_of(rel))

    def local_folder(self, dest: Path, skip: Sequence[str] = ()) -> Path:
        """The folder (or file) itself: nothing is copied."""
        if not self.root.exists():
            raise NotFound(f"{self.uri}: no such folder")
        return self.root


@register
class FileStore(FolderStore):
    """file:///abs/path."""

    schemes = ("file",)

    @classmethod
    def from_uri(cls, uri: str, storage: Storage) -> FileStore:
        rest = uri.split("://", 1)[1]
        if not rest.startswith("/"):
            raise InvalidUri(f"file URI {uri!r} must be absolute: file:///path")
        return cls(Path("/" + clean_rel(rest, uri)), uri)


@register
class PvcStore(FolderStore):
    """pvc://claim/path: the claim is mounted at $KUBETUNE_PVC_ROOT/claim (default /mnt/pvc/claim), where
    kubetune.api.common.pvc_mount_path puts it in every pod."""

    schemes = ("pvc",)

    @classmethod
    def from_uri(cls, uri: str, storage: Storage) -> PvcStore:
        claim, _, path = uri.split("://", 1)[1].partition("/")
        if not claim:
            raise InvalidUri(f"storage URI {uri!r} names no claim: pvc://claim/path")
        root = Path(storage.env.get(ENV_PVC_ROOT) or DEFAULT_PVC_ROOT) / claim
        path = clean_rel(path, uri)
        return cls(root / path if path else root, uri)


@register
class ConfigMapStore(FolderStore):
    """configmap://name/key: the operator mounts the key of ConfigMap `name` at $KUBETUNE_CONFIGMAP_ROOT/name/key
    (default /mnt/configmap, kubetune.api.common.configmap_mount_path), optionally: a missing ConfigMap or key is
    a missing file here, reported by name instead of a pod stuck in ContainerCreating. Read-only; at most
    CONFIGMAP_MAX_BYTES (the API server's limit: only a stand-in for it can hand over more)."""

    schemes = ("configmap",)

    @classmethod
    def from_uri(cls, uri: str, storage: Storage) -> ConfigMapStore:
        name, _, key = uri.split("://", 1)[1].partition("/")
        if not name or not key or "/" in key:
            raise InvalidUri(f"ConfigMap URI {uri!r} must name a ConfigMap and one key: configmap://name/key")
        return cls(Path(storage.env.get(ENV_CONFIGMAP_ROOT) or DEFAULT_CONFIGMAP_ROOT) / name / clean_rel(key, uri), uri)

    def local_folder(self, dest: Path, skip: Sequence[str] = ()) -> Path:
        name, key = self.uri.split("://", 1)[1].split("/", 1)
        if not self.root.is_file():
            raise NotFound(f"{self.uri}: no key {key!r} in ConfigMap {name!r}, or no ConfigMap {name!r} in the "
                           f"job's namespace (kubectl create configmap {name} --from-file={key}=<file>)")
        size = self.root.stat().st_size
        if size > CONFIGMAP_MAX_BYTES:
            raise InvalidUri(f"{self.uri} holds {size} bytes: a ConfigMap holds at most {CONFIGMAP_MAX_BYTES} "
                             "bytes (1 MiB); put larger data in object storage (s3://) or a volume (pvc://)")
        return self.root

    def _atomic(self, rel: str, write) -> None:
        raise ReadOnly(f"cannot write {self.uri_of(rel)}: configmap:// is read-only")

    def delete(self, rels: list[str]) -> None:
        raise ReadOnly(f"cannot delete from {self.uri}: configmap:// is read-only")
