"""ModelDeployment: status from the resolved adapters (kubetune.plan.modeldeployment), the observed
Deployment, Pods and the pods' adapter-sync reports. Pure: no I/O, no clock reads.

An adapter is Ready only when every replica reports it loaded (from the same manifest): each
adapter's status counts the replicas that serve it (`replicasLoaded: 1/2`) and names each pod's
state, so a lagging pod (restarting, still restoring its adapters) shows by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..api.conditions import ADAPTERS_READY, AVAILABLE, FALSE, PROGRESSING, READY, TRUE
from ..api.modeldeployment import MAX_PODS_LISTED, ModelDeploymentSpec
from ..plan.modeldeployment import FAILED, LOADING, REJECTED, WAITING, Resolved
from .conditions import Cond, merge_conditions

READY_STATE = "Ready"
UNKNOWN = "Unknown"  # one pod's state of an adapter when its sidecar does not answer


@dataclass
class ServingObserved:
    generation: int | None
    desired_generation: int
    deployment: dict[str, Any] | None
    pods: list[dict[str, Any]]
    reports: dict[str, dict[str, Any] | None]  # pod name -> sidecar /status (None: unreachable)
    endpoint: str
    selector: str
    validation_error: str | None = None


def _on_pod(res: Resolved, report: dict[str, Any] | None, desired_generation: int) -> tuple[str, str | None]:
    """(state, message) of one sendable adapter in one pod, from that pod's sidecar report."""
    if report is None:
        return UNKNOWN, "its adapter-sync sidecar does not answer"
    entry = next((a for a in report.get("adapters") or [] if a.get("name") == res.name), None)
    # Pinned adapters match by manifest sha; unpinned (by URI) ones need a pod on the current set.
    same = entry is not None and ((entry.get("manifestSha256") == res.sha256) if res.sha256
                                  else (report.get("generation") or 0) >= desired_generation)
    if not same:
        return LOADING, "has not picked up this version yet"
    state = entry.get("state")  # type: ignore[union-attr]
    return (state if state in (LOADING, READY_STATE, FAILED, REJECTED) else UNKNOWN), entry.get("message")  # type: ignore[union-attr]


def _adapter_state(res: Resolved, pods: list[str], want: int, reports: dict[str, dict[str, Any] | None],
                   desired_generation: int) -> tuple[str, int, int, dict[str, str], str | None]:
    """(state, replicas that serve it, replicas, pod name -> its state there, message) for one sendable
    adapter. Replicas: the live pods, or spec.replicas while fewer exist (a missing pod has nothing)."""
    per_pod = {pod: _on_pod(res, reports.get(pod), desired_generation) for pod in sorted(pods)}
    states = {pod: state for pod, (state, _) in per_pod.items()}
    total = max(want, len(pods))
    loaded = sum(1 for state in states.values() if state == READY_STATE)
    lagging = {pod: f"pod {pod} {state}" + (f" ({msg})" if msg else "") for pod, (state, msg) in per_pod.items() if state != READY_STATE}
    for worst in (REJECTED, FAILED):
        pod = next((pod for pod in lagging if states[pod] == worst), None)
        if pod is not None:
            return worst, loaded, total, states, lagging[pod] + (", retrying" if worst == FAILED else "")
    if total and loaded == total:
        return READY_STATE, loaded, total, states, None
    if not total:
        return LOADING, 0, 0, states, "no replica (spec.replicas is 0)"
    missing = [f"{total - len(pods)} replica(s) not created yet"] if total > len(pods) else []
    return LOADING, loaded, total, states, f"loaded on {loaded}/{total} replicas; waiting for {', '.join([*lagging.values(), *missing])}"


