"""kubetune.clients.kube.Kube (aiohttp) against the API emulator over HTTPS with authentication and RBAC on (the
emulator plays the API server: its TLS, bearer tokens, Status bodies and server-side apply answers)."""

from __future__ import annotations

import asyncio
import socket
import time

import kubernetes
import pytest

from kubetune.clients.kube import RETRIES, Kube, KubeError

CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "default"}, "data": {"a": "1"}}


def _kube(kubeconfig) -> Kube:
    return Kube(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))


@pytest.mark.emulator(rbac=True)
async def test_apply_create_read_and_errors_over_tls_with_a_token(emulator):
    kube = _kube(emulator.kubeconfig)
    try:
        assert kube.api.configuration.host.startswith("https://")
        live, created = await kube.apply(CM)
        assert created and live["data"] == {"a": "1"}
        live, created = await kube.apply(CM | {"data": {"a": "2"}})
        assert not created and live["data"] == {"a": "2"}
        assert await kube.create_or_leave(CM) is None  # exists: left alone
        got = await kube.request("GET", "/api/v1/namespaces/default/configmaps/cfg")
        assert got["data"] == {"a": "2"}
        with pytest.raises(KubeError) as info:
            await kube.request("GET", "/api/v1/namespaces/default/configmaps/none")
        assert info.value.status == 404 and info.value.reason == "NotFound" and "none" in str(info.value)
        await kube.delete(CM)
        await kube.delete(CM)  # already gone: fine
    finally:
        await kube.close()


@pytest.mark.emulator(rbac=True)
async def test_a_token_the_api_server_refuses_is_a_401(emulator, tmp_path):
    kube = _kube(emulator.write_kubeconfig(tmp_path / "wrong", {"token": "not-a-token"}))
    try:
        with pytest.raises(KubeError) as info:
            await kube.request("GET", "/api/v1/namespaces/default/configmaps")
        assert info.value.status == 401
    finally:
        await kube.close()


async def test_no_api_server_is_a_connection_failure_after_the_retries():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = kubernetes.client.Configuration()
    cfg.host = f"http://127.0.0.1:{port}"
    kube = Kube(kubernetes.client.ApiClient(cfg))
    started = time.monotonic()
    try:
        with pytest.raises(KubeError) as info:
            await kube.request("GET", "/api/v1/namespaces")
    finally:
        await kube.close()
    assert info.value.status == 0 and info.value.reason == "ConnectionFailed"
    assert time.monotonic() - started >= sum(0.2 * 2**a for a in range(RETRIES - 1))  # it retried, with back-off


def test_the_proxy_is_used_unless_no_proxy_covers_the_api_server():
    cfg = kubernetes.client.Configuration()
    cfg.host, cfg.proxy = "https://10.96.0.1:443", "http://proxy.corp:3128"
    assert Kube(kubernetes.client.ApiClient(cfg))._options == {"proxy": "http://proxy.corp:3128", "proxy_headers": None}
    cfg.no_proxy = "10.96.0.0/12,.svc"
    assert Kube(kubernetes.client.ApiClient(cfg))._options == {}


@pytest.mark.emulator(rbac=True)
def test_one_session_per_event_loop_closed_by_close(emulator):
    kube = _kube(emulator.kubeconfig)

    async def use() -> tuple[object, bool]:
        await kube.request("GET", "/api/v1/namespaces/default/configmaps")
        session = kube._session()
        await kube.close()
        return session, session.closed

    first, closed = asyncio.run(use())
    second, _ = asyncio.run(use())  # another loop (a CLI's asyncio.run): a session of its own
    assert closed and first is not second
