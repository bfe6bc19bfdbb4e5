"""https://host/path (and http:// for tests): one object on a web server, read-only. A web server cannot be
listed, so the URI names exactly one object (``list("")`` is ``[""]``)."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from . import register
from .base import Store, clean_rel
from .errors import Denied, InvalidUri, NotFound, StorageError

if TYPE_CHECKING:
    from . import Storage


@register
class HttpsStore(Store):
    schemes = ("https", "http")

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @classmethod
    def from_uri(cls, uri: str, storage: Storage) -> HttpsStore:
        if not uri.split("://", 1)[1].split("/", 1)[0]:
            raise InvalidUri(f"{uri!r} names no host")
        return cls(uri)

    def list(self, rel: str = "") -> list[str]:
        return [""] if not clean_rel(rel, self.uri) else [clean_rel(rel, self.uri)]

    def download(self, rel: str, dest: Path) -> None:
        uri = self.uri_of(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        request = urllib.request.Request(uri, headers={"User-Agent": "kubetune"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response, dest.open("wb") as out:  # noqa: S310
                shutil.copyfileobj(response, out, 1 << 20)
        except urllib.error.HTTPError as exc:
            text = f"cannot download {uri}: HTTP {exc.code} {exc.reason}"
            if exc.code in (404, 410):
                raise NotFound(text) from None
            if exc.code in (401, 403):
                raise Denied(text) from None
            raise (InvalidUri if 400 <= exc.code < 500 else StorageError)(text) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise StorageError(f"cannot download {uri}: {getattr(exc, 'reason', exc)}") from None

    def read_bytes(self, rel: str = "") -> bytes:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="kt-https-") as scratch:
            self.download(rel, Path(scratch) / "object")
            return (Path(scratch) / "object").read_bytes()

    def child(self, rel: str) -> HttpsStore:
        return HttpsStore(self.uri_of(rel))
