from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kopf.testing import KopfRunner

from .harness import ROOT, SETTINGS_ENV, Cluster, OperatorProcess
from .rbac import DESELECTED, OPERATOR_USER, install_operator_rbac, record_usage


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every e2e emulator authenticates and authorizes (RBAC), like an API server."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents and item.get_closest_marker("emulator") is None:
            item.add_marker(pytest.mark.emulator(rbac=True))


def pytest_deselected(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    DESELECTED.update(item.nodeid for item in items if here in Path(item.fspath).parents)


@pytest.fixture
def cluster(emulator, kubectl, tmp_path) -> Cluster:
    """The emulator with kubetune's CRDs applied by `kubectl apply`, as a user installs them, and the chart's
    rendered RBAC; `cluster` itself acts as the admin, `cluster.operator_kubeconfig` as the operator."""
    kubectl("apply", "-f", str(ROOT / "crds"))
    out = Cluster(emulator.kubeconfig)
    out.operator_kubeconfig = install_operator_rbac(emulator, tmp_path / "operator.kubeconfig")
    return out


@pytest.fixture(autouse=True)
def _operator_is_never_denied(request) -> Iterator[None]:
    """A 403 to the operator is a test failure: a rule missing from the chart (or a Role it may not grant).
    What every identity was allowed to do is added to the session's record (see test_zz_least_privilege.py)."""
    emu = request.getfixturevalue("emulator") if "cluster" in request.fixturenames else None
    yield
    if emu is not None:
        record_usage(emu, request.node.nodeid)
        denied = emu.denials(OPERATOR_USER)
        assert not denied, "the operator was denied (chart RBAC):\n" + "\n".join(sorted(set(denied)))


@pytest.fixture
def operator(cluster, monkeypatch, request) -> Iterator[KopfRunner]:
    """The real kopf operator in this process (its own thread and loop), talking HTTPS to the emulator as
    the chart's ServiceAccount, with the platform settings SETTINGS_ENV and the test module's OPERATOR_ENV."""
    import kubernetes.config.kube_config as kube_config

    for key, value in {**SETTINGS_ENV, **getattr(request.module, "OPERATOR_ENV", {})}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KUBECONFIG", cluster.operator_kubeconfig)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", cluster.operator_kubeconfig)
    args = ["run", "--standalone", "--namespace", "default", "-m", "kubetune.handlers", "--verbose"]
    with KopfRunner(args, timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert "Traceback" not in runner.output, runner.output


@pytest.fixture
def operator_process(cluster, tmp_path) -> Iterator[OperatorProcess]:
    """A factory-like handle: `kubetune operator` as a subprocess (start/kill/restart), as the chart's ServiceAccount."""
    proc = OperatorProcess(cluster.operator_kubeconfig, tmp_path / "operator.log")
    yield proc
    proc.kill()
