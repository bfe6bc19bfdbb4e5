from __future__ import annotations

from collections.abc import Iterator

import pytest
from kopf.testing import KopfRunner

from .harness import ROOT, SETTINGS_ENV, Cluster, OperatorProcess


@pytest.fixture
def cluster(emulator, kubectl) -> Cluster:
    """The emulator with kubetune's CRDs applied by `kubectl apply`, as a user installs them."""
    kubectl("apply", "-f", str(ROOT / "crds"))
    return Cluster(emulator.kubeconfig)


@pytest.fixture
def operator(cluster, monkeypatch) -> Iterator[KopfRunner]:
    """The real kopf operator in this process (its own thread and loop), talking HTTP to the emulator."""
    for key, value in SETTINGS_ENV.items():
        monkeypatch.setenv(key, value)
    args = ["run", "--standalone", "--namespace", "default", "-m", "kubetune.handlers", "--verbose"]
    with KopfRunner(args, timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert "Traceback" not in runner.output, runner.output


@pytest.fixture
def operator_process(cluster, tmp_path) -> Iterator[OperatorProcess]:
    """A factory-like handle: `kubetune operator` as a subprocess (start/kill/restart)."""
    proc = OperatorProcess(cluster.kubeconfig, tmp_path / "operator.log")
    yield proc
    proc.kill()
