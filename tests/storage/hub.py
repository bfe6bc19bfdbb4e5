"""A local stand-in for the Hugging Face Hub: the part of its HTTP API that huggingface_hub's downloads call, as
documented (https://huggingface.co/docs/hub/api) and as huggingface_hub 2.4's own code reads it. Point
HF_ENDPOINT (or the endpoint argument) at ``HubStandIn.url``. There is no internet here, so this plays the Hub.

    HEAD/GET /{repo}/resolve/{revision}/{path}       a file: X-Repo-Commit (the commit the revision resolves to),
                                                     ETag (quoted), Content-Length; GET also sends the bytes
    GET /api/models/{repo}/tree/{revision}[/{path}]  the file listing (?recursive=true), [{type, oid, size, path}]
    GET /api/models/{repo}/revision/{revision}       repository info: {id, sha, siblings: [{rfilename}]}

Errors as the Hub sends them: 404 + ``X-Error-Code: RepoNotFound`` (unknown repository, or private and no
valid token: the Hub does not tell them apart), ``RevisionNotFound``, ``EntryNotFound`` (with X-Repo-Commit).
Revisions: a branch name or a full 40-hex commit sha. Only model repositories. Every request is recorded.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: bytes}
    branches: dict[str, str] = field(default_factory=dict)  # name -> sha
    token: str | None = None  # private: this token is required


class HubStandIn:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Authorization header)
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                stand_in._answer(self, body=False)

            def do_GET(self) -> None:
                stand_in._answer(self, body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- repository contents -------------------------------------------------------------------------------

    def commit(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", token: str | None = None) -> str:
        """A new commit on ``branch`` holding exactly ``files``; returns its sha."""
        repo = self.repos.setdefault(repo_id, Repo())
        repo.token = token if token is not None else repo.token
        sha = hashlib.sha1(json.dumps([repo_id, len(repo.commits), sorted(files)]).encode()).hexdigest()
        repo.commits[sha] = dict(files)
        repo.branches[branch] = sha
        return sha

    def commit_folder(self, repo_id: str, folder: Path, prefix: str = "", **kwargs) -> str:
        files = {"/".join(x for x in (prefix, p.relative_to(folder).as_posix()) if x): p.read_bytes()
                 for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.commit(repo_id, files, **kwargs)

    # ---- HTTP ------------------------------------------------------------------------------------------------

    def _answer(self, handler: http.server.BaseHTTPRequestHandler, body: bool) -> None:
        auth = handler.headers.get("Authorization")
        self.requests.append((handler.command, handler.path, auth))
        path = urlsplit(handler.path).path
        query = urlsplit(handler.path).query
        try:
            if path.startswith("/api/models/"):
                status, headers, payload = self._api(path[len("/api/models/"):], query, auth)
            else:
                status, headers, payload = self._resolve(path.lstrip("/"), auth)
        except _HubError as err:
            status, headers, payload = err.status, {"X-Error-Code": err.code, **err.headers}, err.code.encode()
        handler.send_response(status)
        for key, value in {"Content-Length": str(len(payload)), **headers}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(payload)

    def _repo(self, parts: list[str], auth: str | None) -> tuple[str, Repo, list[str]]:
        repo_id = "/".join(parts[:2])
        repo = self.repos.get(repo_id)
        if repo is None or (repo.token is not None and auth != f"Bearer {repo.token}"):
            raise _HubError(401 if repo is not None else 404, "RepoNotFound")
        return repo_id, repo, parts[2:]

    @staticmethod
    def _commit(repo: Repo, revision: str) -> str:
        revision = unquote(revision)
        if revision in repo.commits:
            return revision
        if revision in repo.branches:
            return repo.branches[revision]
        raise _HubError(404, "RevisionNotFound")

    def _resolve(self, path: str, auth: str | None) -> tuple[int, dict[str, str], bytes]:
        parts = path.split("/")
        repo_id, repo, rest = self._repo(parts, auth)
        if len(rest) < 3 or rest[0] != "resolve":
            raise _HubError(404, "EntryNotFound")
        sha = self._commit(repo, rest[1])
        name = unquote("/".join(rest[2:]))
        data = repo.commits[sha].get(name)
        if data is None:
            raise _HubError(404, "EntryNotFound", {"X-Repo-Commit": sha})
        return 200, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                     "Content-Type": "application/octet-stream"}, data

    def _api(self, path: str, query: str, auth: str | None) -> tuple[int, dict[str, str], bytes]:
        parts = path.split("/")
        repo_id, repo, rest = self._repo(parts, auth)
        if len(rest) >= 2 and rest[0] == "tree":
            sha = self._commit(repo, rest[1])
            under = unquote("/".join(rest[2:])).strip("/")
            recursive = "recursive=true" in query.lower() or "recursive=1" in query
            entries = []
            for name, data in sorted(repo.commits[sha].items()):
                if under and not name.startswith(under + "/"):
                    continue
                inner = name[len(under):].lstrip("/")
                if not recursive and "/" in inner:
                    continue
                entries.append({"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name})
            return 200, {"Content-Type": "application/json"}, json.dumps(entries).encode()
        if len(rest) == 2 and rest[0] == "revision":
            sha = self._commit(repo, rest[1])
            info = {"id": repo_id, "sha": sha, "siblings": [{"rfilename": n} for n in sorted(repo.commits[sha])]}
            return 200, {"Content-Type": "application/json"}, json.dumps(info).encode()
        raise _HubError(404, "EntryNotFound")


class _HubError(Exception):
    def __init__(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
        self.status, self.code, self.headers = status, code, headers or {}
