"""Read published files from s3://, pvc:// or file:// URIs. Blocking: call from a thread.

* ``s3://bucket/key``: boto3, path-style addressing, endpoint from ``$KUBETUNE_S3_ENDPOINT`` (else
  AWS), region from ``$AWS_DEFAULT_REGION`` (else us-east-1), credentials from boto3's usual chain
  (``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY`` in the pod).
* ``pvc://claim/path``: the claim is mounted at ``$KUBETUNE_PVC_ROOT/claim`` (default /mnt/pvc).
* ``file:///abs/path``: local runs and tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kubetune.api import constants as c


class StorageError(Exception):
    """Reading from storage failed (retryable)."""


class NotFound(StorageError):
    """The object does not exist."""


@dataclass(frozen=True)
class Location:
    scheme: str  # s3, pvc or file
    bucket: str  # the bucket (s3), the claim (pvc), "" (file)
    key: str  # path inside the bucket/claim without leading '/'; the absolute path for file


def parse_uri(uri: str) -> Location:
    """Split a storage URI; refuse other schemes and '..' segments (a URI never climbs out)."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in ("s3", "pvc", "file"):
        raise StorageError(f"unsupported storage URI {uri!r}: use s3://bucket/key, pvc://claim/path or file:///path")
    if ".." in rest.split("/"):
        raise StorageError(f"storage URI {uri!r} must not contain '..' segments")
    if scheme == "file":
        if not rest.startswith("/"):
            raise StorageError(f"file URI {uri!r} must be absolute: file:///path")
        return Location("file", "", rest.rstrip("/") or "/")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"storage URI {uri!r} names no {'bucket' if scheme == 's3' else 'claim'}")
    return Location(scheme, bucket, key.strip("/"))


def join_uri(uri: str, relpath: str) -> str:
    """``uri`` + '/' + a relative path that must stay inside it."""
    parts = PurePosixPath(relpath).parts
    if not parts or PurePosixPath(relpath).is_absolute() or ".." in parts:
        raise StorageError(f"path {relpath!r} must be relative and stay inside {uri}")
    return f"{uri.rstrip('/')}/{'/'.join(parts)}"


class Storage:
    """One per process; the boto3 client is created on first s3:// use."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if env is None else env)
        self._s3: Any = None

    @property
    def pvc_root(self) -> Path:
        return Path(self._env.get(c.ENV_PVC_ROOT) or c.DEFAULT_PVC_ROOT)

    def local_path(self, loc: Location) -> Path:
        if loc.scheme == "file":
            return Path(loc.key)
        return self.pvc_root / loc.bucket / loc.key

    def read_bytes(self, uri: str) -> bytes:
        loc = parse_uri(uri)
        if loc.scheme == "s3":
            try:
                return self._client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
            except Exception as exc:  # botocore's errors; classified below
                raise self._s3_error(uri, exc) from exc
        path = self.local_path(loc)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"{uri} does not exist") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc}") from exc

    def download(self, uri: str, dest: Path) -> None:
        """Copy one object to ``dest`` (its folder is created)."""
        loc = parse_uri(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if loc.scheme == "s3":
            try:
                self._client().download_file(loc.bucket, loc.key, str(dest))
            except Exception as exc:
                raise self._s3_error(uri, exc) from exc
            return
        try:
            shutil.copyfile(self.local_path(loc), dest)
        except FileNotFoundError as exc:
            raise NotFound(f"{uri} does not exist") from exc
        except OSError as exc:
            raise StorageError(f"cannot copy {uri}: {exc}") from exc

    def _client(self) -> Any:
        if self._s3 is None:
            import boto3  # only s3:// needs it
            from botocore.config import Config

            self._s3 = boto3.client(
                "s3",
                endpoint_url=self._env.get(c.ENV_S3_ENDPOINT) or None,
                region_name=self._env.get(c.ENV_S3_REGION) or "us-east-1",
                aws_access_key_id=self._env.get(c.ENV_AWS_ACCESS_KEY_ID) or None,
                aws_secret_access_key=self._env.get(c.ENV_AWS_SECRET_ACCESS_KEY) or None,
                config=Config(s3={"addressing_style": "path"}, connect_timeout=10, read_timeout=120,
                              retries={"max_attempts": 3, "mode": "standard"}),
            )
        return self._s3

    @staticmethod
    def _s3_error(uri: str, exc: Exception) -> StorageError:
        response = getattr(exc, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFound(f"{uri} does not exist")
        if code == "NoSuchBucket":
            return NotFound(f"{uri}: bucket does not exist")
        return StorageError(f"cannot read {uri}: {code or type(exc).__name__}: {exc}")


def download_prefix(uri: str, dest: Path, env: Mapping[str, str] | None = None) -> int:
    """Download every object under an s3:// prefix into ``dest`` (a base model); returns the count.
    Skips the download when ``dest`` holds a ``.complete`` marker from an earlier run."""
    marker = dest / ".complete"
    if marker.exists():
        return 0
    loc = parse_uri(uri)
    if loc.scheme != "s3":
        raise StorageError(f"download_prefix needs an s3:// URI, got {uri!r}")
    storage = Storage(env)
    prefix = f"{loc.key}/" if loc.key else ""
    count = 0
    for page in storage._client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            relative = obj["Key"][len(prefix):]
            if relative and not relative.endswith("/"):
                storage.download(f"s3://{loc.bucket}/{obj['Key']}", dest / join_uri("x", relative)[2:])
                count += 1
    if not count:
        raise NotFound(f"no objects under {uri}")
    marker.touch()
    return count
