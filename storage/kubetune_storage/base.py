"""``Store``: one folder ("prefix") in some storage, addressed by relative '/'-separated paths.

A scheme implements the primitives (``list``, ``read_bytes``, ``download``; writable ones also ``upload``,
``write_bytes``, ``delete``) plus ``child`` and ``from_uri``; the tree operations come from here. A relative path
of "" means the URI itself (which may name one object).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, ClassVar

from .errors import InvalidUri, NotFound, ReadOnly

if TYPE_CHECKING:
    from . import Storage


def clean_rel(rel: str, where: str = "") -> str:
    """A relative path without leading/trailing '/'; '..' or an absolute path is refused."""
    parts = PurePosixPath(rel.strip("/")).parts if rel.strip("/") else ()
    if ".." in parts or "\\" in rel:
        raise InvalidUri(f"path {rel!r} must stay inside {where or 'its folder'} (no '..')")
    return "/".join(parts)


def join_uri(uri: str, relpath: str) -> str:
    """``uri`` + '/' + a non-empty relative path that must stay inside it."""
    if not relpath.strip("/") or relpath.startswith("/"):
        raise InvalidUri(f"path {relpath!r} must be relative and stay inside {uri}")
    return f"{uri.rstrip('/')}/{clean_rel(relpath, uri)}"


class Store:
    """A folder in object storage, on the Hub, on a web server or on disk."""

    schemes: ClassVar[tuple[str, ...]]  # the URI schemes this class serves (registry keys)
    uri: str

    @classmethod
    def from_uri(cls, uri: str, storage: Storage) -> Store:
        """The store for ``uri`` (its scheme is one of ``schemes``); InvalidUri naming what is wrong."""
        raise NotImplementedError

    # ---- primitives ------------------------------------------------------------------------------

    def list(self, rel: str = "") -> list[str]:
        """Relative paths of every object under rel (recursive), sorted; [rel] if rel is one object."""
        raise NotImplementedError

    def read_bytes(self, rel: str = "") -> bytes:
        """The object's bytes; NotFound if it does not exist."""
        raise NotImplementedError

    def download(self, rel: str, dest: Path) -> None:
        """Copy one object to ``dest`` (its folder is created); NotFound if it does not exist."""
        raise NotImplementedError

    def upload(self, src: Path, rel: str) -> None:
        raise ReadOnly(f"cannot write {self.uri_of(rel)}: {self.schemes[0]}:// is read-only")

    def write_bytes(self, rel: str, data: bytes) -> None:
        raise ReadOnly(f"cannot write {self.uri_of(rel)}: {self.schemes[0]}:// is read-only")

    def delete(self, rels: list[str]) -> None:
        raise ReadOnly(f"cannot delete from {self.uri}: {self.schemes[0]}:// is read-only")

    def child(self, rel: str) -> Store:
        raise NotImplementedError

    @property
    def local_path(self) -> Path | None:
        """Where the folder lies on this machine (file://, pvc://); None for remote stores."""
        return None

    # ---- derived ---------------------------------------------------------------------------------

    def uri_of(self, rel: str) -> str:
        rel = clean_rel(rel, self.uri)
        return f"{self.uri.rstrip('/')}/{rel}" if rel else self.uri

    def read_optional(self, rel: str = "") -> bytes | None:
        """The object's bytes, or None if it does not exist."""
        try:
            return self.read_bytes(rel)
        except NotFound:
            return None

    def exists(self, rel: str = "") -> bool:
        return self.read_optional(rel) is not None

    def download_tree(self, rel: str, dest: Path, skip: Sequence[str] = ()) -> list[Path]:
        """Copy every object under rel into dest (same relative layout), but those whose relative path
        matches a glob in ``skip``. Returns the local files."""
        prefix = clean_rel(rel, self.uri)
        out = []
        for name in self.list(prefix):
            inner = name[len(prefix):].lstrip("/") if prefix else name
            if any(fnmatch.fnmatch(inner, pattern) for pattern in skip):
                continue
            target = dest / inner if inner else dest / PurePosixPath(name).name
            self.download(name, target)
            out.append(target)
        return out

    def upload_tree(self, src: Path, rel: str = "") -> list[str]:
        """Upload every file under src to rel/<relative path>. Returns the relative object names."""
        names = []
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            name = "/".join(x for x in (clean_rel(rel, self.uri), path.relative_to(src).as_posix()) if x)
            self.upload(path, name)
            names.append(name)
        return names

    def local_folder(self, dest: Path, skip: Sequence[str] = ()) -> Path:
        """A folder on this machine holding the whole tree (a model): the folder itself where it is on disk,
        else a copy in ``dest`` (kept, and reused, once complete: a ``<dest>.complete`` marker is written last).
        NotFound if there is nothing under the URI."""
        marker = dest.with_name(dest.name + ".complete")
        if marker.is_file() and dest.is_dir():
            return dest
        if not self.download_tree("", dest, skip):
            raise NotFound(f"{self.uri}: no files under that prefix")
        marker.touch()
        return dest

