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
from ..api.modeldeployment import AdapterSource, ModelDeploymentSpec
from ..api.promotion import AdapterVersion, Figures
from ..api.sidecar import DesiredAdapter, DesiredSet, SidecarStatus
from ..api.validation import parse
from ..builders.modeldeployment import desired_set, resolve_spec
from ..config import OperatorSettings
from ..status.conditions import find, is_true
from .promotion import Candidate, EntryPlan, plan_entry
from .template import spec_that_ran

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
    figures: Figures = Figures()  # the FineTuneJob's evaluation (gates)
    promotion: EntryPlan | None = None  # a gated or versioned entry (plan.promotion): it says what is sent

    @property
    def sendable(self) -> bool:
        return self.state == LOADING and self.uri is not None

    @property
    def sent(self) -> list[DesiredAdapter]:
        """Its entries of the desired set."""
        if self.promotion is not None:
            return list(self.promotion.desired)
        return [DesiredAdapter(name=self.name, uri=self.uri, manifest_sha256=self.sha256)] if self.sendable else []


def resolve_adapters(spec: ModelDeploymentSpec, namespace: str, finetunejobs: dict[str, dict[str, Any]],
                     current: DesiredSet | None = None, pods: list[str] | None = None,
                     reports: dict[str, SidecarStatus | None] | None = None,
                     previous: dict[str, Any] | None = None) -> list[Resolved]:
    """Map each listed adapter to something the pods can load, or say why not yet / never. A gated or versioned
    entry is planned by plan.promotion from what the pods serve (`current`, `pods`, `reports`) and the verdicts
    in the `previous` status."""
    out = []
    before = {a.get("name"): a for a in (previous or {}).get("adapters") or []}
    for adapter in spec.adapters:
        if adapter.gate is None and adapter.versions is None:
            out.append(resolve_source(adapter.name, adapter, spec, namespace, finetunejobs))
            continue

        def candidate(version: AdapterVersion | None, entry: AdapterSource = adapter) -> Candidate:
            res = resolve_source(entry.name, version or entry, spec, namespace, finetunejobs)
            by_job = (version or entry).fine_tune_job_ref is not None
            return Candidate(version.name if version else "", res.source, res.state, res.uri, res.sha256, res.message,
                             res.figures, by_job)

        entry = plan_entry(adapter, candidate, current, pods or [], reports or {}, before.get(adapter.name))
        out.append(Resolved(adapter.name, entry.source, entry.state, entry.uri, entry.sha256, entry.message, promotion=entry))
    return out


def resolve_source(name: str, adapter: AdapterSource | AdapterVersion, spec: ModelDeploymentSpec, namespace: str,
                   finetunejobs: dict[str, dict[str, Any]]) -> Resolved:
    """One source (an entry's, or a version's): its uri, or its FineTuneJob's published adapter once admitted."""
    if adapter.uri is not None:
        return Resolved(name, adapter.uri, LOADING, uri=adapter.uri.rstrip("/"))
    ref = adapter.fine_tune_job_ref.name  # type: ignore[union-attr]
    source = f"fineTuneJob/{ref}"
    ftj = finetunejobs.get(ref)
    if ftj is None:
        return Resolved(name, source, WAITING, message=f"FineTuneJob {ref} does not exist in namespace "
                        f"{namespace} (only FineTuneJobs in the same namespace can be referenced); waiting for it.")
    status = ftj.get("status") or {}
    conditions = status.get("conditions")
    if is_true(conditions, "Failed"):
        failed = find(conditions, "Failed") or {}
        return Resolved(name, source, FAILED, message=f"FineTuneJob {ref} failed "
                        f"({failed.get('reason')}): {failed.get('message', '')}".strip())
    published = status.get("adapter") or {}
    if not is_true(conditions, "Succeeded") or not published.get("uri") or not published.get("manifestSha256"):
        percent = (status.get("progress") or {}).get("percent")
        doing = f"training ({percent}% done)" if percent is not None else "not finished"
        return Resolved(name, source, WAITING, message=f"FineTuneJob {ref} is {doing}; the adapter is "
                        "added automatically when it succeeds.")
    return _admit(name, source, spec, ftj, published)


