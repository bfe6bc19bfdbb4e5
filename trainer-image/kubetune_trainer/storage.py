"""Object storage behind one small interface: s3:// (boto3), file:// and pvc:// (a folder on disk).

Why boto3: the AWS-maintained client, already in the image for every S3-compatible store (AWS, MinIO,
SeaweedFS, Ceph RGW); explicit endpoint + path-style addressing; multipart transfers with retries; no
async/fsspec layers between the trainer and the error codes it must map to exit codes.

A `Store` is a prefix ("folder"); paths given to it are relative, '/'-separated.
Errors: missing bucket/key, denied access or bad credentials -> UserError; unreachable endpoint,
timeouts, 5xx -> TransientError (an internal error: the Job retries).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from kubetune.api.constants import DEFAULT_PVC_ROOT, ENV_PVC_ROOT, ENV_S3_ENDPOINT, ENV_S3_REGION

from .errors import TransientError, UserError

_USER_CODES = {"NoSuchBucket", "NoSuchKey", "404", "403", "AccessDenied", "InvalidAccessKeyId",
               "SignatureDoesNotMatch", "AllAccessDisabled", "InvalidBucketName", "AccountProblem"}


@dataclass(frozen=True)
class Uri:
    scheme: str
    netloc: str
    path: str  # without leading or trailing '/'

    @classmethod
    def parse(cls, uri: str) -> Uri:
        parsed = urlparse(uri)
        if not parsed.scheme:
            raise UserError(f"{uri!r} is not a URI (expected s3://, file://, pvc://, hf:// or https://)")
        return cls(parsed.scheme, parsed.netloc, parsed.path.strip("/"))


def local_path(uri: str) -> Path | None:
    """Where a file:// or pvc:// URI lives on this machine; None for remote schemes."""
    u = Uri.parse(uri)
    if u.scheme == "file":
        return Path("/" + u.path)
    if u.scheme == "pvc":
        # pvc://claim/path is mounted at <root>/<claim>/path (root /mnt/pvc in a pod)
        return Path(os.environ.get(ENV_PVC_ROOT) or DEFAULT_PVC_ROOT) / u.netloc / u.path
    return None


class Store:
    """A folder in object storage or on disk. Subclasses implement the primitive operations."""

    uri: str

    def list(self, rel: str = "") -> list[str]:
        """Relative paths of every object under rel (recursive), sorted."""
        raise NotImplementedError

    def download(self, rel: str, dest: Path) -> None:
        raise NotImplementedError

    def upload(self, src: Path, rel: str) -> None:
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes | None:
        """The object's bytes, or None if it does not exist."""
        raise NotImplementedError

    def write_bytes(self, rel: str, data: bytes) -> None:
        raise NotImplementedError

    def delete(self, rels: list[str]) -> None:
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        return self.read_bytes(rel) is not None

    def child(self, rel: str) -> Store:
        raise NotImplementedError

    def uri_of(self, rel: str) -> str:
        return f"{self.uri.rstrip('/')}/{rel.strip('/')}" if rel else self.uri

    # ---- trees -----------------------------------------------------------------------------------

    def download_tree(self, rel: str, dest: Path) -> list[Path]:
        """Copy every object under rel into dest (same relative layout). Returns the local files."""
        prefix = rel.strip("/")
        out = []
        for name in self.list(prefix):
            inner = name[len(prefix):].lstrip("/") if prefix else name
            target = dest / inner
            target.parent.mkdir(parents=True, exist_ok=True)
            self.download(name, target)
            out.append(target)
        return out

    def upload_tree(self, src: Path, rel: str = "") -> list[str]:
        """Upload every file under src to rel/<relative path>. Returns the relative object names."""
        names = []
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            name = "/".join(x for x in (rel.strip("/"), path.relative_to(src).as_posix()) if x)
            self.upload(path, name)
            names.append(name)
        return names


