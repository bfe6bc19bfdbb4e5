"""Kueue admits the pods of a multi-node run all or nothing: the built Job checked against Kueue's documented
behaviour for batch/v1 Jobs (no Kueue runs here; tests/e2e/kueue.py plays its Job reconciler on the emulator).

What Kueue documents, and what the Job must therefore look like:

- https://kueue.sigs.k8s.io/docs/tasks/run/jobs/ : a Job is queued by the label `kueue.x-k8s.io/queue-name`;
  Kueue suspends it, creates ONE Workload for it and un-suspends it when that Workload is admitted. The Workload's
  pod set counts `spec.parallelism` pods of the Job's one pod template, and admission reserves quota for all of
  them at once (count x the template's requests) or for none. The same page documents partial admission, opted
  into with the annotation `kueue.x-k8s.io/job-min-parallelism`: Kueue may then admit fewer pods, which a static
  torch.distributed rendezvous cannot use (the admitted pods would wait for peers that never start), so kubetune
  must never set it.
- https://kueue.sigs.k8s.io/docs/tasks/manage/setup_wait_for_pods_ready/ ("All-or-nothing with ready Pods",
  waitForPodsReady): quota admission alone does not mean every pod gets a node; with waitForPodsReady enabled
  Kueue evicts and requeues an admitted Workload whose pods are not all ready within the timeout. "Ready" is
  scheduled, running and passing the optional readiness probe: the trainer has none, so a pod is ready once it
  runs (the rendezvous waits inside the running pods).
"""

from __future__ import annotations

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.validation import parse
from kubetune.builders.finetunejob import build_children, resolve_spec
from kubetune.config import OperatorSettings

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PARTIAL_ADMISSION = "kueue.x-k8s.io/job-min-parallelism"
SETTINGS = OperatorSettings(trainer_image="registry.example/kubetune/trainer:1.0", default_output_uri="s3://out/p",
                            s3_endpoint="http://minio:9000", storage_secret="s3", gpu_resource_name="nvidia.com/gpu")


def _job(nodes: int, gpus: int, queue: str | None = "team-a") -> dict:
    spec = {"baseModel": {"uri": "hf://Qwen/Qwen2.5-7B-Instruct"}, "dataset": {"train": "s3://d/chat.jsonl"},
            "adapter": {"type": "full"}, "resources": {"nodes": nodes, "gpus": gpus, "cpu": 32, "memory": "256Gi"},
            "scheduling": {"queueName": queue} if queue else {}}
    body = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "big", "namespace": "ml", "uid": "u-1", "generation": 1}, "spec": spec}
    resolved = resolve_spec(parse(FineTuneJobSpec, spec), SETTINGS)
    return next(c for c in build_children(body, resolved, SETTINGS) if c["kind"] == "Job")


@pytest.mark.parametrize("nodes", [2, 4])
def test_a_multi_node_job_is_one_workload_admitted_all_or_nothing(nodes):
    job = _job(nodes, 8)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert job["metadata"]["labels"][QUEUE_LABEL] == "team-a"  # Kueue manages it (one Workload per Job)
    assert spec["suspend"] is True  # nothing runs before the Workload is admitted
    # one pod set of `parallelism` pods, all needed at once: every node rank is one pod of the Indexed Job
    assert spec["parallelism"] == spec["completions"] == nodes and spec["completionMode"] == "Indexed"
    assert PARTIAL_ADMISSION not in job["metadata"].get("annotations", {})  # no partial admission
    assert PARTIAL_ADMISSION not in spec["template"]["metadata"].get("annotations", {})
    # the quota Kueue reserves is count x the template's requests: each pod asks for its node's GPUs
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["resources"]["requests"]["cpu"] == "32"
    assert "readinessProbe" not in container  # PodsReady (waitForPodsReady) = every pod running


def test_without_a_queue_the_job_is_not_kueues_and_starts_at_once():
    job = _job(2, 8, queue=None)
    assert QUEUE_LABEL not in job["metadata"]["labels"] and job["spec"]["suspend"] is False
