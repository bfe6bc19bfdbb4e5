"""Gates decided by the operator from a FineTuneJob's evaluation (docs/promotion.md): the real operator over HTTP
against the emulator.

Played, as in test_modeldeployment.py: the Job controller and kubelet (the trainer pod exits 0 with its termination
report, which carries the published adapter and the baseline/final evaluation exactly as the trainer writes it),
the Deployment controller, and the pod's adapter-sync sidecar (a fake serving its `/status` protocol; the real
sidecar's trials run in tests/serving/test_syncer.py and tests/local/test_local_promotion.py).
"""

from __future__ import annotations

import json

from .harness import Cluster, job_condition, running, terminated, wait_for
from .test_modeldeployment import BASE, FTJ_SPEC, adapter_status, desired, md, play_ready_pod, sidecar  # noqa: F401

SHA_GOOD, SHA_WORSE = "a" * 64, "b" * 64


def finish(cluster: Cluster, name: str, sha: str, final: float) -> None:
    """Plays the Job controller and kubelet: the trainer exits 0 with its report (adapter + evaluation)."""
    wait_for(lambda: cluster.job(f"{name}-train"), what="training Job")
    cluster.play_pod(f"{name}-train", f"{name}-p", running())
    report = {"adapter": {"uri": f"s3://adapters/test/default/{name}", "manifestSha256": sha, "type": "lora"},
              "evaluation": {"baseline": {"evalLoss": 2.0}, "final": {"evalLoss": final}}}
    cluster.play_pod_status(f"{name}-p", terminated(0, json.dumps(report)))
    cluster.play_job_status(f"{name}-train", {"succeeded": 1, "conditions": [job_condition("Complete")]})
    cluster.wait_condition(name, "Succeeded", "True")


def test_a_job_that_does_not_beat_its_baseline_is_never_sent_and_the_served_version_stays(cluster, operator, sidecar):
    cluster.create_ftj("good", FTJ_SPEC)
    cluster.create_ftj("worse", FTJ_SPEC)
    finish(cluster, "good", SHA_GOOD, 1.0)
    finish(cluster, "worse", SHA_WORSE, 2.5)
    entry = {"name": "bot", "gate": {"minImprovement": "0.1"}, "serving": {"version": "v1"},
             "versions": [{"name": "v1", "fineTuneJobRef": {"name": "good"}}, {"name": "v2", "fineTuneJobRef": {"name": "worse"}}]}
    md(cluster, "chat", {"baseModel": BASE, "adapters": [entry]})
    first = wait_for(lambda: (d := desired(cluster, "chat")) and d["adapters"] and d, what="v1 sent")
    assert first["adapters"] == [{"name": "bot", "uri": "s3://adapters/test/default/good", "manifestSha256": SHA_GOOD}]
    play_ready_pod(cluster, "chat", "chat-vllm-1", sidecar)
    sidecar.ready(first["generation"], ("bot", SHA_GOOD))
    ready = wait_for(lambda: (a := adapter_status(cluster, "chat", "bot")) and a["state"] == "Ready" and a, timeout=15)
    assert ready["promotion"]["serving"] == "v1" and ready["promotion"]["versions"][0]["gate"] == "Passed"

    # Point the name at v2, whose eval loss 2.5 does not beat its baseline 2.0: Gated with the numbers, a Warning
    # event, never in the desired set; v1 keeps serving.
    cluster.custom.patch_namespaced_custom_object("kubetune.io", "v1alpha1", cluster.ns, "modeldeployments", "chat",
                                                  {"spec": {"adapters": [{**entry, "serving": {"version": "v2"}}]}})
    gated = wait_for(lambda: (a := adapter_status(cluster, "chat", "bot")) and a["state"] == "Gated" and a, timeout=15)
    assert "version v2: gate failed: eval loss 2 -> 2.5 (improvement -0.5, needs >= 0.1)" in gated["message"], gated
    assert "version v1 keeps serving" in gated["message"] and gated["promotion"]["serving"] == "v1"
    v2 = next(v for v in gated["promotion"]["versions"] if v["name"] == "v2")
    assert (v2["gate"], v2["sha256"], v2["baselineEvalLoss"], v2["finalEvalLoss"]) == ("Failed", SHA_WORSE, 2.0, 2.5)
    assert desired(cluster, "chat") == first
    warning = wait_for(lambda: [e for e in cluster.events("chat") if e.get("reason") == "AdapterGated"], timeout=10)
    assert warning[-1]["type"] == "Warning" and "improvement -0.5" in warning[-1]["message"]
