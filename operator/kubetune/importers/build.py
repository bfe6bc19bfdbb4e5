"""What every importer shares: the notes it hands back, the fatal error, and the spec under construction that
remembers which source key each field came from (so a field kubetune refuses can be named by its source key)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from ..api.common import DECIMAL
from .llamafactory_keys import DEFAULT, OPERATOR, UNMAPPED

KINDS = (UNMAPPED, DEFAULT, OPERATOR)  # the order notes are shown in
REDACTED = "<redacted>"


@dataclass(frozen=True)
class Note:
    """A source key that is not carried into the manifest as is: why, and what kind of note it is."""

    key: str  # the source key, e.g. "deepspeed" or "dataset_info.alpaca_en.subset"
    value: Any  # as in the source (REDACTED for secrets)
    reason: str
    kind: str = UNMAPPED  # UNMAPPED: no equivalent; OPERATOR: kubetune does it itself; DEFAULT: source default written

    def line(self) -> str:
        """One line for people: `key (value): reason`."""
        return f"{self.key} ({show(self.value)}): {self.reason}"


class ImportProblem(ValueError):
    """The source config cannot become a FineTuneJob. `problems` holds one `key: message` line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class Skip(Exception):
    """A value that cannot be carried over: the message says why (it becomes an UNMAPPED note)."""


def show(value: Any, limit: int = 80) -> str:
    """A short, single-line rendering of a source value."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(show(v, limit) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {show(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Build:
    """A spec being built from a source config: fields set with their source key, notes, keys accounted for."""

    config: dict[str, Any]
    spec: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # spec path (camelCase, dotted) -> source key
    notes: list[Note] = field(default_factory=list)
    used: set[str] = field(default_factory=set)  # top-level source keys mapped or noted
    carried: dict[str, list[str]] = field(default_factory=dict)  # source key -> the spec fields it went into

    def put(self, path: str, value: Any, key: str, *folded: str) -> None:
        """Set spec field `path` (e.g. "adapter.rank") to value, remembered as coming from source key `key`
        (and `folded`: other keys it also expresses, e.g. quantization_method in adapter.type qlora)."""
        *parents, leaf = path.split(".")
        node = self.spec
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        self.origins[path] = key
        for source in (key, *folded):
            self.used.add(source)
            self.carried.setdefault(source, []).append(path)

    def drop(self, path: str) -> str:
        """Take field `path` out again; its source key (the caller notes why)."""
        *parents, leaf = path.split(".")
        node = self.spec
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
        self.carried = {k: [p for p in v if p != path] for k, v in self.carried.items()}
        self.carried = {k: v for k, v in self.carried.items() if v}
        return self.origins.pop(path)

    def note(self, key: str, value: Any, reason: str, kind: str = UNMAPPED) -> None:
        self.notes.append(Note(key, value, reason, kind))
        self.used.add(key.split(".", 1)[0])

    def take(self, key: str, path: str, convert, value: Any = None) -> bool:
        """Map source key `key` (or `value` if given) onto `path` with `convert`; a Skip becomes an UNMAPPED note.
        True when the field was set."""
        raw = self.config.get(key) if value is None else value
        try:
            self.put(path, convert(raw), key)
            return True
        except Skip as why:
            self.note(key, raw, str(why))
            return False


# ------------------------------------------------------------------------------------------ converters


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise Skip(f"{show(value)} is not a whole number")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        return int(value)
    raise Skip(f"{show(value)} is not a whole number")


def to_decimal(value: Any) -> str:
    """A number as kubetune's decimal string ("1e-4", "0.1"): spec decimals are strings, never floats."""
    if isinstance(value, bool) or value is None:
        raise Skip(f"{show(value)} is not a number")
    if isinstance(value, str):
        text = value.strip()
        try:
            Decimal(text)
        except InvalidOperation:
            raise Skip(f"{show(value)} is not a number") from None
    elif isinstance(value, float):
        # shortest round-trip text; small rates in scientific notation as people write them (1e-4, not 0.0001)
        text = format(Decimal(repr(value)), "e") if 0 < abs(value) < 1e-3 else repr(value)
    elif isinstance(value, int):
        text = str(value)
    else:
        raise Skip(f"{show(value)} is not a number")
    text = re.sub(r"e([-+]?)0*(\d)", lambda m: "e" + m.group(1).replace("+", "") + m.group(2), text.lower())
    text = re.sub(r"^(\d+)\.0(e|$)", r"\1\2", text)  # 3.0 -> 3, 1.0e-4 -> 1e-4
    if not re.fullmatch(DECIMAL, text):
        raise Skip(f"{show(value)} is not a positive decimal number")
    return text


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise Skip(f"{show(value)} is not true or false")


def to_str(value: Any) -> str:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise Skip(f"{show(value)} is not a string")


def names(value: Any) -> list[str]:
    """A comma-separated list (LLaMA-Factory's spelling) or a YAML list, as names."""
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]
