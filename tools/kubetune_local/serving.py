"""Local stand-in for the Deployment controller and kubelet for kubetune serving Deployments.

Deployment controller: `spec.replicas` pods per Deployment, named like a ReplicaSet's
(`<deployment>-<template hash>-<5 chars>`); a new pod template rolls them within the Deployment's
RollingUpdate `maxSurge`/`maxUnavailable` (a new pod first, an old one removed once the new one is
Ready); scaling down removes not-Ready pods first, then the newest; status
replicas/updatedReplicas/readyReplicas/availableReplicas counted from the pods.

Kubelet: each pod's two containers (vLLM via `kubetune_serving.launch`, and the adapter-sync
sidecar) run as local processes on the pod's own free ports; a container whose process exits is
started again alone (restartPolicy Always, restartCount counted, CrashLoopBackOff-style delay from
the second restart on) while the pod's other container and every other pod keep running; the
sidecar's readinessProbe (/readyz) is run every periodSeconds and flips the pod's Ready condition.
A pod the controller removes is deleted from the API first (it leaves the Service's endpoints) and its
processes get SIGTERM only after its containers' `lifecycle.preStop.sleep` (the kubelet runs the preStop
hook before the stop signal), without holding up the other pods.
Status is written only when it changes (each write is an event the operator reacts to).
"""

from __future__ import annotations

import copy
import logging
import secrets
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubetune.api import constants as c
from kubetune.builders.modeldeployment import TEMPLATE_HASH_ANNOTATION
from kubetune_emulator import Emulator
from .containers import UnsupportedPodSpec

log = logging.getLogger("kubetune_local")

# vLLM on CPU, as the serving tests run it (see docs/serving.md).
VLLM_CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what the ReplicaSet controller draws pod name suffixes from
BACKOFF_SECONDS, BACKOFF_MAX_SECONDS = 10.0, 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen
    started_at: str
    restarts: int = 0
    exited_at: float | None = None  # monotonic time its process was seen dead (waiting for its restart)
    last_state: dict[str, Any] | None = None  # the previous run's `terminated` state
    restart: Callable[[], Any] | None = None  # the container mode: starts the container again


@dataclass
class ServingPod:
    namespace: str
    name: str
    deployment: str
    template_hash: str
    vllm_port: int
    sync_port: int
    poddir: Path
    probe_period: float
    containers: dict[str, Container] = field(default_factory=dict)
    ready: bool = False
    probed_at: float = 0.0
    written: dict[str, Any] | None = None  # the pod status last written
    drain_seconds: float = 0.0  # the longest preStop sleep of its containers

    @property
    def procs(self) -> list[subprocess.Popen]:
        return [ctr.proc for ctr in self.containers.values()]


