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

from ..api.conditions import ADAPTERS_READY, AVAILABLE, FALSE, PROGRESSING, READY, SEVERITY, TRUE, AdapterState
from ..api.conditions import ModelDeploymentReason as Reason
from ..api.modeldeployment import MAX_ADAPTER_MESSAGE, MAX_PODS_LISTED, AdapterStatus, ModelDeploymentSpec, ModelDeploymentStatus
from ..api.sidecar import SidecarStatus
from ..plan.modeldeployment import Resolved
from .conditions import Cond, merge_conditions
from .promotion import promotion_status

# The AdaptersReady reason for the worst adapter state (conditions.SEVERITY).
_ADAPTERS_REASON = {AdapterState.REJECTED: Reason.ADAPTER_REJECTED, AdapterState.FAILED: Reason.ADAPTER_FAILED,
                    AdapterState.WAITING_FOR_FINETUNEJOB: Reason.WAITING_FOR_FINETUNEJOB,
                    AdapterState.GATED: Reason.ADAPTER_GATED,
                    AdapterState.LOADING: Reason.ADAPTERS_LOADING}


@dataclass
class ServingObserved:
    generation: int | None
    desired_generation: int
    deployment: dict[str, Any] | None
    pods: list[dict[str, Any]]
    reports: dict[str, SidecarStatus | None]  # pod name -> its sidecar's /status (None: unreachable)
    endpoint: str
    selector: str
    validation_error: str | None = None


def _on_pod(res: Resolved, report: SidecarStatus | None, desired_generation: int) -> tuple[AdapterState, str | None]:
    """(state, message) of one sendable adapter in one pod, from that pod's sidecar report."""
    if report is None:
        return AdapterState.UNKNOWN, "its adapter-sync sidecar does not answer"
    entry = report.report(res.name)
    # Pinned adapters match by manifest sha; unpinned (by URI) ones need a pod on the current set.
    same = entry is not None and ((entry.manifest_sha256 == res.sha256) if res.sha256
                                  else (report.generation or 0) >= desired_generation)
    if entry is None or not same:
        return AdapterState.LOADING, "has not picked up this version yet"
    return AdapterState(entry.state), entry.message


def _adapter_state(res: Resolved, pods: list[str], want: int, reports: dict[str, SidecarStatus | None],
                   desired_generation: int) -> tuple[AdapterState, int, int, dict[str, AdapterState], str | None]:
    """(state, replicas that serve it, replicas, pod name -> its state there, message) for one sendable
    adapter. Replicas: the live pods, or spec.replicas while fewer exist (a missing pod has nothing)."""
    per_pod = {pod: _on_pod(res, reports.get(pod), desired_generation) for pod in sorted(pods)}
    states = {pod: state for pod, (state, _) in per_pod.items()}
    total = max(want, len(pods))
    loaded = sum(1 for state in states.values() if state == AdapterState.READY)
    lagging = {pod: f"pod {pod} {state}" + (f" ({msg})" if msg else "") for pod, (state, msg) in per_pod.items()
               if state != AdapterState.READY}
    for worst in (AdapterState.REJECTED, AdapterState.FAILED):
        pod = next((pod for pod in lagging if states[pod] == worst), None)
        if pod is not None:
            return worst, loaded, total, states, lagging[pod] + (", retrying" if worst == AdapterState.FAILED else "")
    if total and loaded == total:
        return AdapterState.READY, loaded, total, states, None
    if not total:
        return AdapterState.LOADING, 0, 0, states, "no replica (spec.replicas is 0)"
    missing = [f"{total - len(pods)} replica(s) not created yet"] if total > len(pods) else []
    return (AdapterState.LOADING, loaded, total, states,
            f"loaded on {loaded}/{total} replicas; waiting for {', '.join([*lagging.values(), *missing])}")


def _adapter(res: Resolved, spec: ModelDeploymentSpec, live_pods: list[str], obs: ServingObserved,
             before: dict[str, Any] | None = None, now: datetime | None = None) -> AdapterStatus:
    pods: dict[str, AdapterState] = {}
    if res.sendable:
        state, loaded, total, pods, message = _adapter_state(res, live_pods, spec.replicas, obs.reports, obs.desired_generation)
    else:
        state, loaded, total, message = res.state, 0, max(spec.replicas, len(live_pods)), res.message
    listed = dict(sorted(pods.items())[:MAX_PODS_LISTED])  # bounded like the CRD field (spec.replicas <= 64 + surge)
    promotion = None
    if res.promotion is not None:
        def loaded_of(sent: Any) -> tuple[AdapterState, int, int]:
            got = _adapter_state(Resolved(sent.name, "", AdapterState.LOADING, sent.uri, sent.manifest_sha256), live_pods,
                                 spec.replicas, obs.reports, obs.desired_generation)
            return got[0], got[1], got[2]
        promotion = promotion_status(res.name, res.promotion, live_pods, obs.reports, loaded_of, before, now)
    return AdapterStatus(name=res.name, source=res.source, state=state, replicas_loaded=f"{loaded}/{total}",
                         uri=res.uri or None, sha256=res.sha256 or None, message=_cut(message), pods=listed or None,
                         promotion=promotion)


