"""What one FineTuneJob's create costs the operator, counted (not timed): its API writes and the handlers its
events invoke. The burst latency of bench/operator_scale.py is this work times the jobs created at once."""

from __future__ import annotations

import logging
import time

from .harness import wait_for

SPEC = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": {"train": "s3://data/chat.jsonl"}}
NO_STATUS_KINDS = {"ConfigMap", "ServiceAccount", "Role", "RoleBinding"}


def test_a_create_writes_status_once_and_its_children_s_creation_invokes_no_handler(cluster, operator, emulator, caplog):
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

    # The ConfigMap, ServiceAccount, Role and RoleBinding the operator created: their ADDED events invoke nothing.
    invoked = [r.k8s_ref["kind"] for r in caplog.records
               if r.name == "kopf.objects" and "succeeded" in r.getMessage() and r.k8s_ref["kind"] in NO_STATUS_KINDS]
    assert invoked == []
