"""The operator's package holds the operator: the local tooling (tools/: kubetune_emulator, kubetune_local)
is the separate kubetune-local distribution, so `pip install kubetune[operator]` pulls no test tooling.
Builds the real wheel with pip (seconds, no network: --no-build-isolation --no-deps)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def operator_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Leaves build/ and kubetune.egg-info/ in the checkout (git-ignored), as any `pip wheel .` does.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True)
    return next(out.glob("kubetune-*.whl"))


def test_operator_wheel_has_no_local_tooling(operator_wheel):
    names = zipfile.ZipFile(operator_wheel).namelist()
    assert any(n.startswith("kubetune/handlers/") for n in names)
    leaked = sorted({n.split("/")[0] + "/" + n.split("/")[1] for n in names
                     if n.startswith(("kubetune_local/", "kubetune_emulator/", "kubetune/local/", "kubetune/emulator/"))})
    assert leaked == []


def test_operator_extra_pulls_no_test_tooling(operator_wheel):
    with zipfile.ZipFile(operator_wheel) as z:
        meta = Parser().parsestr(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())
    operator_reqs = [r for r in meta.get_all("Requires-Dist") or [] if 'extra == "operator"' in r]
    assert any(r.startswith("kopf") for r in operator_reqs), operator_reqs
    names = {r.split(";")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for r in operator_reqs}
    # aiohttp is not tooling here: the operator's API client and /metrics server use it (and kopf requires it);
    # the emulator's server library on top of it (kmock) is.
    assert not names & {"kmock", "rich", "pytest", "kubetune-local"}, names


def test_kubetune_local_without_the_tooling_says_how_to_get_it():
    """`kubetune local ...` where kubetune-local is not installed: a clear message, exit 2 (simulated by
    hiding the package from the import system)."""
    code = ("import sys; sys.modules['kubetune_local'] = None; from kubetune.cli import main; "
            "sys.exit(main(['local', 'quickstart', '--runtime', 'podman']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "kubetune-local" in proc.stderr and "pip install -e ./tools" in proc.stderr
