"""The gateway against the API emulator (RBAC on) and the real kopf operator, called with the official `openai` client.

What is real: the gateway (uvicorn serving kubetune.gateway over HTTP, its own thread and loop), the kopf
operator (watching the two tenant namespaces, as the chart's ServiceAccount with the chart's RBAC), object
storage (SeaweedFS S3, tests/fixtures/s3.py), the openai SDK. The gateway runs as its own ServiceAccount
with exactly kubetune.gateway.rbac's rights: a 403 to it fails the test (`_gateway_is_never_denied`).
Nothing plays kubelet or the Job controller unless a test does (tests/e2e/harness.py's play_* helpers,
named in the test's docstring).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
import openai
import pytest
import uvicorn
from kopf.testing import KopfRunner

from kubetune.clients.kube import Kube
from kubetune.gateway.app import create_app
from kubetune.gateway.rbac import rbac_objects
from kubetune.gateway.settings import GatewaySettings
from kubetune.gateway.tenancy import TenantLimits, key_secret, new_key
from kubetune_storage import Storage

from ..e2e.harness import ROOT, SETTINGS_ENV, Cluster
from ..e2e.rbac import install_operator_rbac
from ..serving.helpers import free_port

KEYS_NAMESPACE = "kubetune-system"
GATEWAY_SA = "kubetune-gateway"
GATEWAY_USER = f"system:serviceaccount:{KEYS_NAMESPACE}:{GATEWAY_SA}"
TENANTS = ("team-a", "team-b")
OUTSIDER = "default"  # a namespace that is not a tenant's: the gateway has no rights there
BASE_MODELS = {
    "tiny-chat": {"uri": "s3://models/tiny-chat", "resources": {"gpus": 1}},
    "big-chat": {"uri": "s3://models/big-chat", "resources": {"gpus": 4}},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents and item.get_closest_marker("emulator") is None:
            item.add_marker(pytest.mark.emulator(rbac=True))


@dataclass
class Stack:
    url: str
    cluster: dict[str, Cluster]  # namespace -> an admin client there
    keys: dict[str, str] = field(default_factory=dict)  # tenant -> API key
    storage: Storage | None = None
    settings: GatewaySettings | None = None

    def client(self, key: str | None) -> openai.OpenAI:
        return openai.OpenAI(api_key=key or "unused", base_url=self.url + "/v1", max_retries=0, timeout=30)

    def tenant(self, namespace: str) -> openai.OpenAI:
        return self.client(self.keys[namespace])


def add_key(emu, tenant: str, limits: TenantLimits) -> str:
    key = new_key()
    emu.apply(key_secret(key, tenant, limits, KEYS_NAMESPACE))
    return key


@pytest.fixture
def stack(emulator, kubectl, tmp_path, s3_server, s3_bucket, monkeypatch) -> Iterator[Stack]:
    kubectl("apply", "-f", str(ROOT / "crds"))
    for ns in (*TENANTS, KEYS_NAMESPACE):
        emulator.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    operator_kubeconfig = install_operator_rbac(emulator, tmp_path / "operator.kubeconfig",
                                                {"watch": {"namespaces": list(TENANTS)}})
    emulator.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": GATEWAY_SA, "namespace": KEYS_NAMESPACE}})
    for obj in rbac_objects(GATEWAY_SA, KEYS_NAMESPACE, list(TENANTS)):
        emulator.apply(obj)
    gateway_kubeconfig = emulator.write_kubeconfig(tmp_path / "gateway.kubeconfig",
                                                   {"token": emulator.token(KEYS_NAMESPACE, GATEWAY_SA)}, KEYS_NAMESPACE)
    keys = {
        "team-a": add_key(emulator, "team-a", TenantLimits(max_concurrent_jobs=2, max_gpus_per_job=1,
                                                            allowed_base_models=["tiny-chat", "big-chat"],
                                                            allowed_methods=["supervised", "dpo"])),
        "team-b": add_key(emulator, "team-b", TenantLimits(max_concurrent_jobs=1, max_gpus_per_job=1,
                                                            allowed_base_models=["tiny-chat"], allowed_methods=["supervised"])),
    }
    settings = GatewaySettings.model_validate({"keysNamespace": KEYS_NAMESPACE, "filesUri": f"s3://{s3_bucket}/files",
                                               "maxFileBytes": 1024 * 1024, "baseModels": BASE_MODELS})
    storage = Storage(s3_server.env)
    kube = Kube(kubernetes.config.new_client_from_config(config_file=str(gateway_kubeconfig)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, kube, storage), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the gateway did not start"
    out = Stack(url=f"http://127.0.0.1:{port}", cluster={ns: Cluster(emulator.kubeconfig, ns) for ns in (*TENANTS, OUTSIDER)},
                keys=keys, storage=storage, settings=settings)
    out.operator_kubeconfig = operator_kubeconfig  # type: ignore[attr-defined]
    try:
        yield out
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    denied = emulator.denials(GATEWAY_USER)
    expected = getattr(out, "expected_denials", 0)
    assert len(denied) == expected, "the gateway was denied (kubetune.gateway.rbac):\n" + "\n".join(denied)


@pytest.fixture
def operator(stack, monkeypatch) -> Iterator[KopfRunner]:
    """The real kopf operator, watching the tenant namespaces as the chart's ServiceAccount (tests/e2e/conftest.py)."""
    import kubernetes.config.kube_config as kube_config

    for key, value in SETTINGS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KUBECONFIG", stack.operator_kubeconfig)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", stack.operator_kubeconfig)
    args = ["run", "--standalone", "-m", "kubetune.handlers", "--verbose"]
    for ns in TENANTS:
        args += ["--namespace", ns]
    with KopfRunner(args, timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert "Traceback" not in runner.output, runner.output
