"""FineTuneTemplates end to end: `kubetune operator` as a real subprocess (the chart's RBAC enforced) against the API
emulator. A job asking for more than its template allows is refused with the bound (condition and Event); a
conforming one runs its effective spec, kept in status; editing the template afterwards changes neither that
job's status.effectiveSpec nor its Job. Nothing plays kubelet or the Job controller here: no pod is needed."""

from __future__ import annotations

from .harness import GROUP, VERSION, Cluster, wait_for

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
