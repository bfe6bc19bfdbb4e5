"""LLaMA-Factory datasets -> spec.dataset: `dataset` / `eval_dataset` names looked up in dataset_info.json, each
entry's source (file_name under --data-uri-prefix, hf_hub_url, cloud_file_name), formatting, ranking, columns and
tags. The dataset_info.json grammar is LLaMA-Factory's data/README.md; the columns and tags keep their names in
spec.dataset.columns / spec.dataset.tags (camelCase)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from pydantic.alias_generators import to_camel

from ..api.common import DATA_URI
from ..api.finetunejob import DatasetColumns, DatasetTags
from .build import Build, ImportProblem, Skip, names, show, to_decimal
from .llamafactory_keys import DEFAULT, ENTRY_NOT_CARRIED, UNKNOWN_REASON

ONLINE = "ONLINE"  # dataset_dir: ONLINE -> dataset names are Hugging Face Hub ids
FILE_TYPES = (".json", ".jsonl", ".csv", ".parquet")  # what kubetune reads; .txt for text data only
MULTIMODAL = {"images", "videos", "audios"}
# LLaMA-Factory: a ranking dataset trains only in the reward/DPO stages, a non-ranking one only in the others.
RANKING_METHODS = {"dpo", "orpo"}
# The record format of a dataset, by kubetune method: LLaMA-Factory's formatting only matters for SFT.
_METHOD_FORMAT = {"cpt": "text", "dpo": "preference", "orpo": "preference", "kto": "unpaired"}
_MAPPED_ENTRY_KEYS = {"file_name", "hf_hub_url", "cloud_file_name", "script_url", "folder", "formatting", "ranking",
                      "columns", "tags"}


def map_datasets(b: Build, info: dict[str, Any] | None, method: str, prefix: str | None) -> None:
    """Set dataset.train/format/columns/tags (from `dataset`), dataset.validation (from `eval_dataset`) or
    dataset.validationSplit (from `val_size`); note what does not fit."""
    online = b.config.get("dataset_dir") == ONLINE
    train_names = names(b.config.get("dataset"))
    if not train_names:
        raise ImportProblem(["dataset: no dataset named: kubetune needs the training data"])
    shape = _resolve(b, "dataset", train_names[0], info, online, method, prefix)
    b.put("dataset.train", shape.pop("uri"), "dataset")
    for field, value in shape.items():
        b.put(f"dataset.{field}", value, "dataset")
    for other in train_names[1:]:
        b.note("dataset", other, f"kubetune trains on one dataset URI (dataset.train, a file or a folder): only "
               f"{train_names[0]!r} is mapped. To train on both, put their files in one folder with the same record "
               "shape and set dataset.train to that folder")

    eval_names = names(b.config.get("eval_dataset"))
    if eval_names:
        eval_shape = _resolve(b, "eval_dataset", eval_names[0], info, online, method, prefix)
        uri = eval_shape.pop("uri")
        if eval_shape != shape:
            b.note("eval_dataset", eval_names[0], "its records are shaped differently from the training data's "
                   "(format, columns or tags), and kubetune reads both with one dataset.format/columns/tags: "
                   "convert it and set dataset.validation")
        else:
            b.put("dataset.validation", uri, "eval_dataset")
        for other in eval_names[1:]:
            b.note("eval_dataset", other, "kubetune evaluates on one dataset URI (dataset.validation): only "
                   f"{eval_names[0]!r} is mapped")
    _val_size(b)


def _val_size(b: Build) -> None:
    value = b.config.get("val_size")
    if "dataset.validation" in b.origins:
        if value:
            b.note("val_size", value, "dataset.validation (from eval_dataset) is set, and kubetune takes one or the other")
        return
    if value is None or value == 0:
        b.note("val_size", "not set" if value is None else value, "LLaMA-Factory evaluates nothing without val_size; kubetune always holds out 5% of "
               "the training data (at least 1 example) to compare the model before and after training: set "
               "dataset.validationSplit to choose the share", DEFAULT)
        return
    try:
        split = to_decimal(value)
    except Skip as why:
        b.note("val_size", value, str(why))
        return
    if 0 < Decimal(split) < Decimal("0.5"):
        b.put("dataset.validationSplit", split, "val_size")
    elif Decimal(split) >= 1 and Decimal(split) == int(Decimal(split)):
        b.note("val_size", value, "a count of examples: kubetune takes a fraction, set dataset.validationSplit to "
               "val_size / number of records")
    else:
        b.note("val_size", value, "kubetune holds out a fraction between 0 and 0.5 (dataset.validationSplit)")


def _resolve(b: Build, key: str, name: str, info: dict[str, Any] | None, online: bool, method: str,
             prefix: str | None) -> dict[str, Any]:
    """uri, format and (if any) columns and tags of one named dataset."""
    if online:
        entry: Any = {"hf_hub_url": name}
    elif info is None:
        raise ImportProblem([f"{key}: {name!r} is a dataset_info.json name: pass --dataset-info (LLaMA-Factory's "
                             "data/dataset_info.json) so that its file and columns can be looked up"])
    elif name not in info:
        known = ", ".join(sorted(info)[:20])
        raise ImportProblem([f"{key}: {name!r} is not in dataset_info.json (it has: {known})"])
    else:
        entry = info[name]
    if not isinstance(entry, dict):
        raise ImportProblem([f"dataset_info.json: {name}: must be an object, got {show(entry)}"])
    where = f"dataset_info.{name}"
    out: dict[str, Any] = {"uri": _uri(where, entry, prefix, method)}
    out["format"] = _format(where, entry, method)
    if isinstance(entry.get("file_name"), str) and "hf_hub_url" not in entry:
        _check_file_type(b, where, entry["file_name"], out["format"])
    columns = _names_map(b, f"{where}.columns", entry.get("columns"), DatasetColumns)
    tags = _names_map(b, f"{where}.tags", entry.get("tags"), DatasetTags)
    if tags and entry.get("formatting", "alpaca") != "sharegpt":
        b.note(f"{where}.tags", entry["tags"], "tags describe sharegpt messages: LLaMA-Factory ignores them for "
               "alpaca formatting, and so does the manifest")
        tags = {}
    if columns:
        out["columns"] = columns
    if tags:
        out["tags"] = tags
    for extra, value in entry.items():
        if extra not in _MAPPED_ENTRY_KEYS:
            b.note(f"{where}.{extra}", value, ENTRY_NOT_CARRIED.get(extra, UNKNOWN_REASON))
    return out


def _uri(where: str, entry: dict[str, Any], prefix: str | None, method: str) -> str:
    """Where the data is, in LLaMA-Factory's order: a hub id, else a loading script, else a cloud file, else a
    local file."""
    if "hf_hub_url" in entry:
        uri = "hf://datasets/" + str(entry["hf_hub_url"]).strip("/")
        if entry.get("folder"):
            uri += "/" + str(entry["folder"]).strip("/")
    elif "ms_hub_url" in entry or "om_hub_url" in entry:
        raise ImportProblem([f"{where}: only on ModelScope/Modelers (ms_hub_url/om_hub_url), which kubetune does not "
                             "read: download it, upload the files and point dataset.train at them"])
    elif "script_url" in entry:
        raise ImportProblem([f"{where}.script_url: a loading script: kubetune reads data files, not scripts. Run "
                             "the script, save its records as JSONL and point dataset.train at them"])
    elif "cloud_file_name" in entry:
        uri = str(entry["cloud_file_name"])
        if not uri.startswith("s3://"):
            raise ImportProblem([f"{where}.cloud_file_name: {uri!r}: kubetune reads s3://, not other clouds' "
                                 "storage: copy it to S3-compatible storage"])
    elif "file_name" in entry:
        if not prefix:
            raise ImportProblem([f"{where}.file_name: {entry['file_name']!r} is a file in LLaMA-Factory's data "
                                 "folder: upload that folder and pass --data-uri-prefix with its URI (e.g. "
                                 "s3://bucket/llamafactory-data)"])
        path = str(entry["file_name"]).strip()
        path = path[2:] if path.startswith("./") else path
        if path.startswith("/") or ".." in re.split(r"[/\\]", path):
            raise ImportProblem([f"{where}.file_name: {path!r} must be a path inside the data folder"])
        uri = prefix.rstrip("/") + "/" + path
    else:
        raise ImportProblem([f"{where}: names no data (file_name, hf_hub_url or cloud_file_name)"])
    if not re.match(DATA_URI, uri):
        raise ImportProblem([f"{where}: {uri!r} is not a data URI kubetune reads (hf://, s3://, pvc://, https://)"])
    return uri


def _format(where: str, entry: dict[str, Any], method: str) -> str:
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise ImportProblem([f"{where}.formatting: {show(formatting)} is not alpaca or sharegpt"])
    ranking = entry.get("ranking", False) is True
    if ranking != (method in RANKING_METHODS):
        need = "a ranking dataset (ranking: true)" if method in RANKING_METHODS else "a dataset without ranking"
        raise ImportProblem([f"{where}.ranking: {show(entry.get('ranking', False))}: method {method} trains on {need} "
                             "(LLaMA-Factory refuses this pairing too)"])
    return _METHOD_FORMAT.get(method, formatting)


def _check_file_type(b: Build, where: str, file_name: str, fmt: str) -> None:
    lower = file_name.lower()
    if lower.endswith(FILE_TYPES) or (lower.endswith(".txt") and fmt == "text") or "." not in lower.rsplit("/", 1)[-1]:
        return  # a folder (no extension) is read file by file
    b.note(f"{where}.file_name", file_name, f"kubetune reads {', '.join(FILE_TYPES)} files (and .txt for text data): "
           "convert it (e.g. to JSONL) before training; the manifest points at the file as named")


def _names_map(b: Build, where: str, value: Any, model) -> dict[str, str]:
    """LLaMA-Factory columns/tags -> the camelCase fields of `model` (DatasetColumns or DatasetTags)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        b.note(where, value, "must be an object of names: not carried over")
        return {}
    out = {}
    for name, column in value.items():
        if name in model.model_fields and isinstance(column, str) and column:
            out[to_camel(name)] = column
        elif name in MULTIMODAL:
            b.note(f"{where}.{name}", column, "kubetune trains text-only models: the records' media are not read")
        else:
            b.note(f"{where}.{name}", column, UNKNOWN_REASON if name not in model.model_fields
                   else "must be a field name (a string)")
    return out
