"""Where dataset records keep each part (dataset.columns / dataset.tags) and the small field checks every record
shape uses. Pure; shared by kubetune_trainer.formats (TRL / OpenAI shapes, detection, dispatch) and
kubetune_trainer.llamafactory (LLaMA-Factory's alpaca and sharegpt shapes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Fields that hold nested JSON (a CSV cell then holds it as JSON text).
JSON_FIELDS = ("messages", "conversations", "prompt", "chosen", "rejected", "completion", "history", "tools")

Result = tuple[dict[str, Any] | None, list[str]]  # (normalised record or None, problems naming the field)


@dataclass(frozen=True)
class Names:
    """Where records keep each part: dataset.columns and dataset.tags (LLaMA-Factory's dataset_info.json
    `columns` and `tags`, same names). None: the format's own name."""

    prompt: str | None = None
    query: str | None = None
    response: str | None = None
    history: str | None = None
    messages: str | None = None
    system: str | None = None
    tools: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    kto_tag: str | None = None
    role_tag: str | None = None
    content_tag: str | None = None
    user_tag: str | None = None
    assistant_tag: str | None = None
    observation_tag: str | None = None
    function_tag: str | None = None
    system_tag: str | None = None

    @classmethod
    def of(cls, dataset: Any) -> Names:
        """From a FineTuneJob spec.dataset (kubetune.api Dataset); None gives the formats' own names."""
        values: dict[str, str] = {}
        for part in (getattr(dataset, "columns", None), getattr(dataset, "tags", None)):
            if part is not None:
                values |= part.model_dump(exclude_none=True)
        return cls(**values)

    def columns(self) -> dict[str, str]:
        """The dataset.columns set: {part: field name}."""
        return {f.name: v for f in dataclasses.fields(self) if not f.name.endswith("_tag") or f.name == "kto_tag"
                if (v := getattr(self, f.name))}

    def tags(self) -> dict[str, str]:
        """The dataset.tags set: {tag: value}."""
        return {f.name: v for f in dataclasses.fields(self) if f.name.endswith("_tag") and f.name != "kto_tag"
                if (v := getattr(self, f.name))}

    def json_fields(self) -> tuple[str, ...]:
        """Fields that may hold nested JSON (as text in a CSV cell), under the data's names."""
        mapped = [getattr(self, p) for p in ("messages", "prompt", "chosen", "rejected", "response", "history", "tools")]
        return tuple(dict.fromkeys([*JSON_FIELDS, *filter(None, mapped)]))

    def col(self, part: str, default: str) -> str:
        """The field holding `part` in the data: the mapped name, else the shape's own `default`."""
        return getattr(self, part) or default

    def has(self, record: dict, part: str, *defaults: str) -> bool:
        """Whether the record has `part`: under its mapped name if mapped, else under any of `defaults`."""
        mapped = getattr(self, part)
        return mapped in record if mapped else any(d in record for d in defaults)


DEFAULT_NAMES = Names()


def show(value: Any) -> str:
    """A value as a problem quotes it: repr, cut at 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def type_name(value: Any) -> str:
    """A value's JSON type name (object, array, string, number, boolean, null)."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def objects(items: list, field: str, problems: list[str], keys: str = "") -> Iterator[tuple[int, str, dict]]:
    """(i, "field[i]", item) for each object among `items`; any other item is skipped, its problem added to
    `problems`: "field[i] must be an object[ with <keys>] (got <type>)"."""
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if isinstance(item, dict):
            yield i, where, item
        else:
            problems.append(f"{where} must be an object{' with ' + keys if keys else ''} (got {type_name(item)})")


def string(record: dict, field: str, *, required: bool = True, allow_empty: bool = False) -> tuple[str | None, list[str]]:
    """record[field] as a string, or the problem with it (missing, not a string, empty)."""
    if field not in record or record[field] is None:
        return None, ([f'missing field "{field}"'] if required else [])
    value = record[field]
    if not isinstance(value, str):
        return None, [f"{field} must be a string (got {type_name(value)})"]
    if not allow_empty and not value.strip():
        return None, [f"{field} must not be empty"]
    return value, []
