"""ModelDeployment plan: the spec with platform defaults, each adapter resolved to something the pods can
load (or why not yet / never), and the sidecar's desired-set document. Pure: no I/O.

Computed once per reconcile from the spec and what is observed (the FineTuneJobs in the namespace, the
live desired-set ConfigMap); the builders and the status derivation both read the same plan.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..api.admission import AdapterFacts, ServingTarget, admission_problems
from ..api.conditions import AdapterState
from ..api.constants import DESIRED_ADAPTERS_KEY
from ..api.finetunejob import PublishedAdapter
from ..api.modeldeployment import ModelDeploymentSpec
from ..api.sidecar import DesiredAdapter, DesiredSet
from ..api.validation import parse
from ..builders.modeldeployment import desired_set, resolve_spec
from ..config import OperatorSettings
from ..status.conditions import find, is_true

WAITING, LOADING = AdapterState.WAITING_FOR_FINETUNEJOB, AdapterState.LOADING
FAILED, REJECTED = AdapterState.FAILED, AdapterState.REJECTED


@dataclass(frozen=True)
class Resolved:
    """An adapter after resolution and the operator's admission checks."""

    name: str
    source: str
    state: AdapterState  # WaitingForFineTuneJob | Loading (sendable) | Failed | Rejected
    uri: str | None = None
    sha256: str | None = None
    message: str | None = None

    @property
    def sendable(self) -> bool:
        return self.state == LOADING and self.uri is not None


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
    """kubetune.api.admission on what the FineTuneJob published, before any pod sees it: the sidecar runs the
    same checks on the manifest, so an adapter it would reject never reaches the desired set."""
    try:
        adapter = PublishedAdapter.model_validate(published)
        facts = AdapterFacts.from_finetunejob(ftj.get("spec") or {}, adapter)
    except ValidationError as exc:
        return Resolved(name, source, REJECTED, message=f"FineTuneJob {ftj['metadata']['name']} reports an adapter "
                        f"kubetune cannot read: {exc}")
    uri, sha = adapter.uri, adapter.manifest_sha256
    problems = admission_problems(facts, ServingTarget.of(spec))
    if problems:
        return Resolved(name, source, REJECTED, uri, sha, "; ".join(problems))
    return Resolved(name, source, LOADING, uri, sha)


@dataclass(frozen=True)
class ServingPlan:
    """What one reconcile of a ModelDeployment builds and reports."""

    spec: ModelDeploymentSpec  # with the platform defaults filled in
    adapters: list[Resolved]
    desired: DesiredSet  # the sidecar's desired set (desired_set)

    @property
    def desired_generation(self) -> int:
        return self.desired.generation


def current_desired(configmap: dict[str, Any] | None) -> DesiredSet | None:
    """The desired set in the live ConfigMap, or None (missing, or not ours to read)."""
    try:
        return DesiredSet.model_validate_json(configmap["data"][DESIRED_ADAPTERS_KEY]) if configmap else None
    except (KeyError, TypeError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def next_desired(current: DesiredSet | None, adapters: list[Resolved]) -> DesiredSet:
    """The desired set for these adapters; its generation goes up only when the set changes."""
    wanted = [DesiredAdapter(name=r.name, uri=r.uri, manifest_sha256=r.sha256) for r in adapters if r.sendable]
    if current is not None and current.adapters == wanted:
        return current
    return desired_set((current.generation if current else 0) + 1, wanted)


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
