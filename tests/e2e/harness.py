"""Drive the real kopf operator over HTTP against the API emulator, the way users and kubelet do.

Nothing plays kubelet or the Job controller in the emulator: the helpers named `play_*` do it in
tests (create the Job's pod, write pod and Job status), and each test that uses them says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"
SETTINGS_ENV = {
    "KUBETUNE_TRAINER_IMAGE": "registry.example/kubetune/trainer:test",
    "KUBETUNE_DEFAULT_OUTPUT_URI": "s3://adapters/test",
    "KUBETUNE_S3_ENDPOINT": "http://s3.example:9000",
    "KUBETUNE_STORAGE_SECRET": "platform-s3",
    # Off here: these tests play the training Job's controller and kubelet from the start. test_preflight.py turns
    # it on (its OPERATOR_ENV) and plays the pre-flight Job first, as a cluster runs every FineTuneJob by default.
    "KUBETUNE_PREFLIGHT_ENABLED": "false",
}


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except ApiException as exc:
            if exc.status != 404:
                raise
            last = None
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class Cluster:
    """A thin test client over the emulator."""

    def __init__(self, kubeconfig: str, namespace: str = "default"):
        self.kubeconfig = kubeconfig
        self.operator_kubeconfig = kubeconfig  # the chart's ServiceAccount, where its RBAC is installed
        self.ns = namespace
        self.api = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.batch = kubernetes.client.BatchV1Api(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)

    # --- FineTuneJobs -------------------------------------------------------------------------
    def create_ftj(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def ftj(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def patch_ftj(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, patch)

    def patch_ftj_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, self.ns, PLURAL, name, patch)

    def delete_ftj(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for cond in (self.ftj(name).get("status") or {}).get("conditions") or []:
            if cond["type"] == type_:
                return cond
        return None

    def wait_condition(self, name: str, type_: str, status: str, reason: str | None = None,
                       timeout: float = 10.0, message: str = "") -> dict[str, Any]:
        """Wait for the condition; `message` must be part of its message (pod and Job events may
        arrive in either order, so a message can be refined by a later event)."""
        def check():
            cond = self.condition(name, type_)
            if cond and cond["status"] == status and (reason is None or cond["reason"] == reason) and message in cond["message"]:
                return cond
            return None
        return wait_for(check, timeout, f"{name} {type_}={status} {reason or ''}")

    # --- children -----------------------------------------------------------------------------
    def raw(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        response = self.api.call_api(path, method, header_params={"Content-Type": content_type, "Accept": "application/json"},
                                     body=body, auth_settings=["BearerToken"], _preload_content=False,
                                     _return_http_data_only=True)
        return json.loads(response.data) if response.data else None

    def jobs(self) -> list[dict[str, Any]]:
        return self.raw("GET", f"/apis/batch/v1/namespaces/{self.ns}/jobs")["items"]

    def job(self, name: str) -> dict[str, Any]:
        return self.raw("GET", f"/apis/batch/v1/namespaces/{self.ns}/jobs/{name}")

    def list(self, path: str) -> list[dict[str, Any]]:
        return self.raw("GET", path)["items"]

    def events(self, involved: str) -> list[dict[str, Any]]:
        return [e for e in self.list(f"/api/v1/namespaces/{self.ns}/events") if e["involvedObject"].get("name") == involved]

    # --- playing the Job controller and kubelet -------------------------------------------------
    def play_pod(self, job_name: str, pod_name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Create the Job's pod from its template (the Job controller's job) with the given status."""
        job = self.job(job_name)
        template = job["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "namespace": self.ns, "labels": {**template["metadata"]["labels"], "job-name": job_name},
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                                 "uid": job["metadata"]["uid"], "controller": True}]},
               "spec": template["spec"]}
        self.raw("POST", f"/api/v1/namespaces/{self.ns}/pods", pod)
        return self.play_pod_status(pod_name, status)

    def play_pod_status(self, pod_name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.raw("PATCH", f"/api/v1/namespaces/{self.ns}/pods/{pod_name}/status", {"status": status},
                        "application/merge-patch+json")

    def play_job_status(self, job_name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.raw("PATCH", f"/apis/batch/v1/namespaces/{self.ns}/jobs/{job_name}/status", {"status": status},
                        "application/merge-patch+json")


def running(container: str = "trainer") -> dict[str, Any]:
    return {"phase": "Running", "containerStatuses": [{"name": container, "ready": True,
                                                       "state": {"running": {"startedAt": "2026-11-23T08:00:00Z"}}}]}


def terminated(code: int, message: str = "", reason: str | None = None, container: str = "trainer") -> dict[str, Any]:
    phase = "Succeeded" if code == 0 else "Failed"
    term = {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error"), "message": message,
            "finishedAt": "2026-11-23T08:10:00Z"}
    return {"phase": phase, "containerStatuses": [{"name": container, "ready": False, "state": {"terminated": term}}]}


def job_condition(type_: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": "2026-11-23T08:10:00Z", "lastProbeTime": "2026-11-23T08:10:00Z"}


class OperatorProcess:
    """`kubetune operator` as a real subprocess, as the chart runs it."""

    def __init__(self, kubeconfig: str, log_path: Path, extra_env: dict[str, str] | None = None):
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.env = {**os.environ, "KUBECONFIG": kubeconfig, **SETTINGS_ENV, **(extra_env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "kubetune", "operator", "-n", "default", "-v"],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
