"""vLLM's command line from ModelDeployment options, and the sidecar's flags/env."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kubetune.api.modeldeployment import VLLMOptions
from kubetune_serving.launch import build_vllm_argv, vllm_env
from kubetune_serving.sync import SyncOptions, parse_args


def test_vllm_argv_defaults() -> None:
    assert build_vllm_argv("Qwen/Qwen2-0.5B", VLLMOptions(), served_model_name="chat") == [
        "python", "-m", "vllm.entrypoints.openai.api_server", "--model", "Qwen/Qwen2-0.5B",
        "--served-model-name", "chat", "--host", "0.0.0.0", "--port", "8000",
        "--dtype", "auto", "--enable-lora", "--max-loras", "4", "--max-lora-rank", "16",
    ]


def test_vllm_argv_every_option() -> None:
    options = VLLMOptions.model_validate({
        "maxLoras": 2, "maxLoraRank": 64, "maxCpuLoras": 8, "maxModelLen": 4096, "tensorParallelSize": 2,
        "gpuMemoryUtilization": "0.85", "dtype": "bfloat16", "extraArgs": ["--enforce-eager", "--seed", "1"],
    })
    argv = build_vllm_argv("/models/m", options, served_model_name="m", host="127.0.0.1", port=9000,
                           revision="abc123", trust_remote_code=True, lora_modules=[("a", "/c/a"), ("b", "/c/b")],
                           python="/venv/bin/python")
    assert argv == [
        "/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/m",
        "--served-model-name", "m", "--host", "127.0.0.1", "--port", "9000", "--revision", "abc123",
        "--trust-remote-code", "--dtype", "bfloat16", "--enable-lora", "--max-loras", "2", "--max-lora-rank", "64",
        "--max-cpu-loras", "8", "--max-model-len", "4096", "--tensor-parallel-size", "2",
        "--gpu-memory-utilization", "0.85", "--lora-modules", "a=/c/a", "b=/c/b", "--enforce-eager", "--seed", "1",
    ]


def test_vllm_env_allows_runtime_lora_updates() -> None:
    assert vllm_env({"PATH": "/bin", "VLLM_API_KEY": "k"}) == {
        "PATH": "/bin", "VLLM_API_KEY": "k", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def test_launch_dry_run_resolves_uris(tmp_path: Path) -> None:
    def dry(base: dict, *extra: str, env: dict | None = None) -> list[str]:
        out = subprocess.run([sys.executable, "-m", "kubetune_serving.launch", "--base-model", json.dumps(base),
                              "--dry-run", "--vllm-options", '{"maxLoraRank": 8}', *extra],
                             capture_output=True, text=True, check=True, env=env)
        return json.loads(out.stdout)[3:]

    assert dry({"uri": "hf://Qwen/Qwen2-0.5B", "revision": "main"}) == [
        "--model", "Qwen/Qwen2-0.5B", "--served-model-name", "Qwen2-0.5B", "--host", "0.0.0.0", "--port", "8000",
        "--revision", "main", "--dtype", "auto", "--enable-lora", "--max-loras", "4", "--max-lora-rank", "8"]
    assert dry({"uri": "pvc://models/tiny"}, "--served-model-name", "t", "--lora-module", "a=/x",
               env={"KUBETUNE_PVC_ROOT": str(tmp_path), "PATH": "/usr/bin"})[:4] == [
        "--model", f"{tmp_path}/models/tiny", "--served-model-name", "t"]


def test_sync_options_from_flags_and_env() -> None:
    env = {"KUBETUNE_DESIRED_CONFIGMAP": "team-a/chat-adapters", "KUBETUNE_MAX_LORA_RANK": "64",
           "KUBETUNE_BASE_MODEL_URI": "hf://Qwen/Qwen2-0.5B"}
    assert parse_args(["--port", "9001", "--poll-interval", "0.5"], env) == SyncOptions(
        desired_file=None, desired_configmap=("team-a", "chat-adapters"), desired_key="adapters.json",
        vllm_url="http://127.0.0.1:8000", cache_dir=Path("/var/cache/kubetune/adapters"), host="0.0.0.0", port=9001,
        max_lora_rank=64, base_model_uri="hf://Qwen/Qwen2-0.5B", base_model_revision=None, poll_interval=0.5,
        retry_max=60.0, resolve_interval=10.0, log_level="INFO",
    )
    assert parse_args(["--desired-file", "/d.json", "--max-lora-rank", "8"], {}).desired_file == Path("/d.json")
    assert parse_args(["--desired-configmap", "chat"], {}).desired_configmap == (None, "chat")


@pytest.mark.parametrize("argv", [[], ["--desired-file", "/d", "--desired-configmap", "x"],
                                  ["--desired-file", "/d", "--max-lora-rank", "0"],
                                  ["--desired-file", "/d", "--resolve-interval", "0"]])
def test_sync_options_refuse(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv, {})
    assert info.value.code == 2
    assert "error: " in capsys.readouterr().err
