"""What one FineTuneJob's create costs the operator, counted (not timed): its API writes and the handlers its
events invoke. The burst latency of bench/operator_scale.py is this work times the jobs created at once."""

from __future__ import annotations

import logging
import time

from .harness import wait_for

SPEC = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"train": "s3://data/chat.jsonl"}}


def test_a_create_writes_status_once_and_invokes_two_handlers(cluster, operator, emulator, caplog):
    caplog.set_level(logging.INFO, logger="kopf.objects")
    cluster.create_ftj("bot", SPEC)
    wait_for(lambda: cluster.job("bot-train"), what="Job bot-train")
    time.sleep(1.5)  # the Job's and the other children's ADDED events reach the operator

    # One status write, which already says the Job exists; the Job's own event then changes nothing.
    writes = [r for r in emulator.requests if r.method == "PATCH" and r.path.endswith("/finetunejobs/bot/status")]
    status = cluster.ftj("bot")["status"]
    assert len(writes) == 1, [r.path for r in writes]
    assert status["jobName"] == "bot-train"
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Running"] == "Pending"

    # Handlers invoked: the FineTuneJob's reconcile (once, for its ADDED event; not for the events of kopf's
    # annotation patch and of the status write) and its Job's event. The ADDED events of the ConfigMap,
    # ServiceAccount, Role and RoleBinding invoke nothing.
    invoked = sorted(f"{r.k8s_ref['kind']}: {r.getMessage()}" for r in caplog.records
                     if r.name == "kopf.objects" and r.getMessage().startswith("Handler ") and "succeeded" in r.getMessage())
    assert invoked == ["FineTuneJob: Handler 'reconcile_finetunejob' succeeded.", "Job: Handler 'child_changed' succeeded."]


CHILD_KINDS = {"configmaps", "serviceaccounts", "services", "pods", "jobs.batch", "deployments.apps",
               "roles.rbac.authorization.k8s.io", "rolebindings.rbac.authorization.k8s.io",
               "horizontalpodautoscalers.autoscaling"}


def test_the_children_s_kinds_are_watched_for_the_operator_s_own_objects_only(cluster, operator, emulator):
    """The API server filters by the operator's label: the cluster's other Pods, ConfigMaps, ... never reach kopf."""
    def watches() -> dict[str, set[str | None]]:
        found: dict[str, set[str | None]] = {}
        for r in emulator.requests:
            if r.verb in ("watch", "list") and r.resource in CHILD_KINDS:
                found.setdefault(r.resource, set()).add(r.query.get("labelSelector"))
        return found

    found = wait_for(lambda: (w := watches()).keys() == CHILD_KINDS and w, what="the children's watches")
    assert found == {kind: {"app.kubernetes.io/managed-by=kubetune"} for kind in CHILD_KINDS}
