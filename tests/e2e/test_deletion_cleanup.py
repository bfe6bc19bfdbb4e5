"""Deleting FineTuneJobs and a ModelDeployment leaves none of their children, and the real operator never creates a
child after its owner was deleted.

The race this guards: deleting an owner makes the garbage collector delete its children; their DELETED events reach
the operator (each on its own watch, through its own kopf worker) before the owner's own DELETED has left the
operator's index, and a reconcile run from that stale index entry re-created the children, owned by a uid that no
longer exists (found by bench/operator_scale.py: 411 Jobs left after deleting 200 FineTuneJobs). The emulator plays
the kube-controller-manager's garbage collector (ownerReferences, background propagation), which now also collects
a child created after its owner is gone, so what the operator must not do is counted: its create and apply requests
in the emulator's request log, and the ADDED events the children's watches carry.

The test plays the Job controller and kubelet: a Running pod per training Job, created from the Job's template with
an ownerReference to it (as the Job controller does), so that each deletion cascades into more child events queued
at the operator at once.
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes.client.exceptions import ApiException

from .harness import Cluster, running, wait_for
from .rbac import OPERATOR_USER

N = 12
BASE = {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}
SPEC = {"baseModel": BASE, "dataset": {"train": "s3://data/chat.jsonl"}}
NS = "/api/v1/namespaces/default"
RBAC = "/apis/rbac.authorization.k8s.io/v1/namespaces/default"
CHILDREN = {  # the kinds the operator creates, by the resource name the request log uses
    "jobs.batch": "/apis/batch/v1/namespaces/default/jobs",
    "configmaps": f"{NS}/configmaps",
    "serviceaccounts": f"{NS}/serviceaccounts",
    "roles.rbac.authorization.k8s.io": f"{RBAC}/roles",
    "rolebindings.rbac.authorization.k8s.io": f"{RBAC}/rolebindings",
    "deployments.apps": "/apis/apps/v1/namespaces/default/deployments",
    "services": f"{NS}/services",
}
FTJ_KINDS = {"Job", "ConfigMap", "ServiceAccount", "Role", "RoleBinding"}
MD_KINDS = {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service"}


def owned(cluster: Cluster, uids: set[str]) -> dict[str, set[str]]:
    """owner uid -> '<Kind>/<name>' of every child (of the kinds above) that names it in its ownerReferences."""
    found: dict[str, set[str]] = {}
    for path in CHILDREN.values():
        for obj in cluster.list(path):
            for ref in obj["metadata"].get("ownerReferences") or []:
                if ref["uid"] in uids:
                    found.setdefault(ref["uid"], set()).add(f"{obj['kind']}/{obj['metadata']['name']}")
    return found


def settled(snapshot: Any, quiet: float = 3.0, timeout: float = 60.0) -> Any:
    """Poll `snapshot()` until it returns the same value for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = snapshot(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"still changing after {timeout}s: {last!r}"
        time.sleep(0.2)
        now = snapshot()
        if now != last:
            last, since = now, time.monotonic()
    return last


def test_deleted_owners_leave_no_children_and_the_operator_creates_none_after(cluster, operator, emulator):
    def gone(path: str) -> None:
        """Delete by hand; already collected by the garbage collector is fine."""
        try:
            cluster.raw("DELETE", path)
        except ApiException as exc:
            assert exc.status == 404, exc


    names = [f"tune-{i}" for i in range(N)]
    for name in names:
        cluster.create_ftj(name, SPEC)
    md = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "chat"},
          "spec": {"baseModel": BASE, "adapters": [{"name": f"a{i}", "fineTuneJobRef": {"name": n}} for i, n in enumerate(names)]}}
    cluster.custom.create_namespaced_custom_object("kubetune.io", "v1alpha1", cluster.ns, "modeldeployments", md)
    for name in names:  # the Job controller and kubelet: each Job's pod, running
        wait_for(lambda: cluster.job(f"{name}-train"), timeout=30, what=f"Job {name}-train")
        cluster.play_pod(f"{name}-train", f"{name}-train-p", running())

    owners = {cluster.ftj(n)["metadata"]["uid"]: f"FineTuneJob/{n}" for n in names}
    md_uid = cluster.custom.get_namespaced_custom_object("kubetune.io", "v1alpha1", cluster.ns, "modeldeployments",
                                                          "chat")["metadata"]["uid"]
    owners[md_uid] = "ModelDeployment/chat"
    before = settled(lambda: owned(cluster, set(owners)))
    assert {owners[uid]: {child.split("/")[0] for child in kids} for uid, kids in before.items()} == {
        **{f"FineTuneJob/{n}": FTJ_KINDS for n in names}, "ModelDeployment/chat": MD_KINDS}

    # Delete them all at once, the ModelDeployment first (so that no live ModelDeployment reacts to the
    # FineTuneJobs' deletion). Each owner goes first and its workload right after, by hand, racing the garbage
    # collector (`kubectl delete ftj x; kubectl delete job x`): the workload's DELETED event reaches the operator
    # when its owner is already gone from the API server, but maybe not yet from the operator's index. The garbage
    # collection of the other children queues their DELETED events behind or ahead of the owner's own. (The other
    # order, workload first, would let a slow machine see the owner still alive when the workload's event is
    # handled; the operator then re-creates the workload, rightly: a Job deleted by hand is run again.)
    since = cluster.raw("GET", CHILDREN["configmaps"])["metadata"]["resourceVersion"]
    mark = len(emulator.requests)
    cluster.raw("DELETE", "/apis/kubetune.io/v1alpha1/namespaces/default/modeldeployments/chat")
    gone("/apis/apps/v1/namespaces/default/deployments/chat-vllm")
    for name in names:
        cluster.raw("DELETE", f"/apis/kubetune.io/v1alpha1/namespaces/default/finetunejobs/{name}")
        gone(f"/apis/batch/v1/namespaces/default/jobs/{name}-train")

    def operator_writes() -> list[str]:
        return [f"{r.method} {r.path}" for r in emulator.requests[mark:]
                if r.user == OPERATOR_USER and r.verb in ("create", "patch", "update") and r.resource in CHILDREN]

    left, writes = settled(lambda: (owned(cluster, set(owners)), operator_writes()))
    assert left == {}, {owners[uid]: sorted(kids) for uid, kids in left.items()}
    assert writes == [], f"the operator created or applied {len(writes)} children of deleted owners: {sorted(set(writes))}"
    added = [f"{e['object']['kind']}/{e['object']['metadata']['name']}" for path in CHILDREN.values()
             for e in emulator.watch_events(path, resourceVersion=since, timeout_seconds=0.3)
             if e["type"] == "ADDED" and any(ref["uid"] in owners for ref in e["object"]["metadata"].get("ownerReferences") or [])]
    assert added == [], f"children created after their owners were deleted: {added}"
