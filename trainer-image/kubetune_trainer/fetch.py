"""Bring the base model and the dataset onto local disk.

Models: hf://org/name (huggingface_hub; HF_TOKEN and HF_HUB_OFFLINE from env), s3://bucket/prefix,
pvc://claim/path, file:///path. Datasets: the same plus https://. A URI that names a folder yields
every data file in it (.jsonl, .json, .csv, .parquet), sorted.
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from .errors import TransientError, UserError
from .storage import Uri, local_path, open_store

log = logging.getLogger(__name__)

DATA_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
# Weights in formats the trainer never loads: skip them when downloading from the Hub.
_HUB_IGNORE = ["*.gguf", "*.onnx", "*.onnx_data", "*.msgpack", "*.h5", "*.tflite", "*.ot", "original/*",
               "onnx/*", "openvino/*", "coreml/*"]


def _hub_errors(uri: str, exc: Exception) -> Exception:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return UserError(f"{uri} is gated: accept its license on the Hub and set spec.hubTokenSecretRef")
    if isinstance(exc, RepositoryNotFoundError):
        return UserError(f"{uri} not found on the Hugging Face Hub (or it is private: set spec.hubTokenSecretRef)")
    if isinstance(exc, RevisionNotFoundError):
        return UserError(f"{uri}: revision not found on the Hugging Face Hub")
    if isinstance(exc, LocalEntryNotFoundError):
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        hint = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline else " (the Hub is unreachable)"
        return (UserError if offline else TransientError)(f"cannot fetch {uri}{hint}")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            return UserError(f"no access to {uri} on the Hugging Face Hub: check spec.hubTokenSecretRef")
        return TransientError(f"cannot fetch {uri} from the Hugging Face Hub: {status}")
    return TransientError(f"cannot fetch {uri}: {type(exc).__name__}")


def _snapshot(uri: str, repo_id: str, *, revision: str | None, repo_type: str = "model",
              allow_patterns: list[str] | None = None, ignore_patterns: list[str] | None = None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns,
                                      ignore_patterns=ignore_patterns))
    except Exception as exc:  # noqa: BLE001 - every hub failure maps to the exit-code contract
        raise _hub_errors(uri, exc) from None


def fetch_model(uri: str, revision: str | None, work_dir: Path) -> Path:
    """A local folder holding config.json, weights and tokenizer of the base model."""
    u = Uri.parse(uri)
    if u.scheme == "hf":
        repo_id = f"{u.netloc}/{u.path}" if u.path else u.netloc
        folder = _snapshot(uri, repo_id, revision=revision, ignore_patterns=_HUB_IGNORE)
    elif u.scheme == "s3":
        folder = work_dir / "base-model"
        files = open_store(uri).download_tree("", folder)
        if not files:
            raise UserError(f"base model {uri}: no files under that prefix")
    else:
        folder = local_path(uri)
        if folder is None or not folder.is_dir():
            raise UserError(f"base model {uri}: no such folder")
    if not (folder / "config.json").is_file():
        raise UserError(f"base model {uri} is not a Hugging Face model folder (no config.json)")
    return folder


def _data_files(paths: list[Path], uri: str) -> list[Path]:
    files = sorted(p for p in paths if p.is_file() and p.name.lower().endswith(DATA_EXTENSIONS))
    if not files:
        raise UserError(f"dataset {uri}: no data files ({', '.join(DATA_EXTENSIONS)}) found")
    return files


def _https(uri: str, dest_dir: Path) -> Path:
    name = Path(urlparse(uri).path).name or "data.jsonl"
    if not name.lower().endswith(DATA_EXTENSIONS):
        name += ".jsonl"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / name
    request = urllib.request.Request(uri, headers={"User-Agent": "kubetune-trainer"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, dest.open("wb") as out:  # noqa: S310
            shutil.copyfileobj(response, out, 1 << 20)
    except urllib.error.HTTPError as exc:
        err = UserError if 400 <= exc.code < 500 else TransientError
        raise err(f"cannot download dataset {uri}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise TransientError(f"cannot download dataset {uri}: {getattr(exc, 'reason', exc)}") from None
    return dest


def fetch_dataset(uri: str, dest_dir: Path) -> list[Path]:
    """Local data files for a dataset URI (a file or a folder of files)."""
    u = Uri.parse(uri)
    if u.scheme in ("https", "http"):
        return [_https(uri, dest_dir)]
    if u.scheme == "hf":
        name, _, inner = u.path.partition("/")
        allow = [inner, f"{inner}/*", f"{inner}/**"] if inner else None
        folder = _snapshot(uri, f"{u.netloc}/{name}", revision=None, repo_type="dataset", allow_patterns=allow)
        target = folder / inner if inner else folder
        return _data_files(list(target.rglob("*")) if target.is_dir() else [target], uri)
    if u.scheme == "s3":
        store = open_store(uri)
        names = store.list("")
        if not names:
            raise UserError(f"dataset {uri} does not exist (no object or prefix with that name)")
        if names == [""]:  # the URI names one object
            dest = dest_dir / Path(u.path).name
            dest_dir.mkdir(parents=True, exist_ok=True)
            store.download("", dest)
            return _data_files([dest], uri)
        return _data_files(store.download_tree("", dest_dir), uri)
    path = local_path(uri)
    if path is None or not path.exists():
        raise UserError(f"dataset {uri} does not exist")
    return _data_files(list(path.rglob("*")) if path.is_dir() else [path], uri)
