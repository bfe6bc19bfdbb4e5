"""Label and field selectors with the syntax of the Kubernetes API (``labelSelector=``, ``fieldSelector=``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from kubetune_emulator.errors import bad_request

Matcher = Callable[[Mapping[str, Any]], bool]

_SET_RE = re.compile(r"^(?P<key>[^\s!=<>]+)\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)$")
_CMP_RE = re.compile(r"^(?P<key>[^\s!=<>]+)\s*(?P<op>==|!=|=|<|>)\s*(?P<value>[^\s]*)$")
_EXISTS_RE = re.compile(r"^(?P<neg>!?)\s*(?P<key>[^\s!=<>()]+)$")


def _split_requirements(text: str) -> list[str]:
    """Split on commas that are not inside ``in (...)`` parentheses."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [part for part in parts if part]


def _requirement(text: str, *, what: str) -> Callable[[Mapping[str, str]], bool]:
    if match := _SET_RE.match(text):
        key, op = match["key"], match["op"]
        values = {value.strip() for value in match["values"].split(",") if value.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _CMP_RE.match(text):
        key, op, value = match["key"], match["op"], match["value"]
        if op in ("=", "=="):
            return lambda labels: labels.get(key) == value
        if op == "!=":
            return lambda labels: labels.get(key) != value
        try:
            number = int(value)
        except ValueError:
            raise bad_request(f"unable to parse requirement: {text!r}: {value!r} is not an integer") from None
        sign = -1 if op == "<" else 1
        return lambda labels: (found := _int(labels.get(key))) is not None and (found - number) * sign > 0
    if match := _EXISTS_RE.match(text):
        key = match["key"]
        if match["neg"]:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise bad_request(f"unable to parse requirement: invalid {what} selector: {text!r}")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_label_selector(text: str | None) -> Matcher | None:
    """Compile a label selector (``a=b,c!=d,e in (f,g),!h``) into a matcher of whole objects."""
    if not text:
        return None
    requirements = [_requirement(part, what="label") for part in _split_requirements(text)]

    def matches(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(requirement(labels) for requirement in requirements)

    return matches


def _field_value(obj: Mapping[str, Any], path: str) -> str | None:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_field_selector(text: str | None) -> Matcher | None:
    """
    Compile a field selector (``metadata.name=x,metadata.namespace!=y``).

    Any dotted path is accepted (more lenient than the real server, which only
    knows a few fields per resource); only ``=``, ``==`` and ``!=`` are supported.
    """
    if not text:
        return None
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for part in _split_requirements(text):
        match = _CMP_RE.match(part)
        if not match or match["op"] not in ("=", "==", "!="):
            raise bad_request(f"invalid field selector: {part!r}")
        path, op, expected = match["key"], match["op"], match["value"]
        if op == "!=":
            checks.append(lambda obj, p=path, e=expected: _field_value(obj, p) != e)
        else:
            checks.append(lambda obj, p=path, e=expected: _field_value(obj, p) == e)

    def matches(obj: Mapping[str, Any]) -> bool:
        return all(check(obj) for check in checks)

    return matches


def combine(*matchers: Matcher | None) -> Matcher | None:
    active = [matcher for matcher in matchers if matcher is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]
    return lambda obj: all(matcher(obj) for matcher in active)
