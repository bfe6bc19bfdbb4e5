"""s3://bucket/prefix through boto3: any S3-compatible store (AWS, MinIO, SeaweedFS, Ceph RGW).

Why boto3: the AWS-maintained client; explicit endpoint + path-style addressing; multipart transfers with retries.
Connection from the environment: $KUBETUNE_S3_ENDPOINT (else AWS), $AWS_DEFAULT_REGION, and the credentials
$AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY (else boto3's own chain). They never appear in a message.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api import constants as c

from . import register
from .base import Store, clean_rel
from .errors import Denied, InvalidUri, NotFound, StorageError

if TYPE_CHECKING:
    from . import Storage

_NOT_FOUND = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "AccountProblem"}
_INVALID = {"InvalidBucketName"}


def s3_client(env) -> Any:
    """A boto3 S3 client configured from ``env`` (a fresh session: it reads the credentials now)."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(aws_access_key_id=env.get(c.ENV_AWS_ACCESS_KEY_ID) or None,
                                    aws_secret_access_key=env.get(c.ENV_AWS_SECRET_ACCESS_KEY) or None)
    return session.client("s3", endpoint_url=env.get(c.ENV_S3_ENDPOINT) or None,
                          region_name=env.get(c.ENV_S3_REGION) or "us-east-1",
                          config=Config(s3={"addressing_style": "path"}, connect_timeout=10, read_timeout=120,
                                        retries={"max_attempts": 4, "mode": "standard"}))


@contextlib.contextmanager
def s3_errors(action: str, uri: str):
    """boto's errors as storage errors; the message names the URI and the S3 error code."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        text = f"cannot {action} {uri}: {code} {error.get('Message', '')}".strip()
        if code in _NOT_FOUND:
            raise NotFound(text) from None
        if code in _DENIED:
            raise Denied(text + ". Check the URI, the bucket and the storage credentials Secret.") from None
        if code in _INVALID:
            raise InvalidUri(text) from None
        raise StorageError(text) from None
    except (NoCredentialsError, PartialCredentialsError):
        raise Denied(f"cannot {action} {uri}: no S3 credentials (set spec.storage.credentialsSecretRef "
                     "or the platform default)") from None
    except (S3UploadFailedError, BotoCoreError) as exc:
        raise StorageError(f"cannot {action} {uri}: {exc}") from None


def _own_context(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run an S3 call in a private copy of the caller's context variables. botocore sets a ContextVar on entry to
    every client call and resets it on exit (botocore.context). A CI run once failed every S3 call of a stretch of
    tests, each with `LookupError: <ContextVar name='_context'>`: that reset found the variable gone, which no
    sequence of set and reset in one context can do. The likely cause is CPython's open gh-148891 (a finalizer run
    by the garbage collector inside ContextVar.set re-enters it and corrupts that context's variables). In a copy
    of its own, a call's set and reset never touch the caller's context, and what goes wrong ends with the call.
    """
    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        return contextvars.copy_context().run(method, *args, **kwargs)

    return run


@register
class S3Store(Store):
    schemes = ("s3",)

    def __init__(self, bucket: str, prefix: str, storage: Storage) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.storage = storage
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @classmethod
    def from_uri(cls, uri: str, storage: Storage) -> S3Store:
        bucket, _, key = uri.split("://", 1)[1].partition("/")
        if not bucket:
            raise InvalidUri(f"storage URI {uri!r} names no bucket: s3://bucket/prefix")
        return cls(bucket, clean_rel(key, uri), storage)

    @property
    def client(self) -> Any:
        return self.storage.client("s3", s3_client)

    def _key(self, rel: str) -> str:
        return "/".join(x for x in (self.prefix, clean_rel(rel, self.uri)) if x)

    @_own_context
    def list(self, rel: str = "") -> list[str]:
        key = self._key(rel)
        out = []
        with s3_errors("list", self.uri_of(rel)):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=key):
                for obj in page.get("Contents", []):
                    name = obj["Key"]
                    # the key itself (a file) or keys below key/ (a folder), not key-suffix siblings
                    if (name == key or not key or name.startswith(key + "/")) and not name.endswith("/"):
                        out.append(name[len(self.prefix):].lstrip("/") if self.prefix else name)
        return sorted(out)

    @_own_context
    def download(self, rel: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with s3_errors("download", self.uri_of(rel)):
            self.client.download_file(self.bucket, self._key(rel), str(dest))

    @_own_context
    def read_bytes(self, rel: str = "") -> bytes:
        with s3_errors("read", self.uri_of(rel)):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read()

    @_own_context
    def upload(self, src: Path, rel: str) -> None:
        with s3_errors("upload to", self.uri_of(rel)):
            self.client.upload_file(str(src), self.bucket, self._key(rel))

    @_own_context
    def write_bytes(self, rel: str, data: bytes) -> None:
        with s3_errors("write", self.uri_of(rel)):
            self.client.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data)

    @_own_context
    def delete(self, rels: list[str]) -> None:
        keys = [self._key(r) for r in rels]
        with s3_errors("delete from", self.uri):
            for i in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[i:i + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def child(self, rel: str) -> S3Store:
        return S3Store(self.bucket, self._key(rel), self.storage)
