"""/v1/files: training data, checked on upload by the trainer's own validator, kept in object storage.

Layout (one folder per tenant namespace; nothing else is ever under it):

    <filesUri>/<namespace>/<file id>/data/<filename>   the bytes, under the uploader's file name
    <filesUri>/<namespace>/<file id>/file.json         the File object (+ format, examples), written LAST

A file exists once its file.json does (like manifest.json for adapters): a failed or interrupted upload
leaves nothing listable. Metadata sits next to the data rather than in ConfigMaps: no second store to keep
consistent, no Kubernetes rights or etcd space for it, and deleting the folder deletes the file.
A FineTuneJob's dataset.train is the data object's URI (one object, so the trainer reads exactly it, and its
errors name the uploader's file).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from kubetune_storage import NotFound, Store, StorageError
from kubetune_trainer import data as trainer_data
from kubetune_trainer import formats
from kubetune_trainer.errors import DataError, UserError
from starlette.background import BackgroundTask

from . import results
from .app import Gateway, GatewayDep
from .errors import OpenAIError, bad_request, not_found
from .tenancy import Tenant, TenantDep

router = APIRouter()

FILE_ID = re.compile(r"^file-[A-Za-z0-9]{24}$")
META = "file.json"
PURPOSE = "fine-tune"
CHUNK = 1024 * 1024
# OpenAI's methods -> kubetune's method rows (kubetune.api.methods.METHODS); upload validation picks the first
# whose formats include what the records look like.
OPENAI_METHODS = {"supervised": "sft", "dpo": "dpo"}


def new_file_id() -> str:
    return "file-" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(24))


def tenant_store(gw: Gateway, who: Tenant) -> Store:
    return gw.storage.open(gw.settings.files_uri).child(who.namespace)


def safe_filename(name: str | None) -> str:
    """The uploader's name, reduced to [A-Za-z0-9._-] (<= 100 chars), with a data suffix the trainer reads."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name or "").name).lstrip(".")[:100] or "data.jsonl"
    if Path(base).suffix.lower() not in trainer_data.READERS:
        base += ".jsonl"
    return base


