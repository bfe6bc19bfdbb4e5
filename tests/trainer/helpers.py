"""Build trainer configs (the JSON the operator mounts) for tests, through the real API models."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubetune.api.storage_layout import job_prefix
from kubetune.api.trainer_config import TrainerConfig

NAMESPACE = "team-a"

# Fast settings that still learn on the tiny model (TESTING.md).
FAST = {"batchSize": 8, "learningRate": "3e-3", "lrScheduler": "constant", "warmupRatio": "0", "maxLength": 128}


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_config(path: Path, *, job: str, model: str, train: str, output: str, progress_file: Path | None = None,
                spec: dict[str, Any] | None = None, hyperparameters: dict[str, Any] | None = None,
                progress: dict[str, Any] | None = None) -> Path:
    """Write a valid TrainerConfig JSON to path (validated by the model first) and return path."""
    body = {
        "baseModel": {"uri": model},
        "dataset": {"train": train},
        "hyperparameters": {**FAST, "maxSteps": 30, **(hyperparameters or {})},
        "checkpointing": {"intervalSteps": 10, "keep": 2},
        "output": {"uri": output},
        "resources": {"gpus": 0},
    }
    body = deep_merge(body, spec or {})
    config = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "TrainerConfig",
        "job": {"namespace": NAMESPACE, "name": job, "uid": "0000-1111"},
        "spec": body,
        "outputPrefix": job_prefix(output, NAMESPACE, job),
        "progress": progress or ({"mode": "file", "file": str(progress_file), "intervalSeconds": 1} if progress_file
                                 else {"mode": "none"}),
    }
    TrainerConfig.model_validate(config)
    path.write_text(json.dumps(config, indent=2))
    return path


def progress_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line)["status"] for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def manifest_problems(root: Path) -> list[str]:
    """Differences between manifest.json and the files under root (empty = every hash matches)."""
    import hashlib

    manifest = json.loads((root / "manifest.json").read_text())
    listed = {f["path"]: (f["sha256"], f["size"]) for f in manifest["files"]}
    on_disk = {p.relative_to(root).as_posix(): p for p in root.rglob("*")
               if p.is_file() and p.name != "manifest.json" and not p.relative_to(root).as_posix().startswith("checkpoints/")}
    problems = [f"not listed: {name}" for name in sorted(set(on_disk) - set(listed))]
    problems += [f"missing: {name}" for name in sorted(set(listed) - set(on_disk))]
    for name in sorted(set(listed) & set(on_disk)):
        data = on_disk[name].read_bytes()
        if (hashlib.sha256(data).hexdigest(), len(data)) != listed[name]:
            problems.append(f"hash or size differs: {name}")
    return problems


def train_losses(root: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (root / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


class FakeApi:
    """A local HTTP server standing in for the Kubernetes API: records PATCHes (with their arrival
    time.monotonic()), answers `status`."""

    def __init__(self, status: int = 200):
        self.requests: list[dict] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self):  # noqa: N802
                length = int(self.headers["Content-Length"])
                outer.requests.append({"path": self.path, "headers": dict(self.headers),
                                       "body": json.loads(self.rfile.read(length)), "time": time.monotonic()})
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
