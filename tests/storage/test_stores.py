"""The shared storage layer (kubetune_storage): the registry, and the same behaviour from every writable store
(file://, pvc://, s3:// against a real SeaweedFS), read-only stores refusing writes, errors saying whose fault."""

from __future__ import annotations

import contextvars
from pathlib import Path

import pytest

import kubetune_storage as ks
from kubetune_storage import Denied, InvalidUri, NotFound, ReadOnly, Storage, StorageError, join_uri, open_store
from kubetune_storage.hf import HfStore
from kubetune_storage.https import HttpsStore
from kubetune_storage.local import FileStore, PvcStore
from kubetune_storage.s3 import S3Store
from tests.storage.web import http_files  # noqa: F401 - a fixture


def test_registry_one_class_per_scheme() -> None:
    assert {s: c.__name__ for s, c in ks.SCHEMES.items()} == {
        "file": "FileStore", "pvc": "PvcStore", "s3": "S3Store", "hf": "HfStore", "https": "HttpsStore",
        "http": "HttpsStore", "configmap": "ConfigMapStore"}
    with pytest.raises(ValueError, match=r"scheme s3:// is already served by S3Store"):
        class Other(S3Store):
            schemes = ("s3",)
        ks.register(Other)


def test_a_new_scheme_is_one_class_and_its_registration(tmp_path: Path) -> None:
    """What adding gs:// takes: one Store subclass, registered; every caller then opens it by URI."""

    class MemoryStore(ks.Store):
        schemes = ("mem",)
        objects = {"a/x": b"1", "a/y": b"2"}

        def __init__(self, uri: str) -> None:
            self.uri = uri

        @classmethod
        def from_uri(cls, uri, storage):
            return cls(uri)

        def list(self, rel=""):
            return sorted(k for k in self.objects if k.startswith(rel))

        def read_bytes(self, rel=""):
            if rel not in self.objects:
                raise NotFound(f"{self.uri_of(rel)} does not exist")
            return self.objects[rel]

        def download(self, rel, dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(self.read_bytes(rel))

    ks.register(MemoryStore)
    try:
        store = open_store("mem://x")
        assert store.download_tree("a", tmp_path) == [tmp_path / "x", tmp_path / "y"]
        assert store.read_optional("b") is None and not store.exists("b")
        with pytest.raises(ReadOnly, match=r"cannot write mem://x/b: mem:// is read-only"):
            store.write_bytes("b", b"")
    finally:
        del ks.SCHEMES["mem"]


@pytest.mark.parametrize(("uri", "message"), [
    ("gs://bucket/x", "unsupported storage URI 'gs://bucket/x': the schemes are configmap://, file://, hf://, http://, "
                      "https://, pvc://, s3://"),
    ("bucket/x", "'bucket/x' is not a storage URI (expected configmap://, file://, hf://, http://, https://, pvc://, s3://)"),
    ("s3://models/../etc", "storage URI 's3://models/../etc' must not contain '..' segments"),
    ("file://relative/x", "file URI 'file://relative/x' must be absolute: file:///path"),
    ("s3:///key", "storage URI 's3:///key' names no bucket: s3://bucket/prefix"),
    ("pvc:///key", "storage URI 'pvc:///key' names no claim: pvc://claim/path"),
    ("hf://", "'hf://' names no repository: write hf://org/name"),
    ("hf://org/na me", "'hf://org/na me': 'org/na me' is not a Hub repository id (org/name)"),
])
def test_bad_uris_say_what_is_wrong(uri: str, message: str) -> None:
    with pytest.raises(InvalidUri) as info:
        open_store(uri)
    assert str(info.value) == message
    assert info.value.user_fault


def test_opened_by_scheme(tmp_path: Path) -> None:
    env = {"KUBETUNE_PVC_ROOT": str(tmp_path)}
    assert type(open_store("s3://b/k", env)) is S3Store
    assert type(open_store("hf://org/name@" + "a" * 40 + "/adapter", env)) is HfStore
    assert type(open_store("https://example.com/x.jsonl", env)) is HttpsStore
    assert open_store("pvc://claim/a/b", env).local_path == tmp_path / "claim/a/b"
    assert type(open_store("pvc://claim", env)) is PvcStore
    assert open_store(f"file://{tmp_path}/x/", env).local_path == tmp_path / "x"
    assert type(open_store(f"file://{tmp_path}", env)) is FileStore
    assert open_store("s3://b/k").local_path is None
    assert Storage({}).local_path("pvc://claim/x") == Path("/mnt/pvc/claim/x")


def test_join_uri_stays_inside() -> None:
    assert join_uri("s3://m/job/", "adapter/a.json") == "s3://m/job/adapter/a.json"
    for bad in ("../x", "/abs", "a/../../x", ""):
        with pytest.raises(InvalidUri):
            join_uri("s3://m/job", bad)
    with pytest.raises(InvalidUri, match=r"path '\.\./x' must stay inside s3://m/job"):
        open_store("s3://m/job").child("../x")


def _exercise(store) -> None:
    """The same behaviour from every writable backend."""
    src = Path(__file__)
    store.upload(src, "a/b/file.py")
    store.write_bytes("a/x.json", b"{}")
    store.write_bytes("ab.txt", b"sibling")
    assert store.list("") == ["a/b/file.py", "a/x.json", "ab.txt"]
    assert store.list("a") == ["a/b/file.py", "a/x.json"]  # not the "ab.txt" sibling
    assert store.list("a/x.json") == ["a/x.json"]
    assert store.list("nothing") == []
    assert store.read_bytes("a/x.json") == b"{}"
    with pytest.raises(NotFound, match=r"does not exist|NoSuchKey"):
        store.read_bytes("missing")
    assert store.read_optional("missing") is None
    assert store.exists("a/x.json") and not store.exists("a/y.json")
    child = store.child("a")
    assert child.list("") == ["b/file.py", "x.json"]
    assert child.uri == store.uri_of("a")
    assert child.read_bytes("x.json") == b"{}"
    assert Storage(store.storage.env if hasattr(store, "storage") else None).read_bytes(store.uri_of("a/x.json")) == b"{}"


def test_file_store(tmp_path: Path):
    store = open_store(f"file://{tmp_path}/bucket/prefix")
    _exercise(store)
    dest = tmp_path / "dl"
    assert store.download_tree("a", dest) == [dest / "b/file.py", dest / "x.json"]
    assert store.local_folder(tmp_path / "unused") == tmp_path / "bucket/prefix"  # on disk already: no copy
    store.delete(["a/b/file.py", "a/x.json"])
    assert store.list("") == ["ab.txt"]
    assert not (tmp_path / "bucket/prefix/a").exists()  # empty folders are removed
    with pytest.raises(NotFound, match=r"file://.*/nothing: no such folder"):
        open_store(f"file://{tmp_path}/nothing").local_folder(tmp_path / "x")


def test_pvc_store_maps_to_mount_root(tmp_path: Path):
    store = open_store("pvc://out/adapters", {"KUBETUNE_PVC_ROOT": str(tmp_path / "pvc")})
    store.write_bytes("x", b"1")
    assert (tmp_path / "pvc/out/adapters/x").read_bytes() == b"1"
    assert store.uri_of("x") == "pvc://out/adapters/x"


def test_upload_tree_round_trip(tmp_path: Path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/one.jsonl").write_text("{}\n")
    (src / "two.bin").write_bytes(b"\x00\x01")
    store = open_store(f"file://{tmp_path}/out")
    assert store.upload_tree(src, "p") == ["p/d/one.jsonl", "p/two.bin"]
    assert (tmp_path / "out/p/two.bin").read_bytes() == b"\x00\x01"


def test_s3_store(s3_server, s3_bucket, tmp_path: Path):
    store = open_store(f"s3://{s3_bucket}/some/prefix", s3_server.env)
    _exercise(store)
    assert s3_server.keys(s3_bucket) == ["some/prefix/a/b/file.py", "some/prefix/a/x.json", "some/prefix/ab.txt"]
    folder = store.local_folder(tmp_path / "model")  # a remote tree is copied, once
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == \
        ["a/b/file.py", "a/x.json", "ab.txt"]
    assert (tmp_path / "model.complete").is_file()
    store.delete(["a/b/file.py", "ab.txt"])
    assert s3_server.keys(s3_bucket) == ["some/prefix/a/x.json"]
    assert store.local_folder(tmp_path / "model") == folder  # complete: not downloaded again
    with pytest.raises(NotFound, match=r"s3://.*/none: no files under that prefix"):
        open_store(f"s3://{s3_bucket}/none", s3_server.env).local_folder(tmp_path / "none")


def test_s3_calls_run_in_a_context_of_their_own(s3_server, s3_bucket):
    """What is set in context variables during an S3 call (botocore's per-call state, or a hook's) stays out of the
    caller's context (kubetune_storage.s3._own_context says why)."""
    during = contextvars.ContextVar("set_during_the_call")
    store = open_store(f"s3://{s3_bucket}/ctx", s3_server.env)

    def hook(**_: object) -> None:  # returning nothing: the call goes on
        during.set("inside")

    store.client.meta.events.register("before-call.s3.*", hook)
    store.write_bytes("a.txt", b"1")
    assert store.list("") == ["a.txt"] and store.read_bytes("a.txt") == b"1"
    assert during.get(None) is None


def test_s3_errors_say_whose_fault(s3_server, s3_bucket):
    with pytest.raises(NotFound, match=r"cannot list s3://no-such-bucket-kt/x: NoSuchBucket"):
        open_store("s3://no-such-bucket-kt/x", s3_server.env).list("")
    wrong = s3_server.env | {"AWS_ACCESS_KEY_ID": "wrong-key", "AWS_SECRET_ACCESS_KEY": "wrong-secret-value-123"}
    with pytest.raises(Denied, match="InvalidAccessKeyId") as info:
        open_store(f"s3://{s3_bucket}/x", wrong).read_bytes("manifest.json")
    assert "wrong-secret-value-123" not in str(info.value) and info.value.user_fault
    down = s3_server.env | {"KUBETUNE_S3_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on the discard port
    with pytest.raises(StorageError, match=r"cannot list s3://") as info:
        open_store(f"s3://{s3_bucket}/x", down).list("")
    assert type(info.value) is StorageError and not info.value.user_fault


def test_read_only_schemes_refuse_writes() -> None:
    for uri in ("hf://org/name@" + "a" * 40, "https://example.com/x"):
        store = open_store(uri)
        with pytest.raises(ReadOnly, match=r"is read-only"):
            store.write_bytes("f", b"")
        with pytest.raises(ReadOnly, match=r"is read-only"):
            store.delete(["f"])


def test_https_store(tmp_path: Path, http_files):
    root, base = http_files
    (root / "f.jsonl").write_bytes(b"{}\n")
    store = open_store(f"{base}/f.jsonl")
    assert store.list("") == [""] and store.read_bytes() == b"{}\n"
    store.download("", tmp_path / "d/f.jsonl")
    assert (tmp_path / "d/f.jsonl").read_bytes() == b"{}\n"
    with pytest.raises(NotFound, match=r"cannot download http://.*/missing: HTTP 404"):
        open_store(f"{base}/missing").read_bytes()
    with pytest.raises(StorageError, match=r"cannot download http://127.0.0.1:9/x") as info:
        open_store("http://127.0.0.1:9/x").read_bytes()
    assert not info.value.user_fault
