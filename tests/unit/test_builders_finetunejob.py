"""FineTuneJob builders: whole returned objects compared, like JobSet's TestConstructJobsFromTemplate."""

from __future__ import annotations

import json

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.validation import SpecError, parse
from kubetune.builders.common import child_name, label_value
from kubetune.builders.finetunejob import HoldPlan, build_children, plan_hold, resolve_spec, spec_hash
from kubetune.config import OperatorSettings

SETTINGS = OperatorSettings(
    trainer_image="registry.example/kubetune/trainer:1.0",
    default_output_uri="s3://adapters/prod",
    s3_endpoint="http://minio.storage:9000",
    storage_secret="platform-s3",
    default_queue="team-a",
)
BODY = {
    "apiVersion": "kubetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "support-bot", "namespace": "ml", "uid": "u-123", "generation": 1},
    "spec": {
        "baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct", "revision": "main"},
        "dataset": {"train": "s3://data/chat.jsonl"},
        "resources": {"gpus": 1, "cpu": 8, "memory": "32Gi"},
        "hubTokenSecretRef": {"name": "hf", "key": "token"},
        "scheduling": {"priorityClassName": "batch-low", "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "activeDeadlineSeconds": 7200,
    },
}
OWNER = [{"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "name": "support-bot", "uid": "u-123",
          "controller": True, "blockOwnerDeletion": True}]
LABELS = {"app.kubernetes.io/managed-by": "kubetune", "app.kubernetes.io/component": "trainer", "kubetune.io/finetunejob": "support-bot"}


def _children(body=BODY, settings=SETTINGS):
    resolved = resolve_spec(parse(FineTuneJobSpec, body["spec"]), settings)
    return resolved, build_children(body, resolved, settings)


def test_children_in_creation_order_job_last():
    _, children = _children()
    assert [(o["kind"], o["metadata"]["name"]) for o in children] == [
        ("ConfigMap", "support-bot-trainer-config"),
        ("ServiceAccount", "support-bot-trainer"),
        ("Role", "support-bot-trainer"),
        ("RoleBinding", "support-bot-trainer"),
        ("Job", "support-bot-train"),
    ]
    assert all(o["metadata"]["ownerReferences"] == OWNER for o in children)


def test_job_whole_object():
    resolved, children = _children()
    job = children[-1]
    pod_labels = {**LABELS, "kueue.x-k8s.io/queue-name": "team-a"}
    assert job == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "support-bot-train", "namespace": "ml", "labels": pod_labels, "ownerReferences": OWNER,
                     "annotations": {"kubetune.io/spec-hash": spec_hash(resolved)}},
        "spec": {
            "suspend": True,  # queued (the platform's default queue team-a): Kueue un-suspends it on admission
            "backoffLimit": 3,
            "completions": 1,
            "parallelism": 1,
            "completionMode": "NonIndexed",
            "activeDeadlineSeconds": 7200,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [1]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": "support-bot-trainer",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "terminationGracePeriodSeconds": 120,
                    "priorityClassName": "batch-low",
                    "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{
                        "name": "trainer",
                        "image": "registry.example/kubetune/trainer:1.0",
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["--config", "/etc/kubetune/config.json"],
                        "env": [
                            {"name": "KUBETUNE_CONFIG", "value": "/etc/kubetune/config.json"},
                            {"name": "KUBETUNE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "KUBETUNE_WORK_DIR", "value": "/work/run"},
                            {"name": "KUBETUNE_STOP_GRACE_SECONDS", "value": "105"},
                            {"name": "HOME", "value": "/work/home"},
                            {"name": "HF_HOME", "value": "/work/hf"},
                            {"name": "TRITON_CACHE_DIR", "value": "/work/triton"},
                            {"name": "PYTHONUNBUFFERED", "value": "1"},
                            {"name": "KUBETUNE_S3_ENDPOINT", "value": "http://minio.storage:9000"},
                            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "platform-s3", "key": "AWS_ACCESS_KEY_ID"}}},
                            {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "platform-s3", "key": "AWS_SECRET_ACCESS_KEY"}}},
                            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
                        ],
                        "ports": [{"name": "metrics", "containerPort": 9090}],
                        "resources": {"requests": {"cpu": "8", "memory": "32Gi"},
                                      "limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "volumeMounts": [
                            {"name": "config", "mountPath": "/etc/kubetune", "readOnly": True},
                            {"name": "work", "mountPath": "/work"},
                            {"name": "tmp", "mountPath": "/tmp"},
                            {"name": "dshm", "mountPath": "/dev/shm"},
                            {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True},
                        ],
                    }],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "support-bot-trainer-config"}},
                        {"name": "work", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                        {"name": "kube-api-access", "projected": {"sources": [
                            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                        ]}},
                    ],
                },
            },
        },
    }