def public(meta: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI File object of a stored file.json."""
    return {"id": meta["id"], "object": "file", "bytes": meta["bytes"], "created_at": meta["created_at"],
            "filename": meta["filename"], "purpose": meta["purpose"], "status": "processed",
            "expires_at": None, "status_details": None}


def validate(path: Path) -> tuple[str, int]:
    """(format, valid examples) of a data file, by the trainer's loader; DataError naming file:line: field.

    The method is the first OpenAI one that trains on the format most of the first records look like (the
    job's own method is checked against the format at job creation); no examples minimum here."""
    votes: Counter[str] = Counter()
    for _, record, problem in trainer_data.read_file(path):
        if problem is None:
            votes[formats.detect(record) or ""] += 1
        if sum(votes.values()) >= 200:
            break
    guess = votes.most_common(1)[0][0] if votes else ""
    method = next((m for m in OPENAI_METHODS.values() if guess in trainer_data.METHODS[m].formats), "sft")
    loaded = trainer_data.load([path], fmt="auto", method=method, min_examples=1)
    return loaded.format, len(loaded.records)


def _receive(upload: UploadFile, dest: Path, limit: int) -> int:
    size = 0
    with dest.open("wb") as out:
        while chunk := upload.file.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise OpenAIError(413, f"File is too large: more than {limit} bytes.", param="file", code="file_too_large")
            out.write(chunk)
    return size


def _store(store: Store, path: Path, meta: dict[str, Any]) -> None:
    store.upload(path, f"{meta['id']}/data/{meta['filename']}")
    store.write_bytes(f"{meta['id']}/{META}", json.dumps(meta).encode())


def data_uri(gw: Gateway, who: Tenant, meta: dict[str, Any]) -> str:
    """Where the trainer reads a file's data (a FineTuneJob's dataset.train / validation)."""
    return tenant_store(gw, who).uri_of(f"{meta['id']}/data/{meta['filename']}")


def storage_failed(exc: StorageError) -> OpenAIError:
    return OpenAIError(503, f"Object storage is unavailable ({type(exc).__name__}); retry shortly.", code="storage_unavailable")


async def load_meta(gw: Gateway, who: Tenant, file_id: str, param: str | None = None) -> dict[str, Any]:
    """The stored file.json of one of this tenant's files; 404 in OpenAI's shape otherwise."""
    if not FILE_ID.fullmatch(file_id or ""):
        raise not_found("file", file_id, param)
    try:
        raw = await asyncio.to_thread(tenant_store(gw, who).read_optional, f"{file_id}/{META}")
    except StorageError as exc:
        raise storage_failed(exc) from None
    if raw is None:
        raise not_found("file", file_id, param)
    return json.loads(raw)


@router.post("/v1/files")
async def create_file(request: Request, who: TenantDep, gw: GatewayDep, file: UploadFile,
                      purpose: str = Form(...)) -> dict[str, Any]:
    if purpose != PURPOSE:
        raise bad_request(f"Invalid purpose '{purpose}': this server accepts only '{PURPOSE}'.", param="purpose",
                          code="invalid_purpose")
    limit = gw.settings.max_file_bytes
    meta = {"id": new_file_id(), "filename": safe_filename(file.filename), "purpose": purpose,
            "created_at": int(time.time())}
    with tempfile.TemporaryDirectory(prefix="kubetune-upload-") as tmp:
        path = Path(tmp) / meta["filename"]
        meta["bytes"] = await asyncio.to_thread(_receive, file, path, limit)
        try:
            meta["format"], meta["examples"] = await asyncio.to_thread(validate, path)
        except DataError as exc:
            raise bad_request(f"Invalid file format for fine-tuning: {exc}", param="file", code="invalid_file_format") from None
        except UserError as exc:
            raise bad_request(f"Invalid file for fine-tuning: {exc}", param="file", code="invalid_file_format") from None
        try:
            await asyncio.to_thread(_store, tenant_store(gw, who), path, meta)
        except StorageError as exc:
            raise storage_failed(exc) from None
    return public(meta)


def _list_meta(store: Store) -> list[dict[str, Any]]:
    out = []
    for name in store.list(""):
        parts = name.split("/")
        if len(parts) == 2 and parts[1] == META and FILE_ID.fullmatch(parts[0]):
            raw = store.read_optional(name)
            if raw:
                out.append(json.loads(raw))
    return out


@router.get("/v1/files")
async def list_files(who: TenantDep, gw: GatewayDep, purpose: str | None = None,
                     limit: int = Query(10000, ge=1, le=10000), order: str = Query("desc", pattern="^(asc|desc)$"),
                     after: str | None = None) -> dict[str, Any]:
    try:
        metas = await asyncio.to_thread(_list_meta, tenant_store(gw, who))
    except NotFound:
        metas = []
    except StorageError as exc:
        raise storage_failed(exc) from None
    metas = [public(m) for m in metas] + await results.listed(gw, who)
    metas = [m for m in metas if purpose is None or m["purpose"] == purpose]
    metas.sort(key=lambda m: (m["created_at"], m["id"]), reverse=order == "desc")
    return page(metas, after, limit)


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's cursor page: the `limit` items after the one whose id is `after` (from the start if absent)."""
    start = 0
    if after:
        ids = [item["id"] for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    data = items[start:start + limit]
    return {"object": "list", "data": data, "has_more": start + limit < len(items),
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, who: TenantDep, gw: GatewayDep) -> dict[str, Any]:
    if results.is_result(file_id):
        return (await results.content(gw, who, file_id))[0]
    return public(await load_meta(gw, who, file_id))


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, who: TenantDep, gw: GatewayDep) -> dict[str, Any]:
    if results.is_result(file_id):
        await results.content(gw, who, file_id)  # 404 unless it is this tenant's
        results.refuse_delete(file_id)
    await load_meta(gw, who, file_id)
    store = tenant_store(gw, who)

    def remove() -> None:
        store.delete([f"{file_id}/{META}"])  # stops existing first
        store.delete([n for n in store.list(file_id)])

    try:
        await asyncio.to_thread(remove)
    except StorageError as exc:
        raise storage_failed(exc) from None
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, who: TenantDep, gw: GatewayDep) -> Response:
    if results.is_result(file_id):
        meta, data = await results.content(gw, who, file_id)
        return Response(data, media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{meta["filename"]}"'})
    meta = await load_meta(gw, who, file_id)
    tmp = tempfile.TemporaryDirectory(prefix="kubetune-download-")
    dest = Path(tmp.name) / meta["filename"]
    try:
        await asyncio.to_thread(tenant_store(gw, who).download, f"{file_id}/data/{meta['filename']}", dest)
    except StorageError as exc:
        tmp.cleanup()
        raise storage_failed(exc) from None
    return FileResponse(dest, media_type="application/octet-stream", filename=meta["filename"],
                        background=BackgroundTask(tmp.cleanup))
