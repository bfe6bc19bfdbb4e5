"""Read and validate training data before any training: JSONL, JSON, CSV, Parquet, and plain text (.txt: one
document per line, as LLaMA-Factory and `datasets`' text loader read it; for text data only).

Every problem is reported as `<file>:<line>: <field message>` (JSONL, CSV) or `<file>[<index>]: ...`
(JSON arrays, Parquet), capped at MAX_PROBLEMS and summarised (blank lines of a JSONL file are skipped,
as every JSONL reader does; line numbers stay the file's own); any problem, or fewer than
MIN_EXAMPLES valid records, fails the job with the user-error exit code. Fewer than WARN_EXAMPLES is
a warning. dataset.columns / dataset.tags (formats.Names) rename the fields; a name that the chosen format
does not read, or that no record has, is an error too (a typo must not silently train on nothing).
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.methods import FORMATS, METHODS

from . import formats
from .errors import DataError

log = logging.getLogger(__name__)

MIN_EXAMPLES = 10
WARN_EXAMPLES = 50
MAX_PROBLEMS = 20
DEFAULT_VALIDATION_SPLIT = 0.05


@dataclass
class Loaded:
    """Validated, normalised records of one dataset role (train or validation)."""

    format: str
    records: list[dict[str, Any]]
    files: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def conversational(self) -> bool:
        return self.format in formats.CHAT_FORMATS or (
            bool(self.records) and isinstance(self.records[0].get("prompt"), list))


# ------------------------------------------------------------------------------------------ readers
# Each yields (location, record or None, problem or None).


def _read_jsonl(path: Path, names: formats.Names) -> Iterator[tuple[str, Any, str | None]]:
    with path.open(encoding="utf-8-sig") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():  # blank or whitespace-only, anywhere: skipped, not a record
                continue
            try:
                yield f"{path.name}:{lineno}", json.loads(line), None
            except json.JSONDecodeError as exc:
                yield f"{path.name}:{lineno}", None, f"not valid JSON: {exc.msg} (column {exc.colno})"


def _read_json(path: Path, names: formats.Names) -> Iterator[tuple[str, Any, str | None]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        yield f"{path.name}:{exc.lineno}", None, f"not valid JSON: {exc.msg} (column {exc.colno})"
        return
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} / {"train": [...]}
    if not isinstance(data, list):
        yield path.name, None, "a .json dataset must hold an array of records (or use JSON Lines, .jsonl)"
        return
    for i, record in enumerate(data):
        yield f"{path.name}[{i}]", record, None


def _read_txt(path: Path, names: formats.Names) -> Iterator[tuple[str, Any, str | None]]:
    field = names.prompt or "text"
    with path.open(encoding="utf-8-sig") as handle:
        for lineno, line in enumerate(handle, 1):
            if line.strip():  # blank lines separate nothing: skipped
                yield f"{path.name}:{lineno}", {field: line.rstrip("\r\n")}, None


def _read_csv(path: Path, names: formats.Names) -> Iterator[tuple[str, Any, str | None]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            yield path.name, None, "CSV file has no header row"
            return
        start = reader.line_num + 1
        for row in reader:
            where = f"{path.name}:{start}"
            start = reader.line_num + 1
            if None in row:
                yield where, None, f"has {len(reader.fieldnames) + len(row[None])} cells, the header has {len(reader.fieldnames)}"
                continue
            record: dict[str, Any] = {k: v for k, v in row.items()
                                      if v != "" or k in ("input", "system", names.query, names.system)}
            for key in names.json_fields():  # nested fields are JSON inside a cell
                value = record.get(key)
                if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
                    try:
                        record[key] = json.loads(value)
                    except json.JSONDecodeError as exc:
                        yield where, None, f"{key} holds invalid JSON: {exc.msg} (column {exc.colno})"
                        break
            else:
                yield where, record, None


def _read_parquet(path: Path, names: formats.Names) -> Iterator[tuple[str, Any, str | None]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - any pyarrow failure is a bad file
        yield path.name, None, f"not a readable Parquet file: {exc}"
        return
    for i, record in enumerate(rows):
        yield f"{path.name}[{i}]", {k: v for k, v in record.items() if v is not None}, None


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet, ".txt": _read_txt}


def read_file(path: Path, names: formats.Names = formats.DEFAULT_NAMES) -> Iterator[tuple[str, Any, str | None]]:
    """(location, record or None, problem or None) for each record of one data file."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        yield path.name, None, f"unsupported file type {path.suffix!r} (use {', '.join(READERS)})"
        return
    try:
        yield from reader(path, names)
    except UnicodeDecodeError as exc:
        yield path.name, None, f"not UTF-8 text (byte {exc.start})"


# ---------------------------------------------------------------------------------------- validate


