"""What can go wrong in storage, by who can fix it.

``user_fault``: retrying cannot help until someone fixes the URI, the data or the credentials (the trainer exits
with the user-error code). Otherwise the failure is the infrastructure's and may pass (the trainer exits with the
internal-error code and is retried; the sidecar retries with backoff either way). Messages name the URI and never
carry credentials.
"""

from __future__ import annotations


class StorageError(Exception):
    """Storage is unreachable, timed out or failed (5xx): may succeed on retry."""

    user_fault = False


class NotFound(StorageError):
    """The object, prefix, bucket, repository or revision does not exist."""

    user_fault = True


class Denied(StorageError):
    """No access: missing or wrong credentials, no permission, a gated repository."""

    user_fault = True


class InvalidUri(StorageError, ValueError):
    """The URI is malformed, of an unknown scheme, or climbs out of its folder."""

    user_fault = True


class ReadOnly(StorageError):
    """A write to a scheme that is read-only here (hf://, https://)."""

    user_fault = True