def derive_status(obs: ServingObserved, spec: ModelDeploymentSpec | None, resolved: list[Resolved],
                  previous: dict[str, Any] | None, now: datetime | None = None) -> dict[str, Any]:
    previous = previous or {}
    if obs.validation_error or spec is None:
        msg = obs.validation_error or "invalid spec"
        conds = [Cond(READY, FALSE, "ValidationFailed", msg), Cond(AVAILABLE, FALSE, "ValidationFailed", msg),
                 Cond(ADAPTERS_READY, FALSE, "ValidationFailed", msg), Cond(PROGRESSING, FALSE, "ValidationFailed", msg)]
        return {"observedGeneration": obs.generation, "conditions": merge_conditions(previous.get("conditions"), conds, obs.generation, now)}
    dep = obs.deployment or {}
    dep_status = dep.get("status") or {}
    live_pods = [p["metadata"]["name"] for p in obs.pods if not p["metadata"].get("deletionTimestamp")]
    adapters = []
    for res in resolved:
        pods: dict[str, str] = {}
        if res.sendable:
            state, loaded, total, pods, message = _adapter_state(res, live_pods, spec.replicas, obs.reports, obs.desired_generation)
        else:
            state, loaded, total, message = res.state, 0, max(spec.replicas, len(live_pods)), res.message
        entry: dict[str, Any] = {"name": res.name, "source": res.source, "state": state, "replicasLoaded": f"{loaded}/{total}"}
        listed = dict(sorted(pods.items())[:MAX_PODS_LISTED])  # bounded like the CRD field (spec.replicas <= 64 + surge)
        entry.update({k: v for k, v in (("uri", res.uri), ("sha256", res.sha256), ("message", message), ("pods", listed)) if v})
        adapters.append(entry)
    ready_count = sum(1 for a in adapters if a["state"] == READY_STATE)

    replicas, ready = int(dep_status.get("replicas") or 0), int(dep_status.get("readyReplicas") or 0)
    if not dep:
        available = Cond(AVAILABLE, FALSE, "Creating", "Creating the serving Deployment.")
    elif ready > 0:
        available = Cond(AVAILABLE, TRUE, "ReplicasReady", f"{ready}/{spec.replicas} replicas ready at {obs.endpoint}.")
    elif spec.replicas == 0:
        available = Cond(AVAILABLE, FALSE, "ScaledToZero", "spec.replicas is 0.")
    else:
        available = Cond(AVAILABLE, FALSE, "NoReadyReplicas", "No replica is ready yet (vLLM starting, or restoring adapters).")
    rolling = dep and (int(dep_status.get("updatedReplicas") or 0) < spec.replicas or replicas > spec.replicas
                       or int(dep_status.get("observedGeneration") or 0) < int(dep["metadata"].get("generation") or 0))
    progressing = (Cond(PROGRESSING, TRUE, "RollingOut", f"{dep_status.get('updatedReplicas', 0)}/{spec.replicas} replicas updated.")
                   if rolling or not dep else Cond(PROGRESSING, FALSE, "RolloutComplete", "All replicas run the current spec."))
    not_ready = [a for a in adapters if a["state"] != READY_STATE]
    if not not_ready:
        adapters_cond = Cond(ADAPTERS_READY, TRUE, "AllAdaptersReady", f"{ready_count}/{len(adapters)} adapters loaded on every replica.")
    else:
        worst = next((a for s in (REJECTED, FAILED, WAITING, LOADING) for a in not_ready if a["state"] == s))
        reason = {REJECTED: "AdapterRejected", FAILED: "AdapterFailed", WAITING: WAITING, LOADING: "AdaptersLoading"}[worst["state"]]
        adapters_cond = Cond(ADAPTERS_READY, FALSE, reason, "; ".join(f"{a['name']}: {a['state']}" + (f" ({a['message']})" if a.get("message") else "")
                                                                      for a in not_ready))
    if available.status == TRUE and adapters_cond.status == TRUE:
        ready_cond = Cond(READY, TRUE, "Ready", f"Serving {spec.base_model.uri} and {len(adapters)} adapter(s) at {obs.endpoint}.")
    elif available.status != TRUE:
        ready_cond = Cond(READY, FALSE, available.reason, available.message)
    else:
        ready_cond = Cond(READY, FALSE, adapters_cond.reason, adapters_cond.message)
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "conditions": merge_conditions(previous.get("conditions"), [ready_cond, available, adapters_cond, progressing], obs.generation, now),
        "replicas": replicas,
        "readyReplicas": ready,
        "selector": obs.selector,
        "endpoint": obs.endpoint,
        "adaptersReady": f"{ready_count}/{len(adapters)}",
        "adapters": adapters,
    }
    return status
