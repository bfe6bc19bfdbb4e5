"""Fetching the base model and the dataset through the shared storage layer: file://, s3:// against a real
SeaweedFS, http(s)://, hf:// from the offline Hub cache; and how storage failures end the trainer (exit codes)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kubetune.api import exit_codes
from kubetune_storage import Denied, NotFound, StorageError
from kubetune_trainer.errors import UserError
from kubetune_trainer.fetch import fetch_dataset, fetch_model
from kubetune_trainer.main import _outcome
from tests.fixtures.tiny_data import text_records, write_jsonl
from tests.storage.web import http_files  # noqa: F401 - a fixture


def test_storage_errors_end_with_the_exit_code_of_whose_fault_they_are():
    def fail(exc):
        def job():
            raise exc
        return job

    assert _outcome(fail(NotFound("s3://b/x does not exist"))) == (exit_codes.USER_ERROR, "s3://b/x does not exist")
    assert _outcome(fail(Denied("no access")))[0] == exit_codes.USER_ERROR
    code, message = _outcome(fail(StorageError("cannot list s3://b: timeout")))
    assert (code, message) == (exit_codes.INTERNAL_ERROR, "Internal error (retried): cannot list s3://b: timeout")


def test_fetch_dataset_file_folder_and_s3(tmp_path: Path, s3_server, s3_env, s3_bucket):
    write_jsonl(tmp_path / "data/b.jsonl", text_records(2))
    write_jsonl(tmp_path / "data/a.jsonl", text_records(2))
    (tmp_path / "data/README.md").write_text("ignored")
    assert fetch_dataset(f"file://{tmp_path}/data", tmp_path / "x") == [tmp_path / "data/a.jsonl", tmp_path / "data/b.jsonl"]
    s3_server.upload_dir(tmp_path / "data", s3_bucket, "ds")
    one = fetch_dataset(f"s3://{s3_bucket}/ds/a.jsonl", tmp_path / "one")
    assert one == [tmp_path / "one/a.jsonl"] and one[0].read_text() == (tmp_path / "data/a.jsonl").read_text()
    assert fetch_dataset(f"s3://{s3_bucket}/ds", tmp_path / "all") == [tmp_path / "all/a.jsonl", tmp_path / "all/b.jsonl"]
    with pytest.raises(UserError, match=r"dataset s3://.*/nope does not exist"):
        fetch_dataset(f"s3://{s3_bucket}/nope", tmp_path / "none")
    with pytest.raises(UserError, match=r"no data files \(.jsonl, .json, .csv, .parquet, .txt\) found"):
        fetch_dataset(f"file://{tmp_path}/data/README.md", tmp_path / "y")
    with pytest.raises(UserError, match="does not exist"):
        fetch_dataset(f"file://{tmp_path}/missing.jsonl", tmp_path / "z")


def test_fetch_dataset_over_http(tmp_path: Path, http_files):
    root, base = http_files
    write_jsonl(root / "train.jsonl", text_records(3))
    got = fetch_dataset(f"{base}/train.jsonl", tmp_path / "dl")
    assert got == [tmp_path / "dl/train.jsonl"] and got[0].read_bytes() == (root / "train.jsonl").read_bytes()
    with pytest.raises(UserError, match=r"HTTP 404"):
        fetch_dataset(f"{base}/missing.jsonl", tmp_path / "dl2")


def test_fetch_model_errors(tmp_path: Path, tiny_model_dir):
    assert fetch_model(f"file://{tiny_model_dir}", None, tmp_path) == tiny_model_dir
    with pytest.raises(UserError, match="no such folder"):
        fetch_model(f"file://{tmp_path}/nothing", None, tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"is not a Hugging Face model folder \(no config.json\)"):
        fetch_model(f"file://{tmp_path}/empty", None, tmp_path)
    # HF_HUB_OFFLINE=1 (trainer_env) and nothing cached: a user error that says why
    with pytest.raises(UserError, match=r"cannot fetch hf://kubetune-test/absent \(HF_HUB_OFFLINE is set"):
        fetch_model("hf://kubetune-test/absent", None, tmp_path)


def test_fetch_model_from_s3(tmp_path: Path, tiny_model_dir, s3_server, s3_env, s3_bucket):
    uri = s3_server.upload_dir(tiny_model_dir, s3_bucket, "models/tiny")
    folder = fetch_model(uri, None, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in tiny_model_dir.iterdir())
    assert (folder / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="no files under that prefix"):
        fetch_model(f"s3://{s3_bucket}/models/none", None, tmp_path / "other")


def test_fetch_model_from_hub_cache_offline(tmp_path: Path, tiny_model_dir, monkeypatch):
    """hf:// with HF_HUB_OFFLINE: served from the local Hub cache, never the network."""
    import huggingface_hub.constants as hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub/models--kubetune-test--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 at start-up sets it
    assert fetch_model("hf://kubetune-test/tiny", None, tmp_path) == repo / "snapshots" / commit
    with pytest.raises(UserError, match=r"base model hf://kubetune-test/tiny: cannot fetch hf://kubetune-test/tiny@v2 \(HF_HUB_OFFLINE is set"):
        fetch_model("hf://kubetune-test/tiny", "v2", tmp_path)
