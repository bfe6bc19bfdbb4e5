"""status.gpuSeconds: GPUs x the trainer's running time over all attempts (kubetune.status.usage, pure).

The pods are what kubelet writes (the trainer container's terminated state with startedAt/finishedAt, the
container's resource limits); the Job is what the Job controller writes. Nothing here reads a clock.
"""

from __future__ import annotations

from datetime import datetime, timezone

from kubetune.status import finetunejob
from kubetune.status.finetunejob import Observed
from kubetune.status.usage import attempt_seconds, gpu_usage, pod_gpus

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)


def pod(name, gpus=1, started="2026-11-23T08:00:00Z", finished=None, code=1, resource="nvidia.com/gpu", created=None):
    state = ({"terminated": {"exitCode": code, "reason": "Error", "startedAt": started, "finishedAt": finished}}
             if finished else {"running": {"startedAt": started}})
    limits = {"cpu": "4", "memory": "16Gi", **({resource: str(gpus)} if gpus else {})}
    return {"metadata": {"name": name, "creationTimestamp": created or started},
            "spec": {"containers": [{"name": "trainer", "resources": {"limits": limits, "requests": limits}}]},
            "status": {"phase": "Failed" if finished and code else ("Succeeded" if finished else "Running"),
                       "containerStatuses": [{"name": "trainer", "state": state}]}}


def job(**status):
    return {"metadata": {"name": "ftj-train"}, "spec": {"backoffLimit": 3}, "status": status}


def derive(pods, previous=None, the_job=None):
    obs = Observed(1, the_job if the_job is not None else job(active=1), pods)
    return finetunejob.derive_status(obs, previous, T0).to_dict()


def test_gpus_from_the_containers_limits():
    assert pod_gpus(pod("p", gpus=8)) == 8
    assert pod_gpus(pod("p", gpus=2, resource="amd.com/gpu")) == 2
    assert pod_gpus(pod("p", gpus=1, resource="nvidia.com/mig-1g.10gb")) == 1
    assert pod_gpus(pod("p", gpus=0)) == 0  # a CPU-only run costs no GPU-seconds


def test_attempt_seconds_from_started_to_finished():
    assert attempt_seconds(pod("p", started="2026-11-23T08:00:00Z", finished="2026-11-23T08:10:30Z")) == 630
    assert attempt_seconds(pod("p")) is None  # still running: not counted yet
    never_ran = pod("p", finished="2026-11-23T08:01:00Z")
    never_ran["status"]["containerStatuses"][0]["state"]["terminated"]["startedAt"] = None
    assert attempt_seconds(never_ran) == 0


def test_all_attempts_times_gpus_counted_once_each():
    """Attempt 1 ran 600 s on 4 GPUs and failed; attempt 2 runs (added when it ends): 2400. Attempt 2 ends after 300 s: 3600."""
    first = pod("j-a", gpus=4, started="2026-11-23T08:00:00Z", finished="2026-11-23T08:10:00Z", created="2026-11-23T07:59:00Z")
    running = pod("j-b", gpus=4, started="2026-11-23T08:11:00Z", created="2026-11-23T08:10:30Z")
    status = derive([first, running])
    assert (status["gpuSeconds"], status["gpuCountedPods"]) == (2400, ["j-a"])
    again = derive([first, running], status)  # the same pods seen again: nothing is added twice
    assert (again["gpuSeconds"], again["gpuCountedPods"]) == (2400, ["j-a"])
    second = pod("j-b", gpus=4, started="2026-11-23T08:11:00Z", finished="2026-11-23T08:16:00Z", code=0,
                 created="2026-11-23T08:10:30Z")
    done = derive([first, second], again, job(succeeded=1, failed=1, completionTime="2026-11-23T08:16:01Z",
                                              conditions=[{"type": "Complete", "status": "True"}]))
    assert (done["gpuSeconds"], done["gpuCountedPods"]) == (3600, ["j-a", "j-b"])


def test_attempts_whose_pods_are_gone_stay_counted():
    """A preempted pod is deleted (the scheduler's preemption, a Kueue eviction): its time stays in gpuSeconds, and
    it leaves gpuCountedPods. After the finished Job is removed (a TTL), the total is kept."""
    preempted = pod("j-a", gpus=2, started="2026-11-23T08:00:00Z", finished="2026-11-23T08:05:00Z", code=143)
    status = derive([preempted])
    assert status["gpuSeconds"] == 600
    resumed = pod("j-b", gpus=2, started="2026-11-23T08:06:00Z", finished="2026-11-23T08:07:00Z", code=0)
    status = derive([resumed], status)  # j-a was deleted
    assert (status["gpuSeconds"], status["gpuCountedPods"]) == (720, ["j-b"])
    kept = finetunejob.derive_status(Observed(1, None, []), {**status, "jobName": "ftj-train"}, T0).to_dict()
    assert (kept["gpuSeconds"], kept["gpuCountedPods"]) == (720, [])


def test_nothing_ended_yet_says_nothing():
    status = derive([pod("j-a")])
    assert "gpuSeconds" not in status and "gpuCountedPods" not in status


def test_multi_node_attempt_counts_every_pod():
    """An attempt of a 2-node job is two pods, each with its GPUs."""
    pods = [pod(f"j-{i}", gpus=8, started="2026-11-23T08:00:00Z", finished="2026-11-23T09:00:00Z", code=0) for i in range(2)]
    assert gpu_usage(pods, {}).gpu_seconds == 2 * 8 * 3600