class LocalServing:
    def __init__(self, emu: Emulator, workdir: Path, python: str, resolve_env, spawn, terminate, containers=None):
        self.emu, self.workdir, self.python = emu, workdir, python
        self.containers = containers  # ContainerPods in the container mode (podman), else None: processes
        self._resolve_env, self._spawn, self._terminate = resolve_env, spawn, terminate
        self.pods: dict[tuple[str, str], ServingPod] = {}  # (namespace, pod name) -> pod
        self._dep_status: dict[tuple[str, str], dict[str, Any]] = {}  # Deployment status last written
        self.refused: dict[str, str] = {}  # "ns/deployment" -> why the container mode cannot run its pods
        self.draining: list[tuple[float, ServingPod]] = []  # (monotonic time of its SIGTERM, pod) after a preStop sleep

    def pods_of(self, namespace: str, deployment: str) -> list[ServingPod]:
        """The Deployment's pods, oldest first."""
        return [p for p in self.pods.values() if p.namespace == namespace and p.deployment == deployment]

    def sync_once(self) -> None:
        now = time.monotonic()
        for due, pod in [entry for entry in self.draining if entry[0] <= now]:
            self.draining.remove((due, pod))
            self._stop_processes(pod)
        live = set()
        for dep in self.emu.list("apps", "v1", "deployments"):
            labels = dep["metadata"].get("labels") or {}
            if labels.get(c.LABEL_MANAGED_BY) == c.MANAGED_BY_VALUE and labels.get(c.LABEL_COMPONENT) == c.COMPONENT_SERVING:
                live.add((dep["metadata"]["namespace"], dep["metadata"]["name"]))
                self._sync(dep)
        for pod in [p for p in self.pods.values() if (p.namespace, p.deployment) not in live]:
            self._remove(pod, delete_object=False)  # the Deployment is gone; garbage collection takes its pods

    def stop(self) -> None:
        pods = self.detach_all()
        self._terminate([proc for pod in pods for proc in pod.procs])
        self.release(pods)

    def detach_all(self) -> list[ServingPod]:
        """Forget every pod (on shutdown) and return them, for the caller to stop their processes together."""
        pods, self.pods = list(self.pods.values()), {}
        draining, self.draining = [pod for _, pod in self.draining], []
        return pods + draining

    def release(self, pods: list[ServingPod]) -> None:
        """After the pods' processes stopped: the container mode's per-pod state goes."""
        for pod in pods:
            if self.containers is not None:
                self.containers.release(pod.namespace, pod.name)
            log.info("removed serving pod %s/%s", pod.namespace, pod.name)

    # ---------------------------------------------------------------------- Deployment controller
    def _sync(self, dep: dict[str, Any]) -> None:
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        for pod in self.pods_of(ns, name):
            self._tend(pod)
        want = int(dep["spec"].get("replicas", 1))
        wanted_hash = (dep["spec"]["template"]["metadata"].get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION, "")
        surge, unavailable = _rolling(dep, want)
        pods = self.pods_of(ns, name)
        new = [p for p in pods if p.template_hash == wanted_hash]
        old = [p for p in pods if p.template_hash != wanted_hash]
        excess = sorted(new, key=lambda p: (p.ready, -pods.index(p)))[:max(0, len(new) - want)]
        for pod in excess:  # scale down: not-Ready pods first, then the newest
            self._remove(pod)
            new.remove(pod)
        while len(new) < want and len(new) + len(old) < want + (surge or not unavailable) and f"{ns}/{name}" not in self.refused:
            try:
                new.append(self._start(dep, wanted_hash))
            except UnsupportedPodSpec as exc:  # (the container mode): loud, once; LocalRun.wait raises it
                self.refused[f"{ns}/{name}"] = str(exc)
                log.error("deployment %s/%s: %s", ns, name, exc)
        ready = sum(1 for p in new + old if p.ready)
        for pod in sorted(old, key=lambda p: p.ready):
            if not pod.ready or ready - 1 >= want - unavailable:
                ready -= pod.ready
                self._remove(pod)
        self._deployment_status(dep, want, wanted_hash, unavailable)

    def _deployment_status(self, dep: dict[str, Any], want: int, wanted_hash: str, unavailable: int) -> None:
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        pods = self.pods_of(ns, name)
        ready = sum(1 for p in pods if p.ready)
        available = ready >= want - unavailable
        status = {"observedGeneration": dep["metadata"].get("generation", 1), "replicas": len(pods),
                  "updatedReplicas": sum(1 for p in pods if p.template_hash == wanted_hash), "readyReplicas": ready,
                  "availableReplicas": ready, "unavailableReplicas": max(0, want - ready), "conditions": [
                      {"type": "Available", "status": "True" if available else "False",
                       "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                       "message": "Deployment has minimum availability." if available
                       else "Deployment does not have minimum availability."}]}
        if self._dep_status.get((ns, name)) != status:
            self.emu.patch("apps", "v1", "deployments", ns, name, {"status": status}, subresource="status")
            self._dep_status[(ns, name)] = status

    def _start(self, dep: dict[str, Any], template_hash: str) -> ServingPod:
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        pod_name = f"{name}-{template_hash[:10]}-{''.join(secrets.choice(NAME_CHARS) for _ in range(5))}"
        template = dep["spec"]["template"]
        spec = copy.deepcopy(template["spec"])
        vllm_port, sync_port = free_port(), free_port()
        period = 10.0
        for ctr in spec["containers"]:
            if ctr["name"] == c.SERVING_SYNC_CONTAINER:
                ctr["ports"] = [{"name": "sync", "containerPort": sync_port}]
                period = float((ctr.get("readinessProbe") or {}).get("periodSeconds", 10))
            if ctr["name"] == c.SERVING_VLLM_CONTAINER:
                ctr["ports"] = [{"name": "http", "containerPort": vllm_port}]
        plans = self.containers.plan(spec) if self.containers is not None else None  # refused before the Pod exists
        live = self.emu.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": pod_name, "namespace": ns, "labels": {**template["metadata"]["labels"], "pod-template-hash": template_hash[:10]},
            "annotations": template["metadata"].get("annotations", {}),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": dep["metadata"]["uid"],
                                 "controller": True}]}, "spec": spec})
        poddir = self.workdir / ns / pod_name
        poddir.mkdir(parents=True, exist_ok=True)
        drain = max((float(((ctr.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0))
                     for ctr in spec["containers"]), default=0.0)
        pod = ServingPod(ns, pod_name, name, template_hash, vllm_port, sync_port, poddir, period, drain_seconds=drain)
        if plans is not None:
            self._start_containers(pod, live, plans)
        for ctr in spec["containers"] if plans is None else []:
            env = {**self._resolve_env(ns, pod_name, ctr, poddir, spec.get("volumes", [])), **VLLM_CPU_ENV}
            argv = [self.python, *ctr["command"][1:], *_local_args(ctr, vllm_port, sync_port, poddir)]
            pod.containers[ctr["name"]] = Container(ctr["name"], argv, env, self._spawn(argv, env, poddir, ctr["name"]), _now())
        self.pods[(ns, pod_name)] = pod
        self._pod_status(pod)
        log.info("started serving pod %s/%s (vLLM :%s, sidecar :%s)", ns, pod_name, vllm_port, sync_port)
        return pod

    def _start_containers(self, pod: ServingPod, live: dict[str, Any], plans: dict[str, Any]) -> None:
        """The container mode: each container from its image with the pod's volumes; only ports move (host network)."""
        sources = self.containers.volumes(pod.namespace, live, pod.poddir, plans)
        for ctr in live["spec"]["containers"]:
            args = _port_args(ctr, pod.vllm_port, pod.sync_port)
            env = VLLM_CPU_ENV if ctr["name"] == c.SERVING_VLLM_CONTAINER else {}

            def start(ctr: dict[str, Any] = ctr, args: list[str] = args, env: dict[str, str] = env) -> Any:
                return self.containers.start(pod.namespace, live, plans[ctr["name"]], sources, pod.poddir, args=args, env=env)[0]
            pod.containers[ctr["name"]] = Container(ctr["name"], args, env, start(), _now(), restart=start)

    def _remove(self, pod: ServingPod, *, delete_object: bool = True) -> None:
        del self.pods[(pod.namespace, pod.name)]
        if delete_object:  # gone from the API first: the operator stops counting it, the Service stops sending to it
            self.emu.delete("", "v1", "pods", pod.namespace, pod.name)
            if pod.drain_seconds:  # its preStop sleep, then SIGTERM (sync_once)
                self.draining.append((time.monotonic() + pod.drain_seconds, pod))
                return
        self._stop_processes(pod)

    def _stop_processes(self, pod: ServingPod) -> None:
        self._terminate(pod.procs)
        self.release([pod])

    # ----------------------------------------------------------------------------------- kubelet
    def _tend(self, pod: ServingPod) -> None:
        """Restart exited containers (that container only), run the readiness probe, write pod status."""
        now = time.monotonic()
        for ctr in pod.containers.values():
            code = ctr.proc.poll()
            if code is None:
                continue
            if ctr.exited_at is None:
                ctr.exited_at = now
                code = 128 - code if code < 0 else code  # killed by a signal, as a container runtime reports it
                ctr.last_state = {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed",
                                                 "startedAt": ctr.started_at, "finishedAt": _now()}}
                log.warning("serving pod %s/%s: container %s exited (%s); restarting it", pod.namespace, pod.name, ctr.name, code)
            delay = min(BACKOFF_SECONDS * 2 ** (ctr.restarts - 1), BACKOFF_MAX_SECONDS) if ctr.restarts else 0.0
            if now - ctr.exited_at >= delay:
                ctr.restarts += 1
                ctr.exited_at, ctr.started_at = None, _now()
                ctr.proc = ctr.restart() if ctr.restart else self._spawn(ctr.argv, ctr.env, pod.poddir, ctr.name)
        running = all(ctr.proc.poll() is None and ctr.exited_at is None for ctr in pod.containers.values())
        if not running:
            pod.ready = False
        elif now - pod.probed_at >= pod.probe_period:
            pod.probed_at = now
            pod.ready = _get(f"http://127.0.0.1:{pod.sync_port}{c.SYNC_READYZ_PATH}") == 200
        self._pod_status(pod)

    def _pod_status(self, pod: ServingPod) -> None:
        ready = "True" if pod.ready else "False"
        statuses = []
        for ctr in pod.containers.values():
            up = ctr.exited_at is None and ctr.proc.poll() is None
            status = {"name": ctr.name, "restartCount": ctr.restarts, "started": up,
                      "ready": up and (pod.ready or ctr.name != c.SERVING_SYNC_CONTAINER),
                      "state": {"running": {"startedAt": ctr.started_at}} if up else {"waiting": {"reason": "CrashLoopBackOff"}}}
            if ctr.last_state:
                status["lastState"] = ctr.last_state
            statuses.append(status)
        status = {"phase": "Running", "podIP": "127.0.0.1", "containerStatuses": statuses, "conditions": [
            {"type": "Ready", "status": ready, **({} if pod.ready else {"reason": "ContainersNotReady"})},
            {"type": "ContainersReady", "status": ready}]}
        if status == pod.written:
            return
        previous = {cond["type"]: cond for cond in (pod.written or {}).get("conditions", [])}
        for cond in status["conditions"]:  # lastTransitionTime moves only when the status flips
            before = previous.get(cond["type"])
            cond["lastTransitionTime"] = before["lastTransitionTime"] if before and before["status"] == cond["status"] else _now()
        self.emu.patch("", "v1", "pods", pod.namespace, pod.name, {"status": status}, subresource="status")
        pod.written = status


