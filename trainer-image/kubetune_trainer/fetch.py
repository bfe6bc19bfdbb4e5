"""Bring the base model and the dataset onto local disk, through the shared storage layer (kubetune_storage).

Models: hf://org/name (+ spec revision), s3://bucket/prefix, pvc://claim/path, file:///path. Datasets: the same
plus https://; hf://org/name/path names a dataset repository. A URI that names a folder yields every data file in
it (.jsonl, .json, .csv, .parquet, .txt; .txt only where the folder holds no other data files), sorted.
Storage failures surface as kubetune_storage errors (main maps them to
exit codes: NotFound, Denied, InvalidUri are the user's to fix); what only a model or dataset can get wrong is a
UserError here.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

from kubetune.api.common import HfRef, parse_hf_uri
from kubetune_storage import NotFound, Storage, Store

from .errors import UserError

log = logging.getLogger(__name__)

DATA_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet", ".txt")
# Weights in formats the trainer never loads: skip them when downloading a model.
_MODEL_SKIP = ["*.gguf", "*.onnx", "*.onnx_data", "*.msgpack", "*.h5", "*.tflite", "*.ot", "original/*",
               "onnx/*", "openvino/*", "coreml/*"]


def _hub(uri: str, repo_type: str, revision: str | None = None) -> str:
    """The spec's hf:// URI in the storage layer's grammar: the spec's revision field and the repository type
    (a dataset URI hf://org/name/path names a dataset repository) spelled into the URI."""
    try:
        ref = parse_hf_uri(uri)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return HfRef(repo_type, ref.repo_id, revision or ref.revision, ref.path).uri()


def fetch_model(uri: str, revision: str | None, work_dir: Path, storage: Storage | None = None) -> Path:
    """A local folder holding config.json, weights and tokenizer of the base model."""
    storage = storage or Storage()
    store = storage.open(_hub(uri, "model", revision) if uri.startswith("hf://") else uri)
    try:
        folder = store.local_folder(work_dir / "base-model", skip=_MODEL_SKIP)
    except NotFound as exc:
        raise UserError(f"base model {uri}: {str(exc).removeprefix(store.uri + ': ')}") from None
    if not (folder / "config.json").is_file():
        raise UserError(f"base model {uri} is not a Hugging Face model folder (no config.json)")
    return folder


def _data_files(paths: list[Path], uri: str) -> list[Path]:
    files = sorted(p for p in paths if p.is_file() and p.name.lower().endswith(DATA_EXTENSIONS))
    structured = [p for p in files if not p.name.lower().endswith(".txt")]
    if structured and len(structured) < len(files):  # a notes.txt or LICENSE.txt next to the data is not data
        log.info("dataset %s: reading %d structured file(s), skipping %d .txt file(s) beside them: %s", uri,
                 len(structured), len(files) - len(structured), ", ".join(p.name for p in files if p not in structured)[:300])
        files = structured
    if not files:
        raise UserError(f"dataset {uri}: no data files ({', '.join(DATA_EXTENSIONS)}) found")
    return files


def _one_object(store: Store, dest_dir: Path) -> Path:
    name = PurePosixPath(store.uri.split("://", 1)[1]).name or "data.jsonl"
    if not name.lower().endswith(DATA_EXTENSIONS):
        name += ".jsonl"
    store.download("", dest_dir / name)
    return dest_dir / name


def fetch_dataset(uri: str, dest_dir: Path, storage: Storage | None = None) -> list[Path]:
    """Local data files for a dataset URI (a file or a folder of files)."""
    storage = storage or Storage()
    store = storage.open(_hub(uri, "dataset") if uri.startswith("hf://") else uri)
    try:
        if store.local_path is not None or uri.startswith("hf://"):
            folder = store.local_folder(dest_dir)  # a folder on disk or in the Hub cache: no copy
            return _data_files(list(folder.rglob("*")) if folder.is_dir() else [folder], uri)
        names = store.list("")
        if not names:
            raise NotFound("no object or prefix with that name")
        if names == [""]:  # the URI names one object
            return _data_files([_one_object(store, dest_dir)], uri)
        return _data_files(store.download_tree("", dest_dir), uri)
    except NotFound as exc:
        raise UserError(f"dataset {uri} does not exist ({exc})") from None