def test_role_limits_the_trainer_to_its_own_status():
    _, children = _children()
    role, binding = children[2], children[3]
    assert role["rules"] == [{"apiGroups": ["kubetune.io"], "resources": ["finetunejobs/status"],
                              "resourceNames": ["support-bot"], "verbs": ["patch"]}]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "support-bot-trainer", "namespace": "ml"}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "support-bot-trainer"}
    assert children[1]["automountServiceAccountToken"] is False


def test_config_map_holds_resolved_spec_and_no_secret_values():
    _, children = _children()
    config = json.loads(children[0]["data"]["config.json"])
    assert config["job"] == {"namespace": "ml", "name": "support-bot", "uid": "u-123"}
    assert config["outputPrefix"] == "s3://adapters/prod/ml/support-bot"
    assert config["spec"]["output"]["uri"] == "s3://adapters/prod"
    assert config["spec"]["storage"] == {"endpoint": "http://minio.storage:9000", "credentialsSecretRef": {"name": "platform-s3"}}
    assert config["progress"] == {"mode": "kubernetes", "statusPath": "/apis/kubetune.io/v1alpha1/namespaces/ml/finetunejobs/support-bot/status",
                                  "intervalSeconds": 5}
    assert config["spec"]["hubTokenSecretRef"] == {"name": "hf", "key": "token"}


def test_builders_are_deterministic_and_suspend_does_not_change_the_hash():
    resolved, first = _children()
    _, second = _children()
    assert first == second
    suspended = {**BODY, "spec": {**BODY["spec"], "suspend": True}}
    resolved_s, children = _children(suspended)
    assert children[-1]["spec"]["suspend"] is True
    assert spec_hash(resolved_s) == spec_hash(resolved)
    cancelled = {**BODY, "spec": {**BODY["spec"], "cancel": True}}
    assert spec_hash(_children(cancelled)[0]) == spec_hash(resolved)
    changed = {**BODY, "spec": {**BODY["spec"], "adapter": {"rank": 8}}}
    assert spec_hash(_children(changed)[0]) != spec_hash(resolved)


