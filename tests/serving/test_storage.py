"""Storage URIs, local paths and real S3 (SeaweedFS) reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune_serving.storage import Location, NotFound, Storage, StorageError, join_uri, parse_uri


@pytest.mark.parametrize(("uri", "location"), [
    ("s3://models/team/job-1", Location("s3", "models", "team/job-1")),
    ("s3://models/team/job-1/", Location("s3", "models", "team/job-1")),
    ("s3://models", Location("s3", "models", "")),
    ("pvc://adapters/team/job", Location("pvc", "adapters", "team/job")),
    ("file:///tmp/x/", Location("file", "", "/tmp/x")),
])
def test_parse_uri(uri: str, location: Location) -> None:
    assert parse_uri(uri) == location


@pytest.mark.parametrize(("uri", "message"), [
    ("hf://org/name", "unsupported storage URI 'hf://org/name': use s3://bucket/key, pvc://claim/path or file:///path"),
    ("s3://models/../etc", "storage URI 's3://models/../etc' must not contain '..' segments"),
    ("file://relative/x", "file URI 'file://relative/x' must be absolute: file:///path"),
    ("s3:///key", "storage URI 's3:///key' names no bucket"),
    ("pvc:///key", "storage URI 'pvc:///key' names no claim"),
])
def test_parse_uri_refuses(uri: str, message: str) -> None:
    with pytest.raises(StorageError) as info:
        parse_uri(uri)
    assert str(info.value) == message


def test_join_uri_stays_inside() -> None:
    assert join_uri("s3://m/job/", "adapter/a.json") == "s3://m/job/adapter/a.json"
    for bad in ("../x", "/abs", "a/../../x", ""):
        with pytest.raises(StorageError):
            join_uri("s3://m/job", bad)


def test_pvc_and_file_paths(tmp_path: Path) -> None:
    (tmp_path / "claim" / "team").mkdir(parents=True)
    (tmp_path / "claim" / "team" / "f.txt").write_bytes(b"pvc bytes")
    storage = Storage({"KUBETUNE_PVC_ROOT": str(tmp_path)})
    assert storage.read_bytes("pvc://claim/team/f.txt") == b"pvc bytes"
    assert storage.read_bytes(f"file://{tmp_path}/claim/team/f.txt") == b"pvc bytes"
    assert Storage({}).local_path(parse_uri("pvc://claim/a/b")) == Path("/mnt/pvc/claim/a/b")
    with pytest.raises(NotFound) as info:
        storage.read_bytes("pvc://claim/team/missing.txt")
    assert str(info.value) == "pvc://claim/team/missing.txt does not exist"


def test_s3_read_download_and_not_found(s3_server, s3_bucket: str, tmp_path: Path) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="job/adapter/w.bin", Body=b"weights" * 1000)
    storage = Storage(s3_server.env)
    assert storage.read_bytes(f"s3://{s3_bucket}/job/adapter/w.bin") == b"weights" * 1000
    storage.download(f"s3://{s3_bucket}/job/adapter/w.bin", tmp_path / "d" / "w.bin")
    assert (tmp_path / "d" / "w.bin").read_bytes() == b"weights" * 1000
    with pytest.raises(NotFound) as info:
        storage.read_bytes(f"s3://{s3_bucket}/job/manifest.json")
    assert str(info.value) == f"s3://{s3_bucket}/job/manifest.json does not exist"
    with pytest.raises(NotFound) as info:
        storage.download(f"s3://{s3_bucket}/job/missing.bin", tmp_path / "m.bin")
    assert str(info.value) == f"s3://{s3_bucket}/job/missing.bin does not exist"


def test_s3_wrong_credentials_is_not_not_found(s3_server, s3_bucket: str) -> None:
    storage = Storage(s3_server.env | {"AWS_SECRET_ACCESS_KEY": "wrong"})
    with pytest.raises(StorageError) as info:
        storage.read_bytes(f"s3://{s3_bucket}/job/manifest.json")
    assert type(info.value) is StorageError
    assert str(info.value).startswith(f"cannot read s3://{s3_bucket}/job/manifest.json: SignatureDoesNotMatch")