def _rolling(dep: dict[str, Any], replicas: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) of a RollingUpdate Deployment as pod counts (percentages as Kubernetes rounds them)."""
    rolling = ((dep["spec"].get("strategy") or {}).get("rollingUpdate")) or {}

    def count(value: Any, default: str, round_up: bool) -> int:
        value = default if value is None else value
        if isinstance(value, str) and value.endswith("%"):
            exact = replicas * int(value[:-1]) / 100
            return int(-(-exact // 1)) if round_up else int(exact)
        return int(value)

    return count(rolling.get("maxSurge"), "25%", True), count(rolling.get("maxUnavailable"), "25%", False)


def _local_args(ctr: dict[str, Any], vllm_port: int, sync_port: int, poddir: Path) -> list[str]:
    """The container's args with in-pod ports and paths replaced by this machine's."""
    out, args = [], list(ctr.get("args", []))
    replace = {"--port": str(sync_port if ctr["name"] == c.SERVING_SYNC_CONTAINER else vllm_port),
               "--vllm-url": f"http://127.0.0.1:{vllm_port}", "--cache-dir": str(poddir / "adapters"),
               "--model-cache": str(poddir / "models")}
    for i, arg in enumerate(args):
        out.append(replace[args[i - 1]] if i and args[i - 1] in replace else arg)
    return out


def _port_args(ctr: dict[str, Any], vllm_port: int, sync_port: int) -> list[str]:
    """The container's args with only its ports moved: every pod shares the host network in the container mode."""
    out, args = [], list(ctr.get("args", []))
    replace = {"--port": str(sync_port if ctr["name"] == c.SERVING_SYNC_CONTAINER else vllm_port), "--vllm-url": f"http://127.0.0.1:{vllm_port}"}
    for i, arg in enumerate(args):
        out.append(replace[args[i - 1]] if i and args[i - 1] in replace else arg)
    return out


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except Exception:  # noqa: BLE001 - not up yet
        return None
