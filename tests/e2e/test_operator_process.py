"""`kubetune operator` as a real subprocess, driven with kubectl like a user would, and killed."""

from __future__ import annotations

import json
import signal
import time

from .harness import ROOT, job_condition, running, terminated, wait_for

CHILD_PATHS = {
    "configmaps": "/api/v1/namespaces/default/configmaps",
    "serviceaccounts": "/api/v1/namespaces/default/serviceaccounts",
    "roles": "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
    "rolebindings": "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
    "jobs": "/apis/batch/v1/namespaces/default/jobs",
}


def _owned(cluster, name):
    """Children per kind owned by FineTuneJob `name`."""
    return {kind: [o["metadata"]["name"] for o in cluster.list(path)
                   if any(ref["name"] == name for ref in o["metadata"].get("ownerReferences", []))]
            for kind, path in CHILD_PATHS.items()}


def test_kubectl_apply_example_and_wait(cluster, kubectl, operator_process):
    """Plays the Job controller and kubelet for the pod; everything else is kubectl + the operator process."""
    operator_process.start()
    out = kubectl("apply", "-f", str(ROOT / "examples" / "sft-lora.yaml"))
    assert "finetunejob.kubetune.io/support-bot created" in out.stdout
    job = wait_for(lambda: cluster.job("support-bot-train"), timeout=20, what="Job from the operator process")
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cluster.play_pod("support-bot-train", "support-bot-train-p1", running())
    cluster.play_job_status("support-bot-train", {"active": 1})
    kubectl("wait", "--for=condition=Running=True", "ftj/support-bot", "--timeout=20s")
    report = {"adapter": {"uri": "s3://adapters/test/default/support-bot", "manifestSha256": "c" * 64, "type": "lora"}}
    cluster.play_pod_status("support-bot-train-p1", terminated(0, json.dumps(report)))
    cluster.play_job_status("support-bot-train", {"active": 0, "succeeded": 1, "conditions": [job_condition("Complete")]})
    kubectl("wait", "--for=condition=Succeeded=True", "ftj/support-bot", "--timeout=20s")
    got = json.loads(kubectl("get", "finetunejob", "support-bot", "-o", "json").stdout)
    assert got["status"]["adapter"]["uri"] == "s3://adapters/test/default/support-bot"
    # Re-applying the same manifest changes nothing.
    out = kubectl("apply", "-f", str(ROOT / "examples" / "sft-lora.yaml"))
    assert "unchanged" in out.stdout or "configured" in out.stdout
    kubectl("delete", "ftj", "support-bot", "--wait=false")
    wait_for(lambda: cluster.jobs() == [], timeout=10, what="children collected")


def test_operator_killed_mid_reconcile_creates_no_duplicates(cluster, operator_process):
    """SIGKILL the operator at several points while it creates children; a restart converges to
    exactly one of each child, whatever was created before the kill."""
    spec = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"train": "s3://data/chat.jsonl"}}
    for round_, delay in enumerate((0.0, 0.3, 0.6, 1.0, 1.5)):
        name = f"bot-{round_}"
        operator_process.start()
        cluster.create_ftj(name, spec)
        time.sleep(delay)
        operator_process.kill(signal.SIGKILL)
        operator_process.start()
        wait_for(lambda: all(len(v) == 1 for v in _owned(cluster, name).values()), timeout=30,
                 what=f"{name}: every child exactly once")
        cluster.wait_condition(name, "Running", "False", "Pending", timeout=15)
        operator_process.kill(signal.SIGTERM)
        assert _owned(cluster, name) == {kind: [f"{name}-{suffix}"] for kind, suffix in (
            ("configmaps", "trainer-config"), ("serviceaccounts", "trainer"), ("roles", "trainer"),
            ("rolebindings", "trainer"), ("jobs", "train"))}
    # And a final restart over all of them (resume handlers) still creates nothing new.
    operator_process.start()
    time.sleep(3)
    operator_process.kill(signal.SIGTERM)
    assert len(cluster.jobs()) == 5
    assert "Traceback" not in operator_process.log(), operator_process.log()[-3000:]


def test_metrics_endpoint_counts_reconciles_and_status_writes(cluster, tmp_path):
    """`kubetune operator` with KUBETUNE_METRICS_PORT serves Prometheus text at /metrics (+ process_*)."""
    import socket
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from .harness import OperatorProcess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = OperatorProcess(cluster.operator_kubeconfig, tmp_path / "op.log", {"KUBETUNE_METRICS_PORT": str(port)}).start()
    try:
        cluster.create_ftj("m1", {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"train": "s3://d/x.jsonl"}})
        wait_for(lambda: cluster.condition("m1", "Running"), timeout=20, what="first status")

        def scrape():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                return response.read().decode()
        text = wait_for(lambda: 'kubetune_status_writes_total{kind="FineTuneJob"}' in scrape() and scrape(), timeout=10)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {(s.name, s.labels.get("kind")): s.value for f in families.values() for s in f.samples}
        assert samples[("kubetune_reconciles_total", "FineTuneJob")] == 1
        assert samples[("kubetune_children_created_total", "Job")] == 1
        assert samples[("kubetune_status_writes_total", "FineTuneJob")] >= 1
        assert families["kubetune_status_writes"].type == "counter"
        assert samples[("process_resident_memory_bytes", None)] > 0 and ("process_open_fds", None) in samples
    finally:
        proc.kill()
