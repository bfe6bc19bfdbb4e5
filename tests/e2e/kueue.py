"""A stand-in for Kueue's batch/Job integration: it plays Kueue's documented behaviour on the emulator.

No Kueue runs here (no Kueue binary or image is reachable). This thread does, on the emulator, what
Kueue's Job reconciler does, as documented:

- https://kueue.sigs.k8s.io/docs/tasks/run/jobs/ (kubernetes-sigs/kueue site/content/en/docs/tasks/run/jobs.md):
  a Job labelled `kueue.x-k8s.io/queue-name` is suspended by Kueue's webhook ("you do not need to create
  the Job in a suspended state"), Kueue creates one Workload for it, and un-suspends the Job when it
  admits the Workload ("Admitted by clusterQueue", then the Job controller's "Job resumed").
- https://kueue.sigs.k8s.io/docs/tasks/troubleshooting/troubleshooting_jobs/: the Workload carries the
  Job's uid in the label `kueue.x-k8s.io/job-uid`.
- https://kueue.sigs.k8s.io/docs/concepts/workload/#active: "Changing .spec.active from true to false
  will cause a running workload to be evicted and not be requeued."
- kubernetes-sigs/kueue pkg/controller/jobframework/reconciler.go, JobReconciler.ReconcileGenericJob:
  step 6 an evicted Workload's Job is suspended (stopJob); step 7 "Job admitted, unsuspending": a
  suspended Job whose Workload is admitted is started again, whoever suspended it; step 8 "Running job is
  not admitted by a cluster queue, suspending".

What the tests decide, since no quota is modelled: `admit` (the queue has quota for it now) and
`evict` (preempted by a higher-priority Workload: evicted and re-queued). Not played: ClusterQueues,
quotas, cohorts, flavors and the node affinity Kueue injects on admission, admission checks, priorities.
"""

from __future__ import annotations

import threading
from typing import Any

from kubetune_emulator.runner import Emulator

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
GROUP, VERSION, PLURAL = "kueue.x-k8s.io", "v1beta1", "workloads"

WORKLOAD_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "names": {"kind": "Workload", "listKind": "WorkloadList", "plural": PLURAL, "singular": "workload"},
        "scope": "Namespaced",
        "versions": [{
            "name": VERSION, "served": True, "storage": True, "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}},
        }],
    },
}


def _finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


class Kueue:
    """Plays Kueue's Job integration in a thread; `admit` and `evict` are the test's quota decisions."""

    def __init__(self, emulator: Emulator, namespace: str = "default"):
        self.emulator = emulator
        self.ns = namespace
        self.actions: list[tuple[str, str]] = []  # (what Kueue did, job name), in order
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="kueue-stand-in", daemon=True)

    def start(self) -> Kueue:
        self.emulator.create(WORKLOAD_CRD)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    # --- what the tests decide ------------------------------------------------------------------
    def workload(self, job_name: str) -> dict[str, Any] | None:
        job = self.emulator.get("batch", "v1", "jobs", self.ns, job_name)
        if job is None:
            return None
        uid = job["metadata"]["uid"]
        return next((w for w in self.emulator.list(GROUP, VERSION, PLURAL, self.ns)
                     if w["metadata"].get("labels", {}).get(JOB_UID_LABEL) == uid), None)

    def admit(self, job_name: str) -> bool:
        """The queue has quota for this Job's Workload now: admit it, unless it is inactive (Kueue admits
        only active Workloads). The reconcile loop then un-suspends the Job."""
        with self._lock:
            workload = self.workload(job_name)
            if workload is None or not workload["spec"].get("active", True):
                return False
            self._set_admitted(workload, True, "Admitted", "Admitted by ClusterQueue cluster-queue")
            return True

    def evict(self, job_name: str) -> None:
        """Preemption: the Workload loses its admission and is re-queued; the loop suspends the Job."""
        with self._lock:
            workload = self.workload(job_name)
            assert workload is not None, f"no Workload for {job_name}"
            self._set_admitted(workload, False, "Preempted", "Preempted to accommodate a higher priority Workload")

    # --- Kueue's reconciler ---------------------------------------------------------------------
    def _set_admitted(self, workload: dict[str, Any], admitted: bool, reason: str, message: str) -> None:
        cond = {"type": "Admitted", "status": "True" if admitted else "False", "reason": reason, "message": message,
                "lastTransitionTime": "2026-11-23T08:00:00Z"}
        status = {"conditions": [cond], "admission": {"clusterQueue": "cluster-queue"} if admitted else None}
        self.emulator.patch(GROUP, VERSION, PLURAL, self.ns, workload["metadata"]["name"], {"status": status},
                            subresource="status")

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                with self._lock:
                    for job in self.emulator.list("batch", "v1", "jobs", self.ns):
                        self._reconcile(job)
            except Exception:  # the emulator is shutting down at the end of a test
                if not self._stop.is_set():
                    raise

    def _reconcile(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        queue = (meta.get("labels") or {}).get(QUEUE_LABEL)
        if not queue or _finished(job) or meta.get("deletionTimestamp"):
            return
        name, suspended = meta["name"], bool(job["spec"].get("suspend"))
        workload = self.workload(name)
        if workload is None:
            self.emulator.create({
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "Workload",
                "metadata": {"name": f"job-{name}-{meta['uid'][:5]}", "namespace": self.ns,
                             "labels": {JOB_UID_LABEL: meta["uid"]},
                             "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                  "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
                "spec": {"active": True, "queueName": queue,
                         "podSets": [{"name": "main", "count": job["spec"].get("parallelism", 1)}]},
            })
            self.actions.append(("CreatedWorkload", name))
            workload = self.workload(name)
        admitted = any(c["type"] == "Admitted" and c["status"] == "True"
                       for c in (workload.get("status") or {}).get("conditions") or [])
        if admitted and not workload["spec"].get("active", True):  # deactivated: evicted, not re-queued
            self._set_admitted(workload, False, "Deactivated", "The workload is deactivated")
            admitted = False
        if admitted and suspended:  # reconciler step 7: "Job admitted, unsuspending"
            self.emulator.patch("batch", "v1", "jobs", self.ns, name, {"spec": {"suspend": False}})
            self.actions.append(("Started", name))
        elif not admitted and not suspended:  # the webhook on create; step 6/8 afterwards
            self.emulator.patch("batch", "v1", "jobs", self.ns, name, {"spec": {"suspend": True}})
            self.actions.append(("Stopped", name))
