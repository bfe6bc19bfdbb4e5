"""The kubelet side of the container mode: a pod's volumes as host folders and files, its containers' env
resolved from the API, and each container started with podman from the plan `containers.plan_pod` made.

Volumes: emptyDir -> <poddir>/volumes/<name> (medium Memory: a folder on the host's /dev/shm), group-owned
by the pod's fsGroup and group-writable as kubelet makes them; ConfigMap and Secret -> their keys as files;
the projected ServiceAccount token -> token (a TokenRequest of the pod's ServiceAccount), ca.crt (the
emulator's CA) and namespace; persistentVolumeClaim -> the claim's host folder (group fsGroup when mounted
read-write). The API is reached in-cluster style: KUBERNETES_SERVICE_HOST=127.0.0.1 and _PORT (every
container shares the host network), verified against ca.crt in the token folder.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune_emulator import Emulator
from .containers import ContainerPlan, plan_pod, podman_run_argv
from .podman import ContainerProcess, Podman

SHM_ROOT = Path("/dev/shm")


def spec_env(emu: Emulator, ns: str, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The container's `env` as kubelet resolves it: values, secretKeyRef, configMapKeyRef, fieldRef."""
    meta, env = pod.get("metadata") or {}, {}
    fields = {"metadata.name": meta.get("name", ""), "metadata.namespace": ns, "metadata.uid": meta.get("uid", ""),
              "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", "default"), "status.podIP": "127.0.0.1",
              **{f"metadata.annotations['{k}']": v for k, v in (meta.get("annotations") or {}).items()},
              **{f"metadata.labels['{k}']": v for k, v in (meta.get("labels") or {}).items()}}
    for item in container.get("env") or []:
        source = item.get("valueFrom")
        if source is None:
            env[item["name"]] = item.get("value", "")
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            secret = "secretKeyRef" in source
            ref = source["secretKeyRef" if secret else "configMapKeyRef"]
            obj = emu.get("", "v1", "secrets" if secret else "configmaps", ns, ref["name"]) or {}
            data = (obj.get("data") or {}).get(ref["key"])  # the API server folds a Secret's stringData into data
            env[item["name"]] = "" if data is None else base64.b64decode(data).decode() if secret else data
        elif "fieldRef" in source:
            env[item["name"]] = fields.get(source["fieldRef"]["fieldPath"], "")
    return env


def _own(path: Path, group: int | None, recursive: bool = False) -> None:
    """Group-owned by fsGroup, group-writable, setgid folders: what kubelet does to a volume for fsGroup."""
    if group is None:
        path.chmod(0o777)
        return
    for item in [path, *(path.rglob("*") if recursive else [])]:
        os.chown(item, -1, group, follow_symlinks=False)
        if not item.is_symlink():
            item.chmod(item.stat().st_mode | (0o2070 if item.is_dir() else 0o060))


class ContainerPods:
    def __init__(self, emu: Emulator, podman: Podman, claim_folder: Callable[[str], Path], node_gpus: int = 0,
                 images: dict[str, str] | None = None, run_id: str = ""):
        self.emu, self.podman, self.claim_folder, self.node_gpus = emu, podman, claim_folder, node_gpus
        # Container names are per machine: two local runs (two workdirs, or a test beside a run) must not collide.
        self.prefix = f"kt-{run_id}-" if run_id else "kt-"
        self.images = images or {}  # an image a pod spec names -> the local tag that plays it

    def plan(self, spec: dict[str, Any]) -> dict[str, ContainerPlan]:
        return plan_pod(spec, node_gpus=self.node_gpus)

    def volumes(self, ns: str, pod: dict[str, Any], poddir: Path, plans: dict[str, ContainerPlan]) -> dict[str, str]:
        """Every volume the pod's containers mount, made on the host: volume name -> host path."""
        spec, name = pod["spec"], pod["metadata"]["name"]
        group = (spec.get("securityContext") or {}).get("fsGroup")
        by_name = {v["name"]: v for v in spec.get("volumes") or []}
        out: dict[str, str] = {}
        for plan in plans.values():
            for mount in plan.mounts:
                if mount.volume in out:
                    continue
                vol = by_name.get(mount.volume, {})
                if mount.kind == "pvc":
                    folder = self.claim_folder(mount.source or "")
                    folder.mkdir(parents=True, exist_ok=True)
                    if not mount.read_only and not (vol.get("persistentVolumeClaim") or {}).get("readOnly"):
                        _own(folder, group, recursive=True)
                    out[mount.volume] = str(folder)
                    continue
                folder = (SHM_ROOT / f"kubetune-{ns}-{name}" if mount.kind == "memory" else poddir / "volumes") / mount.volume
                folder.mkdir(parents=True, exist_ok=True)
                if mount.kind in ("configMap", "secret"):
                    self._files(ns, vol, mount.kind, folder)
                elif mount.kind == "token":
                    self._token(ns, spec, vol, folder)
                _own(folder, group, recursive=True)
                out[mount.volume] = str(folder)
        return out

    def _files(self, ns: str, vol: dict[str, Any], kind: str, folder: Path) -> None:
        source = vol[kind]
        obj = self.emu.get("", "v1", "secrets" if kind == "secret" else "configmaps", ns,
                           source["secretName" if kind == "secret" else "name"]) or {}
        data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()} if kind == "secret" else \
            {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        items = {i["key"]: i["path"] for i in source.get("items") or []} or {k: k for k in data}
        for key, path in items.items():
            if key in data:
                (folder / path).parent.mkdir(parents=True, exist_ok=True)
                (folder / path).write_bytes(data[key])
                (folder / path).chmod(source.get("defaultMode", 0o644))

    def _token(self, ns: str, spec: dict[str, Any], vol: dict[str, Any], folder: Path) -> None:
        sources = (vol.get("projected") or {}).get("sources") or [{"serviceAccountToken": {"path": "token"}}]
        token = next((s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s), {})
        account = spec.get("serviceAccountName") or "default"
        path = folder / token.get("path", "token")
        path.write_text(self.emu.token(ns, account, token.get("expirationSeconds")))
        path.chmod(0o640)
        (folder / "namespace").write_text(ns)
        if self.emu.ca_file:
            shutil.copyfile(self.emu.ca_file, folder / "ca.crt")

    def start(self, ns: str, pod: dict[str, Any], plan: ContainerPlan, sources: dict[str, str], poddir: Path, *,
              args: list[str] | None = None, env: dict[str, str] | None = None) -> tuple[ContainerProcess, Path]:
        """Start one planned container; returns it and its termination-message file."""
        name = pod["metadata"]["name"]
        container = next(ctr for ctr in pod["spec"]["containers"] if ctr["name"] == plan.name)
        termination = poddir / f"{plan.name}.termination-log"
        termination.write_text("")
        termination.chmod(0o666)
        full_env = {**spec_env(self.emu, ns, pod, container), "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                    "KUBERNETES_SERVICE_PORT": str(self.emu.port), **(env or {})}
        argv = podman_run_argv(plan, name=f"{self.prefix}{ns}-{name}-{plan.name}", image=self.images.get(plan.image, plan.image), env=full_env, sources=sources,
                               termination_file=str(termination), args=args,
                               gpu_devices=tuple(f"nvidia.com/gpu={i}" for i in range(self.node_gpus)))
        grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        return self.podman.run(argv, poddir / f"{plan.name}.log", grace), termination

    @staticmethod
    def release(ns: str, pod: str) -> None:
        """Free the pod's memory-backed emptyDirs."""
        shutil.rmtree(SHM_ROOT / f"kubetune-{ns}-{pod}", ignore_errors=True)
