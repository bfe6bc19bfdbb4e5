"""Desired-set sources: a local file, and a ConfigMap watched through the Kubernetes API emulator."""

from __future__ import annotations

import asyncio
import base64
import json
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from kubetune_serving.kubeapi import KubeConnection, from_kubeconfig
from kubetune_serving.protocol import DesiredAdapter, DesiredSet
from kubetune_serving.sources import ConfigMapSource, FileSource, Update

from tests.serving.helpers import desired_set, write_json_atomic

SHA = "a" * 64
ONE = desired_set(1, ("a", "s3://m/a", SHA))
TWO = desired_set(2, ("a", "s3://m/a", SHA), ("b", "s3://m/b", SHA))


def parsed(data: dict) -> DesiredSet:
    return DesiredSet.model_validate(data)


async def next_update(updates, timeout: float = 5.0) -> Update:
    return await asyncio.wait_for(anext(updates), timeout)


async def test_file_source_reports_changes_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "desired.json"
    updates = FileSource(path, interval=0.02).updates()
    assert await next_update(updates) == Update(None, f"desired-set file {path} does not exist")
    write_json_atomic(path, ONE)
    assert await next_update(updates) == Update(parsed(ONE))
    path.write_text('{"generation": 3, "adapters": [{"name": "a", "manifestSha256": "abc"}]}')
    update = await next_update(updates)
    assert update.desired is None
    assert update.error == (f"invalid desired set in {path}: 2 error(s): adapters.0.uri: Field required; "
                            "adapters.0.manifestSha256: String should match pattern '^[a-f0-9]{64}$'")
    write_json_atomic(path, TWO)
    assert await next_update(updates) == Update(parsed(TWO))
    await updates.aclose()


def test_kubeconfig_token_and_ca(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "current-context": "prod",
        "contexts": [{"name": "other", "context": {"cluster": "x", "user": "x"}},
                     {"name": "prod", "context": {"cluster": "c1", "user": "u1", "namespace": "team-a"}}],
        "clusters": [{"name": "c1", "cluster": {"server": "https://k8s.example:6443/",
                                                "certificate-authority-data": base64.b64encode(b"CA PEM").decode()}}],
        "users": [{"name": "u1", "user": {"token": "t0ken"}}],
    }))
    connection = from_kubeconfig(kubeconfig)
    assert Path(connection.ca_file).read_bytes() == b"CA PEM"
    assert connection == KubeConnection(server="https://k8s.example:6443", namespace="team-a", token="t0ken",
                                        ca_file=connection.ca_file)
    assert connection.headers() == {"Authorization": "Bearer t0ken"}


def configmap(name: str, data: dict) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
            "data": {"adapters.json": json.dumps(data)}}


async def test_configmap_watch_propagates_in_under_a_second() -> None:
    emulator_module = pytest.importorskip("kubetune_emulator", reason="the Kubernetes API emulator is not available")
    from kubetune.builders import modeldeployment as md_builders
    from kubetune.builders.common import Parent

    with emulator_module.Emulator(rbac=True) as emu, tempfile.TemporaryDirectory() as tmp:
        emu.create(configmap("chat-adapters", ONE))
        emu.create(configmap("other", ONE))
        # The sidecar's identity as the operator builds it: its own ServiceAccount, Role and RoleBinding,
        # enforced by the emulator (a request the Role does not allow gets the API server's 403).
        parent = Parent("kubetune.io/v1alpha1", "ModelDeployment", "default", "chat", "0" * 8)
        names = md_builders.ServingNames.of("chat")
        for child in (md_builders.build_service_account(parent, names), md_builders.build_role(parent, names),
                      md_builders.build_role_binding(parent, names)):
            emu.create({**child, "metadata": {k: v for k, v in child["metadata"].items() if k != "ownerReferences"}})
        kubeconfig = emu.service_account_kubeconfig(Path(tmp) / "config", "default", names.service_account)
        source = ConfigMapSource(from_kubeconfig(kubeconfig), "default", "chat-adapters", "adapters.json")
        updates = source.updates()
        assert await next_update(updates) == Update(parsed(ONE))

        async def change(name: str, data: dict) -> None:
            patch = {"data": {"adapters.json": json.dumps(data)}}
            await asyncio.to_thread(emu.patch, "", "v1", "configmaps", "default", name, patch)

        await asyncio.sleep(0.3)  # let the watch connect
        await change("other", TWO)  # another ConfigMap: filtered out by the field selector
        started = time.monotonic()
        await change("chat-adapters", TWO)
        assert await next_update(updates) == Update(parsed(TWO))
        assert time.monotonic() - started < 1.0

        await asyncio.to_thread(emu.patch, "", "v1", "configmaps", "default", "chat-adapters",
                                {"data": {"adapters.json": "{not json"}})
        update = await next_update(updates)
        assert (update.desired, update.error.split(": ")[0]) == (
            None, "invalid desired set in ConfigMap default/chat-adapters key adapters.json")
        await asyncio.to_thread(emu.delete, "", "v1", "configmaps", "default", "chat-adapters")
        assert await next_update(updates) == Update(None, "ConfigMap default/chat-adapters does not exist")
        await updates.aclose()

        mine = [(r.verb, r.resource, r.namespace, r.query.get("fieldSelector")) for r in emu.requests
                if r.resource == "configmaps" and r.verb in ("get", "list", "watch")]
        # Only what RBAC with resourceNames=[chat-adapters] allows: list + watch by that name; all of it used.
        assert set(mine) == {("list", "configmaps", "default", "metadata.name=chat-adapters"),
                             ("watch", "configmaps", "default", "metadata.name=chat-adapters")}
        assert emu.denials() == []
        user = f"system:serviceaccount:default:{names.service_account}"
        assert emu.used_permissions(user) == {("list", "", "configmaps"), ("watch", "", "configmaps")}


async def test_configmap_source_reports_an_unreachable_api() -> None:
    source = ConfigMapSource(KubeConnection(server="http://127.0.0.1:9"), "default", "x", "adapters.json")
    updates = source.updates()
    update = await next_update(updates)
    assert update.desired is None
    assert update.error.startswith("cannot read ConfigMap default/x key adapters.json: ClientConnectorError")
    await updates.aclose()


def test_desired_adapters_compare_by_value() -> None:
    a = DesiredAdapter(name="a", uri="s3://m/a", manifest_sha256=SHA)
    assert a == DesiredAdapter.model_validate({"name": "a", "uri": "s3://m/a", "manifestSha256": SHA})
