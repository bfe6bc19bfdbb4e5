"""/v1/files with the official openai client: upload (validated by the trainer's loader), list, retrieve,
content, delete; a bad file refused at upload with file:line: field in OpenAI's error shape. The data lands in
real S3 (SeaweedFS) under the tenant's prefix."""

from __future__ import annotations

import json

import openai
import pytest
from openai.types import FileObject

from .data import bad_chat_file, chat_file, preference_file


def test_upload_list_retrieve_content_delete(stack):
    client = stack.tenant("team-a")
    created = client.files.create(file=("train.jsonl", chat_file()), purpose="fine-tune")
    assert isinstance(created, FileObject)
    assert created.id.startswith("file-") and created.filename == "train.jsonl"
    assert created.bytes == len(chat_file()) and created.purpose == "fine-tune" and created.status == "processed"

    # Stored under the tenant's prefix, the data object first and file.json (the File object) last.
    store = stack.storage.open(stack.settings.files_uri)
    assert sorted(store.list(f"team-a/{created.id}")) == [f"team-a/{created.id}/data/train.jsonl", f"team-a/{created.id}/file.json"]
    assert store.read_bytes(f"team-a/{created.id}/data/train.jsonl") == chat_file()
    assert json.loads(store.read_bytes(f"team-a/{created.id}/file.json"))["format"] == "chatml"

    pref = client.files.create(file=("pairs.jsonl", preference_file()), purpose="fine-tune")
    assert client.files.retrieve(created.id) == created
    listed = client.files.list()
    assert [f.id for f in listed.data] == [pref.id, created.id] or {f.id for f in listed.data} == {pref.id, created.id}
    page = client.files.list(limit=1)
    assert len(page.data) == 1 and page.has_more
    rest = client.files.list(limit=1, after=page.data[0].id)
    assert len(rest.data) == 1 and rest.data[0].id != page.data[0].id and not rest.has_more
    assert client.files.content(created.id).content == chat_file()

    deleted = client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError) as err:
        client.files.retrieve(created.id)
    assert err.value.body["code"] == "file_not_found" and created.id in err.value.body["message"]
    assert [f.id for f in client.files.list().data] == [pref.id]
    assert store.list(f"team-a/{created.id}") == []


def test_bad_file_refused_with_line_numbers(stack):
    client = stack.tenant("team-a")
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("bad.jsonl", bad_chat_file()), purpose="fine-tune")
    body = err.value.body  # the SDK hands over the "error" object of OpenAI's shape
    assert body["type"] == "invalid_request_error" and body["param"] == "file" and body["code"] == "invalid_file_format"
    assert "bad.jsonl:3: messages[1].role must be one of system,user,assistant (got 'robot')" in body["message"]
    assert "bad.jsonl:5: not valid JSON" in body["message"]
    assert client.files.list().data == []  # nothing kept of a refused upload
    assert stack.storage.open(stack.settings.files_uri).list("team-a") == []


@pytest.mark.parametrize("name, content, expected", [
    ("notes.jsonl", b'{"foo": 1}\n{"foo": 2}\n', "cannot detect the format of notes.jsonl"),
    ("empty.jsonl", b"\n\n", "is empty"),
    ("data.jsonl", b"\xff\xfe\x00garbage\n", "not UTF-8"),
])
def test_unreadable_files_refused(stack, name, content, expected):
    with pytest.raises(openai.BadRequestError) as err:
        stack.tenant("team-a").files.create(file=(name, content), purpose="fine-tune")
    assert expected in err.value.body["message"] and err.value.body["param"] == "file"


def test_wrong_purpose_and_too_large(stack):
    client = stack.tenant("team-a")
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("train.jsonl", chat_file()), purpose="batch")
    assert err.value.body["param"] == "purpose" and "fine-tune" in err.value.body["message"]
    big = chat_file(20000)  # > maxFileBytes (1 MiB in the test settings)
    assert len(big) > stack.settings.max_file_bytes
    with pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=("big.jsonl", big), purpose="fine-tune")
    assert err.value.status_code == 413 and err.value.body["code"] == "file_too_large"
    assert client.files.list().data == []
