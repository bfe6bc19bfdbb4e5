"""One storage layer for the trainer and the serving sidecar: a registry of URI schemes, one class per scheme.

    scheme      class                    module    what
    s3://       S3Store                  s3.py     S3-compatible object storage (boto3)
    hf://       HfStore                  hf.py     the Hugging Face Hub, read-only (huggingface_hub)
    https://    HttpsStore               https.py  one object on a web server, read-only
    pvc://      PvcStore                 local.py  a PersistentVolumeClaim mounted in the pod
    file://     FileStore                local.py  a folder on this machine (local runs, tests)

``Storage(env).open(uri)`` (or ``open_store(uri)``) returns the ``Store`` for a URI; every store speaks the same
relative-path interface (base.py) and raises the same errors (errors.py). Heavy clients (boto3,
huggingface_hub) are imported on first use only, so the registry itself is cheap to import.

Adding a scheme (say gs://): one module with one ``Store`` subclass (``schemes = ("gs",)``, ``from_uri`` and the
primitives), decorated with ``@register``, and its import in ``_SCHEME_MODULES`` below. Which schemes each API
field accepts is decided in kubetune.api (the URI patterns of kubetune.api.common), not here.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .base import Store, clean_rel, join_uri
from .errors import Denied, InvalidUri, NotFound, ReadOnly, StorageError

__all__ = ["SCHEMES", "Denied", "InvalidUri", "NotFound", "ReadOnly", "Storage", "Store", "StorageError",
           "clean_rel", "join_uri", "open_store", "register", "scheme_of"]

SCHEMES: dict[str, type[Store]] = {}


def register(cls: type[Store]) -> type[Store]:
    """Make ``cls`` the store of each scheme in ``cls.schemes``."""
    for scheme in cls.schemes:
        if scheme in SCHEMES and SCHEMES[scheme] is not cls:
            raise ValueError(f"scheme {scheme}:// is already served by {SCHEMES[scheme].__name__}")
        SCHEMES[scheme] = cls
    return cls


def scheme_of(uri: str) -> str:
    scheme, sep, _ = uri.partition("://")
    if not sep or not scheme:
        raise InvalidUri(f"{uri!r} is not a storage URI (expected {', '.join(s + '://' for s in sorted(SCHEMES))})")
    return scheme


class Storage:
    """The connection settings (an environment: os.environ by default) and the clients made from them, shared
    by every store opened here. One per process is enough; clients are created on first use."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env: dict[str, str] = dict(os.environ if env is None else env)
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def open(self, uri: str) -> Store:
        """The Store for ``uri``; InvalidUri for an unknown scheme or a malformed URI."""
        scheme = scheme_of(uri)
        cls = SCHEMES.get(scheme)
        if cls is None:
            raise InvalidUri(f"unsupported storage URI {uri!r}: the schemes are "
                             f"{', '.join(s + '://' for s in sorted(SCHEMES))}")
        if ".." in uri.split("://", 1)[1].split("/"):
            raise InvalidUri(f"storage URI {uri!r} must not contain '..' segments")
        return cls.from_uri(uri, self)

    def client(self, name: str, make: Callable[[dict[str, str]], Any]) -> Any:
        """The client ``name`` (e.g. "s3"), made once from this environment by ``make``."""
        with self._lock:
            if name not in self._clients:
                self._clients[name] = make(self.env)
            return self._clients[name]

    # One-object conveniences for callers that hold whole URIs (the sidecar's adapter cache).

    def read_bytes(self, uri: str) -> bytes:
        return self.open(uri).read_bytes("")

    def download(self, uri: str, dest: Path) -> None:
        self.open(uri).download("", dest)

    def local_path(self, uri: str) -> Path | None:
        """Where a file:// or pvc:// URI lies on this machine; None for remote schemes."""
        return self.open(uri).local_path


def open_store(uri: str, env: Mapping[str, str] | None = None) -> Store:
    """``Storage(env).open(uri)``: the store for one URI (its own clients)."""
    return Storage(env).open(uri)


# Each module registers its classes with @register when imported (after `register` exists, hence at the end).
_SCHEME_MODULES = ("local", "s3", "hf", "https")
for _module in _SCHEME_MODULES:
    importlib.import_module(f"{__name__}.{_module}")
