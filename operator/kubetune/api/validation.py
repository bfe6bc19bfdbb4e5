"""Turn pydantic errors into messages that name the field, the way `kubectl` users read them."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .common import DATA_URI, DATA_URI_HELP, STORAGE_URI, URI_SCHEMES_HELP

M = TypeVar("M", bound=BaseModel)

_URI_FIELDS = {"uri", "train", "validation"}
_MAX_ERRORS = 10
_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class SpecError(ValueError):
    """An invalid spec. `problems` holds one `path: message` line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems[:_MAX_ERRORS]
        more = len(problems) - len(shown)
        text = "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
        super().__init__(text)


def _path(prefix: str, loc: tuple[Any, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("function-after", "function-before", "function-plain", "function-wrap") or "[" in str(part):
            continue
        elif not _IDENT.match(str(part)):
            path += f"[{json.dumps(str(part))[:40]}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    field = next((p for p in reversed(error["loc"]) if isinstance(p, str)), "")
    value = error.get("input")
    shown = repr(value)[:80] if isinstance(value, (str, int, float, bool)) else None
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        if pattern == STORAGE_URI:
            return f"{shown} is not a valid storage URI. Allowed schemes: s3://, pvc://, file:// (file:// only for `kubetune local`)."
        if pattern == DATA_URI:
            return f"{shown} is not a valid data URI. {DATA_URI_HELP}"
        if field in _URI_FIELDS:
            return f"{shown} is not a valid URI. {URI_SCHEMES_HELP}"
        if "eE" in pattern:
            return f"{shown} is not a decimal number (write it as a string, e.g. \"2e-4\" or \"0.1\")"
        if pattern.startswith("^[a-z0-9]([-a-z0-9]*[a-z0-9])?"):
            return f"{shown} must be lowercase letters, digits and '-' (a DNS name), starting and ending alphanumeric"
        return f"{shown} does not match the pattern {pattern}"
    if kind == "string_type" and isinstance(value, (int, float)):
        return f"must be a string: quote the number, e.g. \"{value}\""
    if kind in ("literal_error", "enum"):
        return f"{shown} is not allowed: {error['msg'].removeprefix('Input should be ')}"
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"])).removeprefix("Value error, ")
    bounds = {"greater_than_equal": "must be >= {ge}", "less_than_equal": "must be <= {le}",
              "too_short": "must have at least {min_length} item(s)", "too_long": "must have at most {max_length} item(s)",
              "string_too_short": "must be at least {min_length} characters", "string_too_long": "must be at most {max_length} characters"}
    if kind in bounds:
        message = bounds[kind].format(**error.get("ctx", {}))
        return f"{message} (got {shown})" if shown is not None and not kind.startswith("string") else message
    message = error["msg"].removeprefix("Value error, ")
    return f"{message} (got {shown})" if shown is not None else message


def problems_of(exc: ValidationError, prefix: str) -> list[str]:
    out = []
    for error in exc.errors(include_url=False):
        out.append(f"{_path(prefix, error['loc'])}: {_message(error)}")
    return out


def parse(model: type[M], data: Any, prefix: str = "spec") -> M:
    """Validate `data` as `model`; raise SpecError naming every bad field (as `prefix.field`)."""
    if not isinstance(data, dict):
        raise SpecError([f"{prefix}: must be an object, got {type(data).__name__}"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(problems_of(exc, prefix)) from None
