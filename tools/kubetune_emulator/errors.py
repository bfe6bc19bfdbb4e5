"""Kubernetes API errors as the real API server reports them: a ``Status`` object + HTTP code."""

from __future__ import annotations

import re
from typing import Any

_FIELD_MESSAGE = re.compile(r"^([A-Za-z0-9_.\[\]/-]+): (.+)$", re.DOTALL)


class ApiError(Exception):
    """An API failure rendered as ``kind: Status`` with ``code``, ``reason`` and ``message``."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if not self.reason:  # e.g. an error the API server did not classify: a bare 500
            del body["reason"]
        if self.details:
            body["details"] = self.details
        return body


def _details(name: str | None, group: str, plural: str) -> dict[str, Any]:
    details: dict[str, Any] = {"group": group, "kind": plural}
    if name:
        details["name"] = name
    return details


def _qualified(group: str, plural: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(group: str, plural: str, name: str | None) -> ApiError:
    what = _qualified(group, plural)
    message = f'{what} "{name}" not found' if name else "the server could not find the requested resource"
    return ApiError(404, "NotFound", message, _details(name, group, plural))


def already_exists(group: str, plural: str, name: str) -> ApiError:
    what = _qualified(group, plural)
    return ApiError(409, "AlreadyExists", f'{what} "{name}" already exists', _details(name, group, plural))


def conflict(group: str, plural: str, name: str, why: str | None = None) -> ApiError:
    what = _qualified(group, plural)
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    message = f'Operation cannot be fulfilled on {what} "{name}": {why}'
    return ApiError(409, "Conflict", message, _details(name, group, plural))


def invalid(group: str, plural: str, name: str | None, why: str,
            causes: list[dict[str, str]] | None = None, kind: str | None = None) -> ApiError:
    """422 Invalid; ``causes`` ({field, message}) is what kubectl prints after 'is invalid:'."""
    what = f"{kind}.{group}" if kind and group else kind or _qualified(group, plural)
    details = _details(name, group, kind or plural)
    if causes is None:
        parts = [_FIELD_MESSAGE.match(part) for part in why.split("; ")]
        causes = [{"field": m[1], "message": m[2]} if m else {"message": part}
                  for m, part in zip(parts, why.split("; "))]
    details["causes"] = [dict(cause, reason="FieldValueInvalid") for cause in causes]
    return ApiError(422, "Invalid", f'{what} "{name or ""}" is invalid: {why}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden(group: str, plural: str, name: str | None, why: str) -> ApiError:
    what = _qualified(group, plural)
    return ApiError(403, "Forbidden", f'{what} "{name or ""}" is forbidden: {why}', _details(name, group, plural))


def method_not_allowed(message: str = "the server does not allow this method on the requested resource") -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")


def invalid_for(rtype: Any, name: str | None, why: str, causes: list[dict[str, str]] | None = None) -> ApiError:
    """422 Invalid naming the resource's Kind, as kubectl shows it: 'The Job "x" is invalid: ...'."""
    return invalid(rtype.group, rtype.plural, name, why, causes, kind=rtype.kind)