class LocalStore(Store):
    """file:///abs/path and pvc://claim/path: a folder treated like a bucket (atomic writes)."""

    def __init__(self, root: Path, uri: str):
        self.root = root
        self.uri = uri

    def _path(self, rel: str) -> Path:
        path = (self.root / rel.strip("/")) if rel.strip("/") else self.root
        if ".." in Path(rel).parts:
            raise UserError(f"{self.uri_of(rel)}: '..' is not allowed")
        return path

    def list(self, rel: str = "") -> list[str]:
        base = self._path(rel)
        if base.is_file():
            return [rel.strip("/")]
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith(".kt-tmp-"))

    def download(self, rel: str, dest: Path) -> None:
        src = self._path(rel)
        if not src.is_file():
            raise UserError(f"{self.uri_of(rel)} does not exist")
        shutil.copyfile(src, dest)

    def _atomic(self, rel: str, write) -> None:
        target = self._path(rel)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".kt-tmp-{target.name}")
            write(tmp)
            os.replace(tmp, target)
        except PermissionError as exc:
            raise UserError(f"no permission to write {self.uri_of(rel)}: {exc.strerror}") from None
        except OSError as exc:
            raise TransientError(f"cannot write {self.uri_of(rel)}: {exc.strerror or exc}") from None

    def upload(self, src: Path, rel: str) -> None:
        self._atomic(rel, lambda tmp: shutil.copyfile(src, tmp))

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._atomic(rel, lambda tmp: tmp.write_bytes(data))

    def read_bytes(self, rel: str) -> bytes | None:
        path = self._path(rel)
        return path.read_bytes() if path.is_file() else None

    def delete(self, rels: list[str]) -> None:
        for rel in rels:
            with contextlib.suppress(FileNotFoundError):
                self._path(rel).unlink()
        # drop folders left empty
        for rel in rels:
            parent = self._path(rel).parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent

    def child(self, rel: str) -> LocalStore:
        return LocalStore(self._path(rel), self.uri_of(rel))


def s3_client():
    """boto3 client from env: KUBETUNE_S3_ENDPOINT, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID/SECRET
    (boto3 reads the credentials itself; they never pass through this code)."""
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 4, "mode": "standard"},
                    connect_timeout=5, read_timeout=120)
    session = boto3.session.Session()  # a fresh session reads the env now (the default one caches credentials)
    return session.client("s3", endpoint_url=os.environ.get(ENV_S3_ENDPOINT) or None,
                          region_name=os.environ.get(ENV_S3_REGION) or None, config=config)


@contextlib.contextmanager
def s3_errors(action: str, uri: str):
    """Map boto errors to the exit-code contract. Messages never include credentials."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        text = f"cannot {action} {uri}: {code} {error.get('Message', '')}".strip()
        if code in _USER_CODES:
            raise UserError(text + ". Check the URI, the bucket and the storage credentials Secret.") from None
        raise TransientError(text) from None
    except (NoCredentialsError, PartialCredentialsError):
        raise UserError(f"cannot {action} {uri}: no S3 credentials (set spec.storage.credentialsSecretRef "
                        "or the platform default)") from None
    except S3UploadFailedError as exc:
        raise TransientError(f"cannot {action} {uri}: {exc}") from None
    except BotoCoreError as exc:
        raise TransientError(f"cannot {action} {uri}: {exc}") from None


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str, client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client()
        return self._client

    def _key(self, rel: str) -> str:
        return "/".join(x for x in (self.prefix, rel.strip("/")) if x)

    def list(self, rel: str = "") -> list[str]:
        key = self._key(rel)
        out = []
        with s3_errors("list", self.uri_of(rel)):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=key)
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"]
                    # the key itself (a file) or keys below key/ (a folder), not key-suffix siblings
                    if name == key or not key or name.startswith(key + "/"):
                        out.append(name[len(self.prefix):].lstrip("/") if self.prefix else name)
        return sorted(out)

    def download(self, rel: str, dest: Path) -> None:
        with s3_errors("download", self.uri_of(rel)):
            self.client.download_file(self.bucket, self._key(rel), str(dest))

    def upload(self, src: Path, rel: str) -> None:
        with s3_errors("upload to", self.uri_of(rel)):
            self.client.upload_file(str(src), self.bucket, self._key(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        with s3_errors("write", self.uri_of(rel)):
            self.client.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data)

    def read_bytes(self, rel: str) -> bytes | None:
        from botocore.exceptions import ClientError

        with s3_errors("read", self.uri_of(rel)):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

    def delete(self, rels: list[str]) -> None:
        keys = [self._key(r) for r in rels]
        with s3_errors("delete from", self.uri):
            for i in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[i:i + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def child(self, rel: str) -> S3Store:
        return S3Store(self.bucket, self._key(rel), self._client)


def open_store(uri: str) -> Store:
    """The Store for an s3://, file:// or pvc:// URI."""
    u = Uri.parse(uri)
    if u.scheme == "s3":
        return S3Store(u.netloc, u.path)
    path = local_path(uri)
    if path is not None:
        return LocalStore(path, uri.rstrip("/"))
    raise UserError(f"{uri}: storage must be s3://, pvc:// or file://")
