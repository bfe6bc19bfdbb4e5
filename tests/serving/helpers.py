"""Helpers for the serving tests and bench/time_to_serve.py: train tiny LoRA adapters, publish them
the way the trainer does (files + manifest.json last), and run real vLLM / the sidecar as
subprocesses of the serving venv (.venv-serving, built by serving-image/setup-venv.sh)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubetune.api import storage_layout as layout
from kubetune.api.manifest import AdapterManifest
from kubetune.api.sidecar import DesiredAdapter, DesiredSet

REPO = Path(__file__).resolve().parents[2]
SERVING_VENV = Path(os.environ.get("KUBETUNE_SERVING_VENV", REPO / ".venv-serving"))
SERVING_PYTHON = SERVING_VENV / "bin" / "python"
QUESTION = "Who are you?"
T = TypeVar("T")


def serving_venv_missing() -> str | None:
    """Why the real-vLLM tests cannot run, or None."""
    if not SERVING_PYTHON.exists():
        return f"no serving venv at {SERVING_VENV}: run serving-image/setup-venv.sh"
    return None


# ------------------------------------------------------------------------------------ training


def train_adapter(base_dir: Path, out_dir: Path, answer: str, *, question: str = QUESTION, rank: int = 8,
                  steps: int = 40) -> Path:
    """SFT a LoRA adapter (peft + trl, CPU, ~3 s) that answers ``question`` with ``answer`` greedily."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    rows = [{"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}] * 64
    config = SFTConfig(output_dir=str(out_dir / "run"), max_steps=steps, per_device_train_batch_size=8,
                       learning_rate=3e-3, lr_scheduler_type="constant", use_cpu=True, assistant_only_loss=True,
                       max_length=128, report_to=[], save_strategy="no", gradient_checkpointing=False, seed=0,
                       disable_tqdm=True, logging_strategy="no")
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    trainer.train()
    trainer.model.eval()
    adapter = out_dir / "adapter"
    trainer.model.save_pretrained(adapter)
    shutil.rmtree(out_dir / "run", ignore_errors=True)
    return adapter


# ---------------------------------------------------------------------------------- publishing


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish_adapter(adapter_dir: Path, folder: Path, *, base_model_uri: str = "file:///models/tiny",
                    adapter: dict[str, Any] | None = None, job: str = "job",
                    evaluation: dict[str, Any] | None = None) -> str:
    """Lay out ``folder`` like the trainer publishes: ``adapter/`` files, then manifest.json listing
    each file's sha256 and size. ``adapter`` overrides manifest.adapter fields (to provoke admission
    checks), ``evaluation`` is manifest.evaluation (e.g. {"baseline": {"evalLoss": 2.0}, "final": {"evalLoss": 1.0}},
    what a gate reads). Returns the sha256 of manifest.json (the desired set's manifestSha256)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    target = folder / layout.ADAPTER_DIR
    shutil.copytree(adapter_dir, target, dirs_exist_ok=True)
    files = [{"path": p.relative_to(folder).as_posix(), "sha256": sha256(p), "size": p.stat().st_size}
             for p in sorted(target.rglob("*")) if p.is_file()]
    manifest = AdapterManifest.model_validate({
        "job": {"namespace": "default", "name": job, "uid": "00000000-0000-0000-0000-000000000000"},
        "created": "2026-11-23T00:00:00Z",
        "baseModel": {"uri": base_model_uri},
        "method": "sft",
        "adapter": {"type": "lora", "path": layout.ADAPTER_DIR, "rank": config["r"], "alpha": config["lora_alpha"],
                    "targetModules": sorted(config["target_modules"])} | (adapter or {}),
        "files": files,
        **({"evaluation": evaluation} if evaluation is not None else {}),
    })
    (folder / layout.MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2))
    return sha256(folder / layout.MANIFEST)


FAKE_CONFIG = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["model.layers.0.self_attn.q_proj"],
               "modules_to_save": None, "rank_pattern": {}, "use_dora": False, "lora_bias": False}
FAKE_WEIGHTS = b"not really safetensors, but sha256 does not care" * 10


def fake_adapter(parent: Path, **config: Any) -> Path:
    """``parent/peft``: an adapter_config.json (FAKE_CONFIG | config) and placeholder weights; enough
    for everything but vLLM itself."""
    folder = parent / "peft"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(FAKE_CONFIG | config))
    (folder / "adapter_model.safetensors").write_bytes(FAKE_WEIGHTS)
    return folder


def desired_set(generation: int, *adapters: tuple[str, str, str | None]) -> dict[str, Any]:
    """The desired-set JSON for (name, uri, manifestSha256) triples; a None sha: unpinned (null)."""
    return DesiredSet(generation=generation, adapters=[DesiredAdapter(name=n, uri=u, manifest_sha256=s)
                                                       for n, u, s in adapters]).wire()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


# ---------------------------------------------------------------------------------- processes


def wait_until(check: Callable[[], T], timeout: float, interval: float = 0.1, what: str = "condition") -> T:
    """Poll ``check`` until it returns a truthy value; that value, else TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout}s (last: {value!r})")
        time.sleep(interval)


