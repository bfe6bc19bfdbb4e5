"""status.adapters[].promotion of a gated or versioned entry (kubetune.api.promotion). Pure: no I/O, no clock reads.

Which version serves the name is observed: the (uri, sha) every live pod's sidecar reports Ready under the name,
matched to the versions. Each version keeps its verdict, figures and the last time it was seen serving
(`servedSince`, carried from the previous status): the history of served versions.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..api.conditions import AdapterState
from ..api.promotion import CanaryStatus, PromotionStatus, VersionStatus
from ..api.sidecar import DesiredAdapter, SidecarStatus
from ..plan.promotion import EntryPlan, Judged
from .conditions import now_iso


def served_version(name: str, plan: EntryPlan, pods: list[str], reports: dict[str, SidecarStatus | None]) -> str | None:
    """The version every live pod serves under `name` now (None: none, or the pods differ)."""
    seen = set()
    for pod in pods:
        entry = (reports.get(pod) or SidecarStatus(generation=None, vllm_ready=False)).report(name)
        if entry is None or entry.state != AdapterState.READY:
            return None
        seen.add((entry.uri.rstrip("/"), entry.manifest_sha256))
    if len(seen) != 1:
        return None
    uri, sha = seen.pop()
    match = [j for j in plan.judged if j.sha256 and j.sha256 == sha] or [j for j in plan.judged if not j.sha256 and j.source.rstrip("/") == uri]
    return match[0].version if match else None


def _record(j: Judged, serving: str | None, was: str | None, before: dict[str, Any], now: str | None) -> VersionStatus:
    return VersionStatus(
        name=j.version, source=j.source, sha256=j.sha256, gate=j.verdict, gate_digest=j.gate_digest,
        message=(j.message or "")[:4096] or None, baseline_eval_loss=j.figures.baseline_eval_loss,
        final_eval_loss=j.figures.final_eval_loss, prompts=list(j.prompts) or None,
        served_since=(before.get("servedSince") or now) if j.version == serving and was == serving
        else now if serving is not None and j.version == serving else before.get("servedSince"))


def promotion_status(name: str, plan: EntryPlan, pods: list[str], reports: dict[str, SidecarStatus | None],
                     loaded: Callable[[DesiredAdapter], tuple[AdapterState, int, int]], previous: dict[str, Any] | None,
                     now: datetime | None) -> PromotionStatus:
    """`loaded(entry)`: (state, replicas that serve it, replicas) of one desired-set entry (status.modeldeployment)."""
    serving = served_version(name, plan, pods, reports)
    stamp = now_iso(now)
    before = {v.get("name"): v for v in ((previous or {}).get("promotion") or {}).get("versions") or []}
    was = ((previous or {}).get("promotion") or {}).get("serving")
    canary = None
    if plan.canary is not None:
        version, weight, sent = plan.canary
        state, ready, total = loaded(sent)
        canary = CanaryStatus(version=version, weight=weight, served_name=sent.name, ready=state == AdapterState.READY,
                              replicas_loaded=f"{ready}/{total}")
    return PromotionStatus(target=plan.target, serving=serving if serving is not None else None, canary=canary,
                           trial_pod=plan.trial_pod,
                           versions=[_record(j, serving, was, before.get(j.version) or {}, stamp) for j in plan.judged])
