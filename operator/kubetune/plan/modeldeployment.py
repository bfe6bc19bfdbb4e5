"""ModelDeployment plan: the spec with platform defaults, each adapter resolved to something the pods can
load (or why not yet / never), and the sidecar's desired-set document. Pure: no I/O.

Computed once per reconcile from the spec and what is observed (the FineTuneJobs in the namespace, the
live desired-set ConfigMap); the builders and the status derivation both read the same plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..api.modeldeployment import ModelDeploymentSpec
from ..api.validation import parse
from ..builders.modeldeployment import DESIRED_KEY, desired_set, resolve_spec
from ..config import OperatorSettings
from ..status.conditions import find, is_true

WAITING = "WaitingForFineTuneJob"
LOADING, FAILED, REJECTED = "Loading", "Failed", "Rejected"


@dataclass(frozen=True)
class Resolved:
    """An adapter after resolution and the operator's admission checks."""

    name: str
    source: str
    state: str  # WaitingForFineTuneJob | Loading (sendable) | Failed | Rejected
    uri: str | None = None
    sha256: str | None = None
    message: str | None = None

    @property
    def sendable(self) -> bool:
        return self.state == LOADING and self.uri is not None


def _base(uri: str, revision: str | None) -> str:
    return f"{uri}@{revision}" if revision else uri


def resolve_adapters(spec: ModelDeploymentSpec, namespace: str, finetunejobs: dict[str, dict[str, Any]]) -> list[Resolved]:
    """Map each listed adapter to something the pods can load, or say why not yet / never."""
    out = []
    for adapter in spec.adapters:
        if adapter.uri is not None:
            out.append(Resolved(adapter.name, adapter.uri, LOADING, uri=adapter.uri.rstrip("/")))
            continue
        ref = adapter.fine_tune_job_ref.name  # type: ignore[union-attr]
        source = f"fineTuneJob/{ref}"
        ftj = finetunejobs.get(ref)
        if ftj is None:
            out.append(Resolved(adapter.name, source, WAITING, message=f"FineTuneJob {ref} does not exist in namespace "
                                f"{namespace} (only FineTuneJobs in the same namespace can be referenced); waiting for it."))
            continue
        status = ftj.get("status") or {}
        conditions = status.get("conditions")
        if is_true(conditions, "Failed"):
            failed = find(conditions, "Failed") or {}
            out.append(Resolved(adapter.name, source, FAILED, message=f"FineTuneJob {ref} failed "
                                f"({failed.get('reason')}): {failed.get('message', '')}".strip()))
            continue
        published = status.get("adapter") or {}
        if not is_true(conditions, "Succeeded") or not published.get("uri") or not published.get("manifestSha256"):
            percent = (status.get("progress") or {}).get("percent")
            doing = f"training ({percent}% done)" if percent is not None else "not finished"
            out.append(Resolved(adapter.name, source, WAITING, message=f"FineTuneJob {ref} is {doing}; the adapter is "
                                "added automatically when it succeeds."))
            continue
        out.append(_admit(adapter.name, source, spec, ftj, published))
    return out


def _admit(name: str, source: str, spec: ModelDeploymentSpec, ftj: dict[str, Any], published: dict[str, Any]) -> Resolved:
    """Admission checks the operator can make from the FineTuneJob (the sidecar re-checks the manifest)."""
    ftj_spec = ftj.get("spec") or {}
    uri, sha = published["uri"], published["manifestSha256"]
    kind = published.get("type") or (ftj_spec.get("adapter") or {}).get("type", "lora")
    if kind == "full":
        return Resolved(name, source, REJECTED, uri, sha, f"FineTuneJob {ftj['metadata']['name']} trained a full model, not "
                        f"an adapter: serve it as spec.baseModel.uri {uri} in its own ModelDeployment.")
    rank = published.get("rank") or (ftj_spec.get("adapter") or {}).get("rank", 16)
    if rank > spec.vllm.max_lora_rank:
        return Resolved(name, source, REJECTED, uri, sha, f"adapter rank {rank} exceeds spec.vllm.maxLoraRank "
                        f"{spec.vllm.max_lora_rank}: raise vllm.maxLoraRank to at least {rank}.")
    trained = ftj_spec.get("baseModel") or {}
    trained_on = _base(trained.get("uri", "?"), trained.get("revision"))
    served = _base(spec.base_model.uri, spec.base_model.revision)
    if trained.get("uri") != spec.base_model.uri or (trained.get("revision") and spec.base_model.revision
                                                     and trained.get("revision") != spec.base_model.revision):
        return Resolved(name, source, REJECTED, uri, sha, f"adapter was trained on {trained_on} but this deployment "
                        f"serves {served}: a LoRA adapter only works on the base model it was trained on.")
    return Resolved(name, source, LOADING, uri, sha)


