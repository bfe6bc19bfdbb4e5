"""Local stand-in for the Deployment controller and kubelet for kubetune serving Deployments: one pod
per Deployment, its two containers (vLLM via `kubetune_serving.launch`, and the adapter-sync sidecar)
run as local processes on free ports, the pod marked Ready when the sidecar's /readyz says so."""

from __future__ import annotations

import copy
import logging
import socket
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api import constants as c
from ..builders.modeldeployment import SYNC_CONTAINER, TEMPLATE_HASH_ANNOTATION, VLLM_CONTAINER
from ..emulator import Emulator

log = logging.getLogger("kubetune.local")

# vLLM on CPU, as the serving tests run it (see docs/serving.md).
VLLM_CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServingPod:
    name: str
    template_hash: str
    vllm_port: int
    sync_port: int
    procs: list[subprocess.Popen]
    ready: bool = False


class LocalServing:
    def __init__(self, emu: Emulator, workdir: Path, python: str, resolve_env, spawn, terminate):
        self.emu, self.workdir, self.python = emu, workdir, python
        self._resolve_env, self._spawn, self._terminate = resolve_env, spawn, terminate
        self.pods: dict[tuple[str, str], ServingPod] = {}

    def sync_once(self) -> None:
        for dep in self.emu.list("apps", "v1", "deployments"):
            labels = dep["metadata"].get("labels") or {}
            if labels.get(c.LABEL_MANAGED_BY) == c.MANAGED_BY_VALUE and labels.get(c.LABEL_COMPONENT) == c.COMPONENT_SERVING:
                self._sync(dep)
        live = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in self.emu.list("apps", "v1", "deployments")}
        for key in [k for k in self.pods if k not in live]:
            self._stop(key)

    def stop(self) -> None:
        for key in list(self.pods):
            self._stop(key)

    def _stop(self, key: tuple[str, str]) -> None:
        pod = self.pods.pop(key)
        for proc in pod.procs:
            self._terminate(proc)

    def _sync(self, dep: dict[str, Any]) -> None:
        key = (dep["metadata"]["namespace"], dep["metadata"]["name"])
        template = dep["spec"]["template"]
        wanted = (template["metadata"].get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION, "")
        pod = self.pods.get(key)
        if pod is not None and (pod.template_hash != wanted or dep["spec"].get("replicas", 1) == 0):
            self._stop(key)  # a new template (or scaled to zero): replace the pod
            pod = None
        if pod is None:
            if dep["spec"].get("replicas", 1) > 0:
                self.pods[key] = self._start(dep, wanted)
            return
        if any(proc.poll() is not None for proc in pod.procs):
            log.warning("serving pod %s exited; restarting it", pod.name)
            self._stop(key)
            return
        if not pod.ready and _get(f"http://127.0.0.1:{pod.sync_port}/readyz") == 200:
            pod.ready = True
            self._mark(dep, pod)

    def _start(self, dep: dict[str, Any], template_hash: str) -> ServingPod:
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        pod_name = f"{name}-{template_hash[:5]}"
        spec = copy.deepcopy(dep["spec"]["template"]["spec"])
        vllm_port, sync_port = free_port(), free_port()
        for ctr in spec["containers"]:
            if ctr["name"] == SYNC_CONTAINER:
                ctr["ports"] = [{"name": "sync", "containerPort": sync_port}]
            if ctr["name"] == VLLM_CONTAINER:
                ctr["ports"] = [{"name": "http", "containerPort": vllm_port}]
        self.emu.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": pod_name, "namespace": ns, "labels": dep["spec"]["template"]["metadata"]["labels"],
            "annotations": dep["spec"]["template"]["metadata"].get("annotations", {}),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": dep["metadata"]["uid"],
                                 "controller": True}]}, "spec": spec})
        poddir = self.workdir / ns / pod_name
        poddir.mkdir(parents=True, exist_ok=True)
        procs = []
        for ctr in spec["containers"]:
            env = {**self._resolve_env(ns, pod_name, ctr, poddir, spec.get("volumes", [])), **VLLM_CPU_ENV}
            args = _local_args(ctr, vllm_port, sync_port, poddir)
            procs.append(self._spawn([self.python, *ctr["command"][1:], *args], env, poddir, ctr["name"]))
        self.emu.patch("", "v1", "pods", ns, pod_name, {"status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}]}}, subresource="status")
        self.emu.patch("apps", "v1", "deployments", ns, name, {"status": {
            "observedGeneration": dep["metadata"].get("generation", 1), "replicas": 1, "updatedReplicas": 1, "readyReplicas": 0}},
            subresource="status")
        log.info("started serving pod %s/%s (vLLM :%s, sidecar :%s)", ns, pod_name, vllm_port, sync_port)
        return ServingPod(pod_name, template_hash, vllm_port, sync_port, procs)

    def _mark(self, dep: dict[str, Any], pod: ServingPod) -> None:
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        self.emu.patch("", "v1", "pods", ns, pod.name, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                       subresource="status")
        self.emu.patch("apps", "v1", "deployments", ns, name, {"status": {
            "observedGeneration": dep["metadata"].get("generation", 1), "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
            "availableReplicas": 1, "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]}},
            subresource="status")


def _local_args(ctr: dict[str, Any], vllm_port: int, sync_port: int, poddir: Path) -> list[str]:
    """The container's args with in-pod ports and paths replaced by this machine's."""
    out, args = [], list(ctr.get("args", []))
    replace = {"--port": str(sync_port if ctr["name"] == SYNC_CONTAINER else vllm_port),
               "--vllm-url": f"http://127.0.0.1:{vllm_port}", "--cache-dir": str(poddir / "adapters"),
               "--model-cache": str(poddir / "models")}
    for i, arg in enumerate(args):
        out.append(replace[args[i - 1]] if i and args[i - 1] in replace else arg)
    return out


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except Exception:  # noqa: BLE001 - not up yet
        return None
