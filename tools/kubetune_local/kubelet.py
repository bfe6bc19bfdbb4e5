"""A local stand-in for the Job controller and kubelet: runs the trainer containers of kubetune Jobs
(training and pre-flight) as local processes, so `kubetune local run` exercises the real operator and the real trainer.

It reads the Job the operator built, creates its Pod, resolves the container's env (values,
secretKeyRefs, fieldRefs) and config volume from the emulator, runs the container's args with the
trainer's Python entrypoint, and writes Pod and Job status the way kubelet and the Job controller
would: Running, then terminated with the exit code and termination message; the Job's own
podFailurePolicy and backoffLimit decide what a failed pod means (`jobcontroller`, evaluated as the
Job controller does); suspend (SIGTERM, then Suspended); `disrupt()` plays a preemption or eviction
(DisruptionTarget on the pod, then SIGTERM: the trainer checkpoints and exits 143). An Indexed
Job (a multi-node run) gets one process per index with its completion index, and pod 0's DNS name
in MASTER_ADDR becomes 127.0.0.1 on a free port; the Job completes when every index succeeded.

PersistentVolumeClaims are host folders: claim X is `pvc_dir/X` (default <workdir>/pvcs/X) unless
`pvc_map` names another folder. A pod sees only the claims its spec mounts: each mount becomes a link
under the pod's own PVC root ($KUBETUNE_PVC_ROOT), as a node would mount them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from kubetune.api import constants as c
from kubetune_emulator import Emulator
from .jobcontroller import attempt_verdict
from .apiaccess import api_access_env
from .containerpod import ContainerPods, spec_env
from .containers import UnsupportedPodSpec
from .podman import ContainerProcess
from .serving import LocalServing

log = logging.getLogger("kubetune_local")
MAX_TERMINATION_MESSAGE = 4096
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_COMPONENTS = (c.COMPONENT_TRAINER, c.COMPONENT_PREFLIGHT)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Run:
    pod: str
    proc: subprocess.Popen
    termination_log: Path
    log_file: Path | None = None  # for terminationMessagePolicy FallbackToLogsOnError (container mode)
    suspended: bool = False
    disruption: dict[str, Any] | None = None  # the DisruptionTarget condition, when disrupted


class LocalKubelet:
    """Polls the emulator for trainer Jobs and runs their pods locally, one process per pod."""

    def __init__(self, emu: Emulator, workdir: Path, *, python: str = sys.executable, serving_python: str | None = None,
                 extra_env: dict[str, str] | None = None, poll_seconds: float = 0.2,
                 pvc_dir: Path | None = None, pvc_map: dict[str, Path] | None = None,
                 containers: ContainerPods | None = None):
        self.emu = emu
        self.workdir = workdir.resolve()  # pods run with their own folder as cwd: every path handed to them is absolute
        self.pvc_dir = (pvc_dir or self.workdir.parent / "pvcs").resolve()
        self.pvc_map = {claim: Path(path).resolve() for claim, path in (pvc_map or {}).items()}
        self.python = python
        self.extra_env = extra_env or {}
        self.poll_seconds = poll_seconds
        self.runs: dict[tuple[str, str], list[_Run]] = {}  # (namespace, job) -> its running pods (one per index)
        self.attempts: dict[tuple[str, str], int] = {}  # (namespace, job) -> attempts started (unique pod names)
        self.containers = containers  # the container mode (podman); None: pods run as processes
        self.refused: dict[str, str] = {}  # "ns/job" -> why the container mode cannot run its pods (UnsupportedPodSpec)
        if containers is not None:
            containers.claim_folder = self.claim_folder
        self.serving = LocalServing(emu, self.workdir, serving_python or "", self.resolve_env, spawn, _terminate, containers) \
            if serving_python or containers else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="local-kubelet", daemon=True)

    def start(self) -> LocalKubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        # Every pod at once (Ctrl-C stops the node in seconds, not a grace period per container in turn).
        serving = self.serving.detach_all() if self.serving is not None else []
        _terminate([run.proc for runs in list(self.runs.values()) for run in runs]
                   + [proc for pod in serving for proc in pod.procs])
        if self.serving is not None:
            self.serving.release(serving)

    def __enter__(self) -> LocalKubelet:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception:  # keep playing kubelet; the error is visible in the log
                log.exception("local kubelet sync failed")
            self._stop.wait(self.poll_seconds)

    def sync_once(self) -> None:
        for job in self.emu.list("batch", "v1", "jobs"):
            labels = job["metadata"].get("labels") or {}
            # training Jobs and their pre-flight Jobs: both run the trainer image (the latter with --preflight)
            if labels.get(c.LABEL_MANAGED_BY) != c.MANAGED_BY_VALUE or labels.get(c.LABEL_COMPONENT) not in JOB_COMPONENTS:
                continue
            self._sync_job(job)
        if self.serving is not None:
            self.serving.sync_once()

    def _sync_job(self, job: dict[str, Any]) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        status = job.get("status") or {}
        if any(cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed") for cond in status.get("conditions") or []):
            return
        if f"{ns}/{name}" in self.refused:
            return
        runs = self.runs.get((ns, name))
        if runs:
            for run in runs:
                if job["spec"].get("suspend") and not run.suspended:
                    run.suspended = True
                    run.proc.send_signal(signal.SIGTERM)  # the trainer checkpoints and exits
            if all(run.proc.poll() is not None for run in runs):
                self._finish(job, runs)
            return
        if job["spec"].get("suspend"):
            if not any(cond.get("type") == "Suspended" and cond.get("status") == "True" for cond in status.get("conditions") or []):
                self._job_status(ns, name, {"active": 0, "conditions": [_cond("Suspended", "JobSuspended", "Job suspended")]})
            return
        try:
            self._start_pods(job)
        except UnsupportedPodSpec as exc:  # loud, once: LocalRun.wait raises it
            self.refused[f"{ns}/{name}"] = str(exc)
            log.error("job %s/%s: %s", ns, name, exc)

    def _start_pods(self, job: dict[str, Any]) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        attempt = self.attempts.get((ns, name), 0)
        self.attempts[(ns, name)] = attempt + 1
        indexed = job["spec"].get("completionMode") == "Indexed"
        port = _free_port() if indexed else None
        self.runs[(ns, name)] = [self._start_pod(job, f"{name}-{index}-{attempt}" if indexed else f"{name}-{attempt}",
                                                 index if indexed else None, port)
                                 for index in range(int(job["spec"].get("completions") or 1) if indexed else 1)]
        self._job_status(ns, name, {"active": len(self.runs[(ns, name)]),
                                    "startTime": (job.get("status") or {}).get("startTime") or _now()})

    def _start_pod(self, job: dict[str, Any], pod_name: str, index: int | None, port: int | None) -> _Run:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        template = job["spec"]["template"]
        container = next(ctr for ctr in template["spec"]["containers"] if ctr["name"] == c.TRAINER_CONTAINER)
        poddir = self.workdir / ns / pod_name
        poddir.mkdir(parents=True, exist_ok=True)
        annotations = {INDEX_ANNOTATION: str(index)} if index is not None else {}
        plans = self.containers.plan(template["spec"]) if self.containers else None  # refused before the Pod exists
        pod = self.emu.create({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": pod_name, "namespace": ns, "labels": {**template["metadata"]["labels"], "job-name": name},
                                      "annotations": annotations,
                                      "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                           "uid": job["metadata"]["uid"], "controller": True}]},
                         "spec": template["spec"]})
        if self.containers is not None and plans is not None:
            return self._start_container(pod, plans[c.TRAINER_CONTAINER], plans, poddir, port)
        env = self.resolve_env(ns, pod_name, container, poddir, template["spec"].get("volumes", []), annotations)
        if port is not None:  # pod 0's name in the job's headless Service, here: this machine
            env["MASTER_ADDR"], env["MASTER_PORT"] = "127.0.0.1", str(port)
        termination_log = poddir / "termination-log"
        termination_log.write_text("")
        args = [self.python, "-m", "kubetune_trainer", *container.get("args", [])]
        args = [env[c.ENV_CONFIG_PATH] if a == c.TRAINER_CONFIG_PATH else a for a in args]
        proc = spawn(args, {**env, "KUBETUNE_TERMINATION_LOG": str(termination_log)}, poddir, "trainer")
        log.info("started pod %s/%s (pid %s)", ns, pod_name, proc.pid)
        self._pod_status(ns, pod_name, {"phase": "Running", "startTime": _now(), "containerStatuses": [
            {"name": c.TRAINER_CONTAINER, "ready": True, "restartCount": 0, "image": container["image"],
             "state": {"running": {"startedAt": _now()}}}]})
        return _Run(pod_name, proc, termination_log)

    def _start_container(self, pod: dict[str, Any], plan: Any, plans: dict[str, Any], poddir: Path, port: int | None) -> _Run:
        """The container mode: the trainer container from its image, under the pod's security context."""
        ns, pod_name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        assert self.containers is not None
        sources = self.containers.volumes(ns, pod, poddir, plans)
        # Host network: the metrics port goes free-picked ("0"), pod 0's DNS name becomes this machine.
        env = {"KUBETUNE_METRICS_PORT": "0", **self.extra_env}
        if port is not None:
            env["MASTER_ADDR"], env["MASTER_PORT"] = "127.0.0.1", str(port)
        proc, termination = self.containers.start(ns, pod, plan, sources, poddir, env=env)
        log.info("started pod %s/%s as container %s", ns, pod_name, proc.name)
        self._pod_status(ns, pod_name, {"phase": "Running", "startTime": _now(), "containerStatuses": [
            {"name": plan.name, "ready": True, "restartCount": 0, "image": plan.image, "state": {"running": {"startedAt": _now()}}}]})
        return _Run(pod_name, proc, termination, poddir / f"{plan.name}.log" if plan.fallback_to_logs else None)  # type: ignore[arg-type]

    def resolve_env(self, ns: str, pod: str, container: dict[str, Any], poddir: Path,
                    volumes: list[dict[str, Any]] = (),  # type: ignore[assignment]
                    annotations: dict[str, str] | None = None) -> dict[str, str]:
        """The container's environment as kubelet would build it, with in-pod paths moved under `poddir`."""
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")}
        live = self.emu.get("", "v1", "pods", ns, pod) or {"metadata": {"name": pod}}
        live = {**live, "metadata": {**live.get("metadata", {}), "annotations": {**(live.get("metadata", {}).get("annotations") or {}),
                                                                               **(annotations or {})}}}
        env.update(spec_env(self.emu, ns, live, container))
        # The config volume: the ConfigMap's keys become files, as kubelet mounts them.
        for volume in volumes:
            if "configMap" not in volume or volume["name"] != "config":
                continue
            cm = self.emu.get("", "v1", "configmaps", ns, volume["configMap"]["name"]) or {}
            mount = poddir / "etc-kubetune"
            mount.mkdir(exist_ok=True)
            for key, value in (cm.get("data") or {}).items():
                (mount / key).write_text(value)
            env[c.ENV_CONFIG_PATH] = str(mount / c.TRAINER_CONFIG_KEY)
        self._mount_claims(container, volumes, poddir, env)
        self._mount_config_maps(ns, container, volumes, poddir, env)
        # Writable paths the image would provide as emptyDirs, and the API the pod would reach.
        for key in ("HOME", "HF_HOME", "TRITON_CACHE_DIR", c.ENV_WORK_DIR):
            if key in env:
                env[key] = str(poddir / Path(env[key]).name)
        # The API the pod would reach in-cluster, with its own ServiceAccount's token (as kubelet projects it).
        env.update(api_access_env(self.emu, ns, pod, container, poddir, list(volumes)))
        env.update(self.extra_env)
        return env

    def claim_folder(self, claim: str) -> Path:
        """The host folder that plays PersistentVolumeClaim `claim`."""
        return self.pvc_map.get(claim) or self.pvc_dir / claim

    def _mount_config_maps(self, ns: str, container: dict[str, Any], volumes: list[dict[str, Any]], poddir: Path,
                           env: dict[str, str]) -> None:
        """The container's ConfigMap data mounts (under DEFAULT_CONFIGMAP_ROOT: configmap://name/key) as files in
        the pod's own ConfigMap root, as kubelet projects them: the listed items only, a missing optional
        ConfigMap or key simply absent."""
        sources = {v["name"]: v["configMap"] for v in volumes if "configMap" in v and v["name"] != "config"}
        root = poddir / "configmap" / container["name"]
        for mount in container.get("volumeMounts") or []:
            source, path = sources.get(mount["name"]), PurePosixPath(mount["mountPath"])
            if source is None or not path.is_relative_to(c.DEFAULT_CONFIGMAP_ROOT):
                continue
            data = (self.emu.get("", "v1", "configmaps", ns, source["name"]) or {}).get("data") or {}
            folder = root / path.relative_to(c.DEFAULT_CONFIGMAP_ROOT)
            folder.mkdir(parents=True, exist_ok=True)
            for item in source.get("items") or [{"key": k, "path": k} for k in data]:
                if item["key"] in data:
                    (folder / item["path"]).write_text(data[item["key"]])
            env[c.ENV_CONFIGMAP_ROOT] = str(root)

    def _mount_claims(self, container: dict[str, Any], volumes: list[dict[str, Any]], poddir: Path, env: dict[str, str]) -> None:
        """The container's PVC mounts (under DEFAULT_PVC_ROOT) as links in the pod's own PVC root: a claim the
        pod does not mount is not there, as on a cluster."""
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}
        root = poddir / "pvc" / container["name"]
        root.mkdir(parents=True, exist_ok=True)
        for mount in container.get("volumeMounts") or []:
            claim = claims.get(mount["name"])
            if claim is None:
                continue
            path = PurePosixPath(mount["mountPath"])
            if not path.is_relative_to(c.DEFAULT_PVC_ROOT):
                log.warning("claim %s mounted at %s, outside %s: not reachable by pvc:// URIs", claim, path, c.DEFAULT_PVC_ROOT)
                continue
            link = root / path.relative_to(c.DEFAULT_PVC_ROOT)
            link.parent.mkdir(parents=True, exist_ok=True)
            self.claim_folder(claim).mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(self.claim_folder(claim), target_is_directory=True)
        env[c.ENV_PVC_ROOT] = str(root)

    def disrupt(self, ns: str, pod: str, reason: str = "PreemptionByScheduler",
                message: str = "Kubernetes Scheduler: preempting to accommodate a higher priority pod") -> None:
        """A preemption or eviction of a running trainer pod, as Kubernetes does it: the DisruptionTarget
        condition first, then SIGTERM (the trainer saves a checkpoint and exits 143)."""
        run = next(r for runs in self.runs.values() for r in runs if r.pod == pod)
        run.disruption = {**_cond("DisruptionTarget", reason, message), "lastProbeTime": None}
        self._pod_status(ns, pod, {"conditions": [run.disruption]})
        run.proc.send_signal(signal.SIGTERM)

    def _finish(self, job: dict[str, Any], runs: list[_Run]) -> None:
        """Every pod of the attempt has exited: pod statuses, then the Job controller's verdict."""
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        pods = []
        for run in runs:
            code = run.proc.returncode
            code = 128 - code if code < 0 else code  # killed by a signal, like a container runtime reports it
            message = run.termination_log.read_text(errors="replace")[:MAX_TERMINATION_MESSAGE]
            if not message.strip() and code != 0 and run.log_file is not None and run.log_file.exists():
                message = "\n".join(run.log_file.read_text(errors="replace").splitlines()[-80:])[-2048:]  # FallbackToLogsOnError
            if self.containers is not None:
                self.containers.release(ns, run.pod)
            terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message,
                          "finishedAt": _now()}
            pod_status: dict[str, Any] = {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [
                {"name": c.TRAINER_CONTAINER, "ready": False, "restartCount": 0, "state": {"terminated": terminated}}]}
            if run.suspended:
                pod_status["conditions"] = [_cond("DisruptionTarget", "DeletionByTaintManager", "suspended")]
            elif run.disruption is not None:
                pod_status["conditions"] = [run.disruption]
            self._pod_status(ns, run.pod, pod_status)
            pods.append({"metadata": {"namespace": ns, "name": run.pod}, "status": pod_status})
        del self.runs[(ns, name)]
        if any(run.suspended for run in runs):
            self._job_status(ns, name, {"active": 0, "conditions": [_cond("Suspended", "JobSuspended", "Job suspended")]})
            return
        verdict = attempt_verdict(job, pods)
        status: dict[str, Any] = {"active": 0, "failed": verdict["failed"]}
        if verdict["ignored"]:
            log.info("job %s/%s: %d pod(s) ignored by podFailurePolicy: not counted against backoffLimit", ns, name,
                     verdict["ignored"])
        if "condition" in verdict:
            type_, reason, message = verdict["condition"]
            if type_ == "Complete":
                status.update(succeeded=len(pods), completionTime=_now(),
                              conditions=[_cond("SuccessCriteriaMet", reason, message), _cond("Complete", reason, message)])
            else:
                status["conditions"] = [_cond("FailureTarget", reason, message), _cond("Failed", reason, message)]
        self._job_status(ns, name, status)

    def _pod_status(self, ns: str, pod: str, status: dict[str, Any]) -> None:
        self.emu.patch("", "v1", "pods", ns, pod, {"status": status}, subresource="status")

    def _job_status(self, ns: str, job: str, status: dict[str, Any]) -> None:
        self.emu.patch("batch", "v1", "jobs", ns, job, {"status": status}, subresource="status")


def spawn(argv: list[str], env: dict[str, str], cwd: Path, logname: str) -> subprocess.Popen:
    """One container as a process in its own session (so its whole process group can be stopped)."""
    with open(cwd / f"{logname}.log", "ab") as logfile:
        return subprocess.Popen(argv, env=env, stdout=logfile, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cond(type_: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": _now(), "lastTransitionTime": _now()}


def _terminate(procs: list[subprocess.Popen], grace: float = 30) -> None:
    """Stop processes together, as a kubelet stops a pod's containers (and a node its pods) in parallel:
    SIGTERM every process group first, then wait for all under one `grace` deadline and SIGKILL what is left.
    Containers stop in threads (`podman stop -t <terminationGracePeriodSeconds>`). No orphan is left."""
    stoppers = [threading.Thread(target=proc.stop, daemon=True) for proc in procs if isinstance(proc, ContainerProcess)]
    for thread in stoppers:
        thread.start()
    signalled = []
    for proc in procs:
        if isinstance(proc, ContainerProcess) or proc.poll() is not None:
            continue
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            signalled.append(proc)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for proc in signalled:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
    for thread in stoppers:
        thread.join()
