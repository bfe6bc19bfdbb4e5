"""FineTuneTemplates end to end: `kubetune operator` as a real subprocess (the chart's RBAC enforced) against the API
emulator. A job asking for more than its template allows is refused with the bound (condition and Event); a
conforming one runs its effective spec, kept in status; editing the template afterwards changes neither that
job's status.effectiveSpec nor its Job; a job that succeeds is added to the ModelDeployment its template names.
Only that last test plays kubelet and the Job controller (its docstring says how)."""

from __future__ import annotations

import json

from .harness import GROUP, VERSION, Cluster, job_condition, running, terminated, wait_for

QWEN = "hf://Qwen/Qwen2.5-0.5B-Instruct"
TEMPLATE = {
    "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneTemplate", "metadata": {"name": "qwen-small"},
    "spec": {"baseModel": {"uri": QWEN}, "methods": ["sft"], "adapterTypes": ["lora", "qlora"],
             "defaults": {"adapter": {"rank": 8}, "hyperparameters": {"maxLength": 1024, "learningRate": "1e-4"},
                          "resources": {"gpus": 1, "memory": "24Gi"},
                          "scheduling": {"queueName": "l4-queue", "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}},
                          "image": "registry.example/kubetune/trainer:l4"},
             "fixed": ["scheduling", "image"], "bounds": {"maxRank": 32, "maxLength": 2048},
             "serving": {"name": "qwen-small"}},
}
SPEC = {"baseModel": {"uri": QWEN}, "dataset": {"train": "s3://data/chat.jsonl"}}


def _ftt(cluster: Cluster, patch: dict | None = None) -> dict:
    api = cluster.custom
    if patch is None:
        return api.create_cluster_custom_object(GROUP, VERSION, "finetunetemplates", TEMPLATE)
    return api.patch_cluster_custom_object(GROUP, VERSION, "finetunetemplates", "qwen-small", patch)


def test_a_template_bounds_fills_and_is_pinned(cluster, operator_process):
    created = _ftt(cluster)
    operator_process.start()

    # Above the bound: refused, naming the field and the bound, as a condition and a Warning Event.
    cluster.create_ftj("too-big", {**SPEC, "template": "qwen-small", "adapter": {"rank": 64}})
    message = "spec.adapter.rank: 64 exceeds the maximum 32 of FineTuneTemplate qwen-small"
    cond = cluster.wait_condition("too-big", "Failed", "True", "ValidationFailed", timeout=20, message=message)
    assert cond["message"] == f"The spec is invalid: {message}" or message in cond["message"], cond
    event = wait_for(lambda: [e for e in cluster.events("too-big") if e["reason"] == "ValidationFailed"], what="Event")
    assert event[0]["type"] == "Warning" and message in event[0]["message"]
    assert cluster.jobs() == []

    # Conforming (no template named: the one for its base model): runs the effective spec, kept in status.
    cluster.create_ftj("bot", {**SPEC, "adapter": {"rank": 24, "type": "qlora"}})
    job = wait_for(lambda: cluster.job("bot-train"), timeout=20, what="Job bot-train")
    status = cluster.ftj("bot")["status"]
    effective = status["effectiveSpec"]
    assert (effective["adapter"], effective["template"]) == ({"type": "qlora", "rank": 24, "dropout": "0.05",
                                                             "targetModules": ["all-linear"]}, "qwen-small")
    assert effective["hyperparameters"]["maxLength"] == 1024 and effective["scheduling"]["queueName"] == "l4-queue"
    assert status["template"] == {"name": "qwen-small", "uid": created["metadata"]["uid"], "generation": 1,
                                  "resourceVersion": created["metadata"]["resourceVersion"],
                                  "serving": {"name": "qwen-small", "namespace": "default"}}
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example/kubetune/trainer:l4"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "l4-queue"

    # The platform team edits the template; the operator restarts (every job is reconciled on resume) and the job
    # is suspended (a reconcile that patches its Job). Its effective spec and Job stay as they were.
    _ftt(cluster, {"spec": {"defaults": {"image": "registry.example/kubetune/trainer:new",
                                         "hyperparameters": {"maxLength": 512}}, "bounds": {"maxRank": 8}}})
    operator_process.kill()
    operator_process.start()
    cluster.patch_ftj("bot", {"spec": {"suspend": True}})
    wait_for(lambda: cluster.job("bot-train")["spec"].get("suspend") is True, timeout=20, what="Job suspended")
    after = wait_for(lambda: (s := cluster.ftj("bot")["status"])["effectiveSpec"]["suspend"] and s, what="status")
    assert after["effectiveSpec"] == {**effective, "suspend": True} and after["template"] == status["template"]
    assert cluster.job("bot-train")["spec"]["template"] == job["spec"]["template"]
    assert not [c for c in after["conditions"] if c["type"] == "Failed" and c["status"] == "True"]


def test_a_succeeded_job_is_served_by_its_templates_modeldeployment(cluster, operator_process):
    """The template names the ModelDeployment serving its adapters: once a job trained from it succeeds, the operator
    adds one entry (by FineTuneJob, same namespace) to that ModelDeployment's spec.adapters, leaving the others as
    they were. Plays the Job controller and kubelet: the training pod runs and exits 0 with the trainer's termination
    report, then the Job is Complete."""
    _ftt(cluster)
    md = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "qwen-small"},
          "spec": {"baseModel": {"uri": QWEN}, "adapters": [{"name": "legal", "uri": "s3://adapters/shared/legal"}]}}
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.ns, "modeldeployments", md)
    operator_process.start()
    cluster.create_ftj("served", {**SPEC, "template": "qwen-small"})
    wait_for(lambda: cluster.job("served-train"), timeout=20, what="Job served-train")
    cluster.play_job_status("served-train", {"active": 1, "startTime": "2026-11-23T08:00:00Z"})
    cluster.play_pod("served-train", "served-train-abcde", running())
    report = {"adapter": {"uri": f"s3://adapters/t/{cluster.ns}/served", "manifestSha256": "b" * 64, "type": "lora"}}
    cluster.play_pod_status("served-train-abcde", terminated(0, json.dumps(report)))
    cluster.play_job_status("served-train", {"active": 0, "succeeded": 1, "completionTime": "2026-11-23T08:10:00Z",
                                             "conditions": [job_condition("SuccessCriteriaMet"), job_condition("Complete")]})
    cluster.wait_condition("served", "Succeeded", "True", "Completed", timeout=20)

    def adapters() -> list[dict] | None:
        found = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, cluster.ns, "modeldeployments",
                                                            "qwen-small")["spec"]["adapters"]
        return found if len(found) == 2 else None

    assert wait_for(adapters, timeout=20, what="the adapter entry") == [
        {"name": "legal", "uri": "s3://adapters/shared/legal"}, {"name": "served", "fineTuneJobRef": {"name": "served"}}]
    event = wait_for(lambda: [e for e in cluster.events("served") if e["reason"] == "AddedToModelDeployment"], what="Event")
    assert f"ModelDeployment {cluster.ns}/qwen-small" in event[0]["message"]
