"""Object storage and fetching: file://, pvc://, s3:// against a real SeaweedFS, https-style downloads."""

from __future__ import annotations

import http.server
import shutil
import threading
from pathlib import Path

import pytest

from kubetune_trainer.errors import TransientError, UserError
from kubetune_trainer.fetch import fetch_dataset, fetch_model
from kubetune_trainer.storage import LocalStore, S3Store, local_path, open_store
from tests.fixtures.tiny_data import text_records, write_jsonl


def _exercise(store) -> None:
    """The same behaviour from every backend."""
    src = Path(__file__)
    store.upload(src, "a/b/file.py")
    store.write_bytes("a/x.json", b"{}")
    store.write_bytes("ab.txt", b"sibling")
    assert store.list("") == ["a/b/file.py", "a/x.json", "ab.txt"]
    assert store.list("a") == ["a/b/file.py", "a/x.json"]  # not the "ab.txt" sibling
    assert store.read_bytes("a/x.json") == b"{}"
    assert store.read_bytes("missing") is None
    assert store.exists("a/x.json") and not store.exists("a/y.json")
    child = store.child("a")
    assert child.list("") == ["b/file.py", "x.json"]
    assert child.uri == store.uri_of("a")


def test_local_store(tmp_path: Path):
    store = open_store(f"file://{tmp_path}/bucket/prefix")
    assert isinstance(store, LocalStore)
    _exercise(store)
    dest = tmp_path / "dl"
    assert store.download_tree("a", dest) == [dest / "b/file.py", dest / "x.json"]
    store.delete(["a/b/file.py", "a/x.json"])
    assert store.list("") == ["ab.txt"]
    assert not (tmp_path / "bucket/prefix/a").exists()  # empty folders are removed


def test_pvc_maps_to_mount_root(tmp_path: Path):
    # trainer_env sets KUBETUNE_PVC_ROOT to tmp_path/pvc
    assert local_path("pvc://models/base/qwen") == tmp_path / "pvc/models/base/qwen"
    store = open_store("pvc://out/adapters")
    store.write_bytes("x", b"1")
    assert (tmp_path / "pvc/out/adapters/x").read_bytes() == b"1"


def test_upload_tree_round_trip(tmp_path: Path):
    src = tmp_path / "src"
    write_jsonl(src / "d/one.jsonl", [{"a": 1}])
    (src / "two.bin").write_bytes(b"\x00\x01")
    store = open_store(f"file://{tmp_path}/out")
    assert store.upload_tree(src, "p") == ["p/d/one.jsonl", "p/two.bin"]
    assert (tmp_path / "out/p/two.bin").read_bytes() == b"\x00\x01"


def test_s3_store(s3_server, s3_env, s3_bucket):
    store = open_store(f"s3://{s3_bucket}/some/prefix")
    assert isinstance(store, S3Store)
    _exercise(store)
    assert s3_server.keys(s3_bucket) == ["some/prefix/a/b/file.py", "some/prefix/a/x.json", "some/prefix/ab.txt"]
    store.delete(["a/b/file.py", "ab.txt"])
    assert s3_server.keys(s3_bucket) == ["some/prefix/a/x.json"]


def test_s3_errors_map_to_exit_codes(s3_server, s3_env, s3_bucket, monkeypatch):
    with pytest.raises(UserError, match=r"cannot list s3://no-such-bucket-kt/x: NoSuchBucket"):
        open_store("s3://no-such-bucket-kt/x").list("")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-123")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong-key")
    with pytest.raises(UserError, match="InvalidAccessKeyId") as info:
        open_store(f"s3://{s3_bucket}/x").list("")
    assert "wrong-secret-value-123" not in str(info.value)
    monkeypatch.setenv("KUBETUNE_S3_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(TransientError, match=r"cannot list s3://"):
        open_store(f"s3://{s3_bucket}/x").list("")


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
    with pytest.raises(UserError, match=r"no data files \(.jsonl, .json, .csv, .parquet\) found"):
        fetch_dataset(f"file://{tmp_path}/data/README.md", tmp_path / "y")
    with pytest.raises(UserError, match="does not exist"):
        fetch_dataset(f"file://{tmp_path}/missing.jsonl", tmp_path / "z")


@pytest.fixture
def http_files(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


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
    with pytest.raises(UserError, match=r"cannot fetch hf://kubetune-test/tiny \(HF_HUB_OFFLINE is set"):
        fetch_model("hf://kubetune-test/tiny", "v2", tmp_path)