def _cut(message: str | None, limit: int = MAX_ADAPTER_MESSAGE) -> str | None:
    return message if not message or len(message) <= limit else message[: limit - 3] + "..."


def derive_status(obs: ServingObserved, spec: ModelDeploymentSpec | None, resolved: list[Resolved],
                  previous: dict[str, Any] | None, now: datetime | None = None) -> ModelDeploymentStatus:
    """The whole status. ``previous`` is the status as stored (its wire form); serialize the result with
    ``to_dict()`` to write it."""
    previous = previous or {}
    if obs.validation_error or spec is None:
        msg = obs.validation_error or "invalid spec"
        conds = [Cond(type_, FALSE, Reason.VALIDATION_FAILED, msg) for type_ in (READY, AVAILABLE, ADAPTERS_READY, PROGRESSING)]
        return ModelDeploymentStatus(observed_generation=obs.generation,
                                     conditions=merge_conditions(previous.get("conditions"), conds, obs.generation, now))
    dep = obs.deployment or {}
    dep_status = dep.get("status") or {}
    live_pods = [p["metadata"]["name"] for p in obs.pods if not p["metadata"].get("deletionTimestamp")]
    before = {a.get("name"): a for a in previous.get("adapters") or []}
    adapters = [_adapter(res, spec, live_pods, obs, before.get(res.name), now) for res in resolved]
    ready_count = sum(1 for a in adapters if a.state == AdapterState.READY)

    replicas, ready = int(dep_status.get("replicas") or 0), int(dep_status.get("readyReplicas") or 0)
    if not dep:
        available = Cond(AVAILABLE, FALSE, Reason.CREATING, "Creating the serving Deployment.")
    elif ready > 0:
        available = Cond(AVAILABLE, TRUE, Reason.REPLICAS_READY, f"{ready}/{spec.replicas} replicas ready at {obs.endpoint}.")
    elif spec.replicas == 0:
        available = Cond(AVAILABLE, FALSE, Reason.SCALED_TO_ZERO, "spec.replicas is 0.")
    else:
        available = Cond(AVAILABLE, FALSE, Reason.NO_READY_REPLICAS, "No replica is ready yet (vLLM starting, or restoring adapters).")
    rolling = dep and (int(dep_status.get("updatedReplicas") or 0) < spec.replicas or replicas > spec.replicas
                       or int(dep_status.get("observedGeneration") or 0) < int(dep["metadata"].get("generation") or 0))
    progressing = (Cond(PROGRESSING, TRUE, Reason.ROLLING_OUT, f"{dep_status.get('updatedReplicas', 0)}/{spec.replicas} replicas updated.")
                   if rolling or not dep else Cond(PROGRESSING, FALSE, Reason.ROLLOUT_COMPLETE, "All replicas run the current spec."))
    not_ready = [a for a in adapters if a.state != AdapterState.READY]
    if not not_ready:
        adapters_cond = Cond(ADAPTERS_READY, TRUE, Reason.ALL_ADAPTERS_READY,
                             f"{ready_count}/{len(adapters)} adapters loaded on every replica.")
    else:
        worst = next(a for s in SEVERITY for a in not_ready if a.state == s)
        adapters_cond = Cond(ADAPTERS_READY, FALSE, _ADAPTERS_REASON[worst.state],
                             "; ".join(f"{a.name}: {a.state}" + (f" ({a.message})" if a.message else "") for a in not_ready))
    if available.status == TRUE and adapters_cond.status == TRUE:
        ready_cond = Cond(READY, TRUE, Reason.READY, f"Serving {spec.base_model.uri} and {len(adapters)} adapter(s) at {obs.endpoint}.")
    elif available.status != TRUE:
        ready_cond = Cond(READY, FALSE, available.reason, available.message)
    else:
        ready_cond = Cond(READY, FALSE, adapters_cond.reason, adapters_cond.message)
    return ModelDeploymentStatus(
        observed_generation=obs.generation,
        conditions=merge_conditions(previous.get("conditions"), [ready_cond, available, adapters_cond, progressing], obs.generation, now),
        replicas=replicas, ready_replicas=ready, selector=obs.selector, endpoint=obs.endpoint,
        adapters_ready=f"{ready_count}/{len(adapters)}", adapters=adapters)