def choose_format(requested: str, method: str, records: list[Any], names: str,
                   fields: formats.Names = formats.DEFAULT_NAMES) -> str:
    """dataset.format, or for auto: the method's only format, else the format most records look like."""
    accepted = METHODS[method].formats
    if requested != "auto":
        fmt = requested
    elif len(accepted) == 1:
        fmt = accepted[0]
    else:
        votes = Counter(f for f in (formats.detect(r, fields) for r in records) if f)
        if not votes:
            keys = sorted({k for r in records[:50] if isinstance(r, dict) for k in r})[:10]
            expected = "; ".join(f"{FORMATS[f]} ({f})" for f in accepted)
            raise DataError(f"cannot detect the format of {names}: records have keys {keys or 'none'}; "
                            f"expected {expected}")
        fmt = votes.most_common(1)[0][0]
    if fmt not in accepted:
        allowed = ", ".join(accepted)
        raise DataError(f"{names}: method {method} cannot train on {fmt} data (it needs {allowed})")
    return fmt


def check_names(fmt: str, fields: formats.Names, records: list[Any]) -> None:
    """dataset.columns and dataset.tags must fit the format, and each named field must occur in the data:
    a typo would otherwise read as 'missing field' on every record, or silently drop an optional part."""
    problems = [f"dataset.columns.{part} ({name!r}) is not read by {fmt} data (it reads "
                f"{', '.join(formats.COLUMNS_USED[fmt])})"
                for part, name in fields.columns().items() if part not in formats.COLUMNS_USED[fmt]]
    if fields.tags() and fmt not in formats.TAGGED_FORMATS:
        problems.append(f"dataset.tags apply to sharegpt-shaped data, not to {fmt} data")
    present = {k for r in records if isinstance(r, dict) for k in r}
    problems += [f"dataset.columns.{part} names field {name!r}, which no record has (records have "
                 f"{', '.join(sorted(present)[:10]) or 'no fields'})"
                 for part, name in fields.columns().items() if part in formats.COLUMNS_USED[fmt] and name not in present]
    if problems:
        raise DataError("dataset.columns/tags do not fit the data", problems)


def load(files: list[Path], *, fmt: str, method: str, role: str = "train", min_examples: int = MIN_EXAMPLES,
         fields: formats.Names = formats.DEFAULT_NAMES) -> Loaded:
    """Read, detect, validate and normalise. Raises DataError naming file, line and field. `fields`: the
    records' field names (formats.Names.of(spec.dataset): dataset.columns and dataset.tags)."""
    names = ", ".join(p.name for p in files)
    located: list[tuple[str, Any]] = []
    problems: list[str] = []
    seen = bad = 0
    for path in files:
        for where, record, problem in read_file(path, fields):
            seen += 1
            if problem is not None:
                bad += 1
                problems.append(f"{where}: {problem}")
            else:
                located.append((where, record))
    if not located and not problems:
        raise DataError(f"{role} data {names} is empty")
    chosen = choose_format(fmt, method, [r for _, r in located], names, fields) if located else fmt
    texts = [p.name for p in files if p.suffix.lower() == ".txt"]
    if texts and located and chosen != "text":
        raise DataError(f"{', '.join(texts)}: a .txt file holds plain text, one document per line (format text), "
                        f"but this job reads {chosen} data (method {method} trains on {', '.join(METHODS[method].formats)})")
    if located:
        check_names(chosen, fields, [r for _, r in located])
    out: list[dict[str, Any]] = []
    for where, record in located:
        normalised, found = formats.check_record(chosen, record, fields)
        if found:
            bad += 1
            problems += [f"{where}: {p}" for p in found]
        else:
            out.append(normalised)
    if problems:
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS} more problems")
        raise DataError(f"{role} data is invalid: {bad} of {seen} records in {names} have problems "
                        f"(format {chosen})", shown)
    if len(out) < min_examples:
        raise DataError(f"{role} data {names} has only {len(out)} valid example(s); at least {min_examples} are needed")
    warnings = []
    if role == "train" and len(out) < WARN_EXAMPLES:
        warnings.append(f"{role} data has only {len(out)} examples (fewer than {WARN_EXAMPLES}): expect overfitting")
    if out and "prompt" in out[0] and len({isinstance(r["prompt"], list) for r in out}) > 1:
        out = [formats.as_conversational(r) for r in out]
    for warning in warnings:
        log.warning("%s", warning)
    return Loaded(format=chosen, records=out, files=[p.name for p in files], warnings=warnings)


def split(records: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic (seeded) hold-out: (train, validation); at least one example in each."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(records) - 1, max(1, round(len(records) * fraction)))
    held = set(order[:n_eval])
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def to_dataset(records: list[dict[str, Any]]):
    from datasets import Dataset

    return Dataset.from_list(records)
