"""The identities of an e2e run, as on a cluster: the operator runs as the chart's ServiceAccount with
the chart's rendered RBAC; the trainer reports with a token of the ServiceAccount the operator made."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock

from kubetune_emulator import Emulator
from kubetune_local.run import OPERATOR_RBAC_VALUES

from ..chart.helm import NAMESPACE, RELEASE, objects

# The chart as the e2e operator runs: watching `default` only (`--namespace=default`, like the chart's args),
# the same values as the rendering `kubetune local` installs.
CHART_VALUES = OPERATOR_RBAC_VALUES
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def chart_rbac(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart's rendered ServiceAccount, roles and bindings (helm template, Helm's Go SDK)."""
    return [obj for obj in objects(values or CHART_VALUES) if obj["kind"] in RBAC_KINDS]


def install_operator_rbac(emu: Emulator, kubeconfig: Path, values: dict[str, Any] | None = None) -> str:
    """Apply the chart's RBAC (as the admin installing the chart) and write the operator's kubeconfig."""
    emu.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    for obj in chart_rbac(values):
        emu.apply(obj)
    return str(emu.write_kubeconfig(kubeconfig, {"token": emu.token(NAMESPACE, RELEASE)}, "default"))


# What each identity was allowed to do (verb, group, resource[/subresource]) over this session's e2e tests,
# by role: "operator", "trainer", "serving"; and the tests that contributed.
USAGE: dict[str, set[tuple[str, str, str]]] = {}
RECORDED: set[str] = set()
DESELECTED: set[str] = set()  # e2e tests left out of this session (-k, --deselect): the record is partial


def record_usage(emu: Emulator, test: str) -> None:
    for user, used in emu.used_permissions_by_user().items():
        role = identity(user)
        if role is not None:
            USAGE.setdefault(role, set()).update(used)
    RECORDED.add(test)


def identity(user: str) -> str | None:
    """The role an emulator user plays: the operator, or the pod whose ServiceAccount the operator made."""
    if user == OPERATOR_USER:
        return "operator"
    if user.startswith("system:serviceaccount:"):
        name = user.rsplit(":", 1)[1]
        return "trainer" if name.endswith("-trainer") else "serving" if name.endswith("-serving") else None
    return None


def pod_service_account(emu: Emulator, job: dict[str, Any]) -> str:
    return job["spec"]["template"]["spec"]["serviceAccountName"]


def report_as_trainer(emu: Emulator, job: dict[str, Any], ftj: str, body: dict[str, Any], workdir: Path) -> bool:
    """The trainer's own reporter (kubetune_trainer.reporting.KubeSender) PATCHes its FineTuneJob's status
    with a token of the pod's ServiceAccount, handed over as kubelet projects it: a token file."""
    from kubetune_trainer.reporting import KubeSender

    ns = job["metadata"]["namespace"]
    token_file = workdir / "token"
    token_file.write_text(emu.token(ns, pod_service_account(emu, job)))
    env = {"KUBETUNE_API_URL": emu.url, "KUBETUNE_API_TOKEN_FILE": str(token_file),
           "KUBETUNE_API_CA_FILE": emu.ca_file or ""}
    with mock.patch.dict(os.environ, env):
        sender = KubeSender(f"/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs/{ftj}/status")
    try:
        return sender.send(body)
    finally:
        sender.close()