def _admit(name: str, source: str, spec: ModelDeploymentSpec, ftj: dict[str, Any], published: dict[str, Any]) -> Resolved:
    """kubetune.api.admission on what the FineTuneJob published, before any pod sees it: the sidecar runs the
    same checks on the manifest, so an adapter it would reject never reaches the desired set."""
    try:
        adapter = PublishedAdapter.model_validate(published)
        facts = AdapterFacts.from_finetunejob(spec_that_ran(ftj), adapter)
    except ValidationError as exc:
        return Resolved(name, source, REJECTED, message=f"FineTuneJob {ftj['metadata']['name']} reports an adapter "
                        f"kubetune cannot read: {exc}")
    uri, sha = adapter.uri, adapter.manifest_sha256
    problems = admission_problems(facts, ServingTarget.of(spec))
    if problems:
        return Resolved(name, source, REJECTED, uri, sha, "; ".join(problems))
    return Resolved(name, source, LOADING, uri, sha, figures=Figures.of((ftj.get("status") or {}).get("evaluation")))


@dataclass(frozen=True)
class ServingPlan:
    """What one reconcile of a ModelDeployment builds and reports."""

    spec: ModelDeploymentSpec  # with the platform defaults filled in
    adapters: list[Resolved]
    desired: DesiredSet  # the sidecar's desired set (desired_set)
    changed: bool = True  # it differs from the live ConfigMap's (a gate decided: the sidecar poll applies it)
    scaling: tuple[Any, ...] = ()  # Children applied before the workload: deletions, a replicas handover (builders.scaling)

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
    wanted = [sent for r in adapters for sent in r.sent]
    if current is not None and current.adapters == wanted:
        return current
    return desired_set((current.generation if current else 0) + 1, wanted)


def plan(body: dict[str, Any], settings: OperatorSettings, finetunejobs: dict[str, dict[str, Any]],
         configmap: dict[str, Any] | None, pods: list[dict[str, Any]] | None = None,
         reports: dict[str, SidecarStatus | None] | None = None, previous: dict[str, Any] | None = None) -> ServingPlan:
    """(spec, observed) -> ServingPlan. `finetunejobs`: the namespace's FineTuneJobs by name; `configmap`: the live
    desired-set ConfigMap; `pods`, `reports`, `previous` (the status as last written): what gates read
    (plan.promotion). Raises SpecError for an invalid spec."""
    spec = resolve_spec(parse(ModelDeploymentSpec, dict(body["spec"])), settings)
    current = current_desired(configmap)
    live = [p["metadata"]["name"] for p in pods or [] if not p["metadata"].get("deletionTimestamp")]
    adapters = resolve_adapters(spec, body["metadata"]["namespace"], finetunejobs, current, live, reports, previous)
    desired = next_desired(current, adapters)
    return ServingPlan(spec, adapters, desired, changed=current is None or desired.generation != current.generation)


def referenced_jobs(body: dict[str, Any]) -> set[str]:
    """The FineTuneJobs a ModelDeployment's spec names (read before validation: a raw body)."""
    refs = [a.get("fineTuneJobRef") for a in (body.get("spec") or {}).get("adapters") or []]
    refs += [v.get("fineTuneJobRef") for a in (body.get("spec") or {}).get("adapters") or [] for v in a.get("versions") or []]
    return {(ref or {}).get("name") for ref in refs} - {None}


def adapter_outcome(ftj: dict[str, Any] | None) -> tuple[Any, ...]:
    """What of a FineTuneJob can change an adapter's resolution other than its progress: whether it exists,
    its terminal conditions, the published adapter, and the spec fields admission reads. A ModelDeployment
    is re-planned and re-applied when this changes, not on every progress patch (its status shows training
    progress from the periodic status refresh)."""
    if ftj is None:
        return (None,)
    status, spec = ftj.get("status") or {}, spec_that_ran(ftj)
    failed = find(status.get("conditions"), "Failed") or {}
    terminal = (failed.get("status"), failed.get("reason"), failed.get("message"), is_true(status.get("conditions"), "Succeeded"))
    return (ftj["metadata"].get("uid"), terminal, json.dumps(status.get("adapter"), sort_keys=True),
            json.dumps([spec.get("adapter"), spec.get("baseModel")], sort_keys=True))