@dataclass(frozen=True)
class ServingPlan:
    """What one reconcile of a ModelDeployment builds and reports."""

    spec: ModelDeploymentSpec  # with the platform defaults filled in
    adapters: list[Resolved]
    desired: dict[str, Any]  # the sidecar's desired-set document (desired_set)

    @property
    def desired_generation(self) -> int:
        return int(self.desired.get("generation") or 0)


def current_desired(configmap: dict[str, Any] | None) -> dict[str, Any] | None:
    """The desired-set document in the live ConfigMap, or None (missing, or not ours to read)."""
    try:
        return json.loads(configmap["data"][DESIRED_KEY]) if configmap else None
    except (KeyError, TypeError, ValueError):
        return None


def next_desired(current: dict[str, Any] | None, adapters: list[Resolved]) -> dict[str, Any]:
    """The desired-set document for these adapters; its generation goes up only when the set changes."""
    wanted = [{"name": r.name, "uri": r.uri, "manifestSha256": r.sha256} for r in adapters if r.sendable]
    if current and current.get("adapters") == desired_set(0, wanted)["adapters"]:
        return current
    return desired_set(int((current or {}).get("generation") or 0) + 1, wanted)  # type: ignore[arg-type]


def plan(body: dict[str, Any], settings: OperatorSettings, finetunejobs: dict[str, dict[str, Any]],
         configmap: dict[str, Any] | None) -> ServingPlan:
    """(spec, observed) -> ServingPlan. `finetunejobs`: the namespace's FineTuneJobs by name; `configmap`: the live
    desired-set ConfigMap. Raises SpecError for an invalid spec."""
    spec = resolve_spec(parse(ModelDeploymentSpec, dict(body["spec"])), settings)
    adapters = resolve_adapters(spec, body["metadata"]["namespace"], finetunejobs)
    return ServingPlan(spec, adapters, next_desired(current_desired(configmap), adapters))


def referenced_jobs(body: dict[str, Any]) -> set[str]:
    """The FineTuneJobs a ModelDeployment's spec names (read before validation: a raw body)."""
    return {(a.get("fineTuneJobRef") or {}).get("name") for a in (body.get("spec") or {}).get("adapters") or []} - {None}


def adapter_outcome(ftj: dict[str, Any] | None) -> tuple[Any, ...]:
    """What of a FineTuneJob can change an adapter's resolution other than its progress: whether it exists,
    its terminal conditions, the published adapter, and the spec fields admission reads. A ModelDeployment
    is re-planned and re-applied when this changes, not on every progress patch (its status shows training
    progress from the periodic status refresh)."""
    if ftj is None:
        return (None,)
    status, spec = ftj.get("status") or {}, ftj.get("spec") or {}
    failed = find(status.get("conditions"), "Failed") or {}
    terminal = (failed.get("status"), failed.get("reason"), failed.get("message"), is_true(status.get("conditions"), "Succeeded"))
    return (ftj["metadata"].get("uid"), terminal, json.dumps(status.get("adapter"), sort_keys=True),
            json.dumps([spec.get("adapter"), spec.get("baseModel")], sort_keys=True))
