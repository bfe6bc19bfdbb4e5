"""ModelDeployment spec.scheduling.queueName: Kueue's deployment integration queues each serving pod.

Kueue (https://kueue.sigs.k8s.io/docs/tasks/run/deployment/) reads the `kueue.x-k8s.io/queue-name` label
from the Deployment's metadata and, through its webhook, from the pod template: every pod of the
Deployment is admitted as its own plain-pod Workload. Both places carry it here.
"""

from __future__ import annotations

from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.validation import parse
from kubetune.builders.modeldeployment import build_children, desired_set, resolve_spec
from kubetune.config import OperatorSettings

SETTINGS = OperatorSettings(serving_image="registry.example/kubetune/serving:1.0", default_queue="training-queue")
BODY = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "ml", "uid": "u-9", "generation": 1}}
SPEC = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "adapters": []}
QUEUE = "kueue.x-k8s.io/queue-name"


def _deployment(spec: dict) -> dict:
    resolved = resolve_spec(parse(ModelDeploymentSpec, spec), SETTINGS)
    return next(o for o in build_children(BODY, resolved, SETTINGS, desired_set(1, [])) if o["kind"] == "Deployment")


def test_queue_name_labels_the_deployment_and_its_pods_but_not_the_selector():
    deployment = _deployment({**SPEC, "scheduling": {"queueName": "serving-queue"}})
    assert deployment["metadata"]["labels"][QUEUE] == "serving-queue"
    assert deployment["spec"]["template"]["metadata"]["labels"][QUEUE] == "serving-queue"
    assert QUEUE not in deployment["spec"]["selector"]["matchLabels"]  # the selector stays immutable-safe


def test_without_queue_name_serving_is_not_queued_even_with_a_platform_training_queue():
    deployment = _deployment(SPEC)
    assert QUEUE not in deployment["metadata"]["labels"]
    assert QUEUE not in deployment["spec"]["template"]["metadata"]["labels"]