def test_multi_node_job_is_indexed_with_rendezvous_service():
    body = {**BODY, "spec": {**BODY["spec"], "resources": {"gpus": 8, "nodes": 4}}}
    _, children = _children(body)
    service, job = children[-2], children[-1]
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    assert job["spec"]["template"]["spec"]["subdomain"] == "support-bot-nodes"
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    # the trainer's launcher reads these (kubetune_trainer.distributed.topology): pod 0 hosts the rendezvous
    assert env["MASTER_ADDR"]["value"] == "support-bot-train-0.support-bot-nodes"
    assert env["MASTER_PORT"]["value"] == "29500"
    assert env["KUBETUNE_NNODES"]["value"] == "4"
    assert env["KUBETUNE_NODE_RANK"]["valueFrom"] == {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    assert service["spec"]["ports"] == [{"name": "rendezvous", "port": 29500, "targetPort": 29500}]
    assert {"name": "rendezvous", "containerPort": 29500} in job["spec"]["template"]["spec"]["containers"][0]["ports"]


def test_cpu_only_job_requests_no_gpu_and_platform_without_output_is_rejected():
    body = {**BODY, "spec": {**BODY["spec"], "resources": {"gpus": 0}}}
    _, children = _children(body)
    assert children[-1]["spec"]["template"]["spec"]["containers"][0]["resources"] == {}
    with pytest.raises(SpecError, match=r"spec.output.uri: required field is missing \(this platform sets no default output\)"):
        _children(settings=OperatorSettings())


def test_long_names_are_shortened_deterministically():
    name = "a" * 250
    job_name = child_name(name, "train")
    assert len(job_name) <= 63 and job_name.endswith("-train") and job_name == child_name(name, "train")
    assert child_name("b" * 250, "train") != job_name
    assert len(label_value(name)) <= 63


UNQUEUED = SETTINGS.model_copy(update={"default_queue": None})
HOLD = "kubetune.io/user-hold"


def test_without_a_queue_the_job_starts_unsuspended_and_carries_no_hold():
    _, children = _children(settings=UNQUEUED)
    job = children[-1]
    assert job["spec"]["suspend"] is False
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    assert HOLD not in job["metadata"]["annotations"]


def test_a_queued_job_created_on_hold_records_the_users_hold():
    _, children = _children({**BODY, "spec": {**BODY["spec"], "suspend": True}})
    job = children[-1]
    assert job["spec"]["suspend"] is True and job["metadata"]["annotations"][HOLD] == "true"
    _, plain = _children()
    assert HOLD not in plain[-1]["metadata"]["annotations"]  # suspended for Kueue only


def _job(suspend: bool, queue: str | None = "team-a", hold: bool = False) -> dict:
    return {"metadata": {"name": "j", "labels": {"kueue.x-k8s.io/queue-name": queue} if queue else {},
                         "annotations": {HOLD: "true"} if hold else {}},
            "spec": {"suspend": suspend}}


def _spec(**fields) -> FineTuneJobSpec:
    return parse(FineTuneJobSpec, {**BODY["spec"], **fields})


@pytest.mark.parametrize(("job", "spec", "plan"), [
    # No queue: the Job's suspend is the user's.
    (_job(False, queue=None), _spec(), HoldPlan()),
    (_job(False, queue=None), _spec(suspend=True), HoldPlan({"spec": {"suspend": True}})),
    (_job(True, queue=None), _spec(), HoldPlan({"spec": {"suspend": False}})),
    (_job(False, queue=None), _spec(cancel=True), HoldPlan({"spec": {"suspend": True}})),
    # Queued and held by Kueue (or admitted and running): the operator never un-suspends it.
    (_job(True), _spec(), HoldPlan()),
    (_job(False), _spec(), HoldPlan()),
    # The user holds a queued job: suspend it, record the hold, deactivate its Workload.
    (_job(False), _spec(suspend=True),
     HoldPlan({"metadata": {"annotations": {HOLD: "true"}}, "spec": {"suspend": True}}, workload_active=False)),
    (_job(True), _spec(cancel=True),
     HoldPlan({"metadata": {"annotations": {HOLD: "true"}}, "spec": {"suspend": True}}, workload_active=False)),
    (_job(True, hold=True), _spec(suspend=True), HoldPlan(None, workload_active=False)),
    # Resume: release only the user's hold; Kueue un-suspends the Job when it admits it again.
    (_job(True, hold=True), _spec(), HoldPlan({"metadata": {"annotations": {HOLD: None}}}, workload_active=True)),
], ids=["plain", "plain-suspend", "plain-resume", "plain-cancel", "queued-held-by-kueue", "queued-running",
        "queued-suspend", "queued-cancel", "queued-held-already", "queued-resume"])
def test_plan_hold(job, spec, plan):
    assert plan_hold(job, spec) == plan
    if job["metadata"]["labels"]:  # a queued Job is never un-suspended by the operator
        assert (plan.job_patch or {}).get("spec", {}).get("suspend") is not False