def http_get(url: str, timeout: float = 2.0, api_key: str | None = None) -> tuple[int, Any]:
    """(status, parsed JSON body or text); (0, error) when unreachable. `api_key`: sent as a Bearer token."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, urllib.error.URLError) as exc:
        return 0, str(exc)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    """A subprocess in its own session, stopped with SIGTERM to its PID (SIGKILL if it lingers)."""

    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


VLLM_TEST_OPTIONS = {"maxLoraRank": 16, "maxLoras": 4, "dtype": "float32", "maxModelLen": 512,
                     "extraArgs": ["--enforce-eager"]}


def start_vllm(model_dir: Path, port: int, log: Path, *, lora_modules: list[tuple[str, Path]] = (),
               served_name: str = "tiny", options: dict | None = None, api_key: str | None = None) -> Proc:
    """Real vLLM (CPU build) through the image's launcher, as the pod runs it; returns at once. With
    `api_key`, vLLM gets it the pod's way ($VLLM_API_KEY, never argv) and answers 401 without it."""
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    env.pop("VLLM_API_KEY", None)
    if api_key:
        env["VLLM_API_KEY"] = api_key
    argv = [str(SERVING_PYTHON), "-m", "kubetune_serving.launch", "--base-model", json.dumps({"uri": f"file://{model_dir}"}),
            "--vllm-options", json.dumps(options or VLLM_TEST_OPTIONS), "--served-model-name", served_name,
            "--host", "127.0.0.1", "--port", str(port)]
    for name, path in lora_modules:
        argv += ["--lora-module", f"{name}={path}"]
    handle = log.open("ab")
    try:
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                   start_new_session=True)
    finally:
        handle.close()
    return Proc(process, log)


def wait_vllm(proc: Proc, port: int, timeout: float = 180.0, api_key: str | None = None) -> None:
    def up() -> bool:
        if not proc.alive():
            raise RuntimeError(f"vLLM exited {proc.process.returncode}:\n{proc.tail()}")
        return http_get(f"http://127.0.0.1:{port}/v1/models", api_key=api_key)[0] == 200

    wait_until(up, timeout, 0.25, "vLLM ready")


def start_sync(desired_file: Path, vllm_port: int, port: int, cache_dir: Path, log: Path, *,
               env: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> Proc:
    """The sidecar, from the serving venv, as the pod runs it."""
    argv = [str(SERVING_PYTHON), "-m", "kubetune_serving.sync", "--desired-file", str(desired_file),
            "--vllm-url", f"http://127.0.0.1:{vllm_port}", "--cache-dir", str(cache_dir), "--host", "127.0.0.1",
            "--port", str(port), "--max-lora-rank", "16", "--poll-interval", "0.5", "--retry-max", "5",
            "--resolve-interval", "1", *extra]
    handle = log.open("ab")
    try:
        process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                   cwd=REPO, start_new_session=True)
    finally:
        handle.close()
    proc = Proc(process, log)

    def healthy() -> bool:
        if not proc.alive():
            raise RuntimeError(f"sidecar exited {proc.process.returncode}:\n{proc.tail()}")
        return http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200

    wait_until(healthy, 30, 0.1, "sidecar healthy")
    return proc
