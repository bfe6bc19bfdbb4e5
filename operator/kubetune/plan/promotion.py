"""Gated promotion, versions and canary of one spec.adapters entry (kubetune.api.promotion). Pure: no I/O.

From the entry, its versions resolved like any adapter (plan.modeldeployment.resolve_source), what the pods serve
now (the live desired set and the sidecars' reports) and the verdicts recorded in the previous status, it decides:

- which (uri, sha) vLLM serves under the entry's name: the target version (serving.version, or the entry's one
  source) once its gate passed, else what is served now (the previous version keeps serving);
- the canary entry ``<name>--<version>`` once the canary version passed its gate;
- a trial entry ``<name>--<version>--gate`` on ONE pod while a gate needs the smoke prompts (or, for an adapter
  given by URI, manifest.json's figures, which only the sidecar can read);
- the verdict of every version (Pending, Passed, Failed), recorded in status so that it is not re-run.

A verdict holds for one (manifest sha256, gate digest): a new publication or a changed gate is judged again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..api.conditions import AdapterState
from ..api.modeldeployment import AdapterSource
from ..api.promotion import (AdapterVersion, Figures, Gate, GateVerdict, PromptResult, Trial, eval_verdict,
                             internal_name, trial_name)
from ..api.sidecar import DesiredAdapter, DesiredSet, SidecarStatus

LOADING, GATED = AdapterState.LOADING, AdapterState.GATED


@dataclass(frozen=True)
class Candidate:
    """One version after resolution (plan.modeldeployment.Resolved fields) and its gate."""

    version: str  # '' for an entry without versions
    source: str
    state: AdapterState
    uri: str | None
    sha256: str | None
    message: str | None
    figures: Figures  # from the FineTuneJob's status.evaluation (unknown for a URI)
    by_job: bool


@dataclass(frozen=True)
class Judged:
    version: str
    source: str
    verdict: GateVerdict | None  # None: no gate
    sha256: str | None
    message: str | None
    figures: Figures
    prompts: tuple[PromptResult, ...] = ()
    gate_digest: str | None = None
    state: AdapterState = LOADING  # the candidate's own state (Waiting, Failed, Rejected: not judged)

    @property
    def servable(self) -> bool:
        return self.state == LOADING and self.verdict in (None, GateVerdict.PASSED)


@dataclass(frozen=True)
class EntryPlan:
    """What one entry adds to the plan: the stable name's state, the desired-set entries, the promotion status input."""

    state: AdapterState
    source: str
    uri: str | None
    sha256: str | None
    message: str | None
    desired: tuple[DesiredAdapter, ...]  # the stable name (target or kept), canary, trial
    target: str | None
    canary: tuple[str, int, DesiredAdapter] | None  # (version, weight, its desired entry) once it passed
    trial_pod: str | None
    judged: tuple[Judged, ...] = field(default=())
    stable_sent: DesiredAdapter | None = None


def _versions(entry: AdapterSource) -> list[AdapterVersion | None]:
    return list(entry.versions) if entry.versions else [None]


def _recorded(previous: dict[str, Any] | None, version: str) -> dict[str, Any]:
    for record in ((previous or {}).get("promotion") or {}).get("versions") or []:
        if record.get("name") == version:
            return record
    return {}


def trial_pod(current: DesiredSet | None, pods: list[str], reports: dict[str, SidecarStatus | None]) -> str | None:
    """The pod that runs gates: the one the live desired set names, while it lives and answers; else the first
    live pod (by name) whose sidecar reports vLLM ready."""
    for entry in (current.adapters if current else []):
        if entry.trial is not None and entry.trial.pod in pods and reports.get(entry.trial.pod) is not None:
            return entry.trial.pod
    return next((p for p in sorted(pods) if (r := reports.get(p)) is not None and r.vllm_ready), None)


def judge(entry: AdapterSource, cand: Candidate, previous: dict[str, Any] | None, pod: str | None,
          reports: dict[str, SidecarStatus | None]) -> tuple[Judged, DesiredAdapter | None]:
    """(the verdict of one version, the trial entry to send while it is Pending)."""
    base = dict(version=cand.version, source=cand.source, sha256=cand.sha256, figures=cand.figures, state=cand.state)
    if cand.state != LOADING:
        return Judged(verdict=None, message=cand.message, **base), None
    gate = entry.gate
    if gate is None:
        return Judged(verdict=None, message=None, **base), None
    digest = gate.digest()
    record = _recorded(previous, cand.version)
    if (record.get("gateDigest") == digest and record.get("gate") in (GateVerdict.PASSED, GateVerdict.FAILED)
            and record.get("source") == cand.source and (cand.sha256 is None or record.get("sha256") == cand.sha256)):
        prompts = tuple(PromptResult.model_validate(p) for p in record.get("prompts") or [])
        figures = cand.figures if cand.figures.known() else Figures(record.get("baselineEvalLoss"), record.get("finalEvalLoss"))
        return Judged(verdict=GateVerdict(record["gate"]), message=record.get("message"), prompts=prompts, gate_digest=digest,
                      **{**base, "sha256": cand.sha256 or record.get("sha256"), "figures": figures}), None
    trial_gate: Gate = gate
    if gate.needs_eval and cand.by_job:  # the operator decides the eval part from the FineTuneJob's status
        verdict, message = eval_verdict(gate, cand.figures)
        if verdict == GateVerdict.FAILED or not gate.smoke_prompts:
            return Judged(verdict=verdict, message=message, gate_digest=digest, **base), None
        trial_gate = gate.model_copy(update={"min_improvement": None, "max_eval_loss": None, "min_metrics": None})
    name = trial_name(entry.name, cand.version)
    if pod is None:
        return Judged(verdict=GateVerdict.PENDING, message="gate: waiting for a ready replica to run it on",
                      gate_digest=digest, **base), None
    report = (reports.get(pod) or SidecarStatus(generation=None, vllm_ready=False)).report(name)
    sent = DesiredAdapter(name=name, uri=cand.uri, manifest_sha256=cand.sha256, trial=Trial(pod=pod, gate=trial_gate))
    trial = report.trial if report is not None else None
    if trial is None or trial.gate_digest != trial_gate.digest() or (cand.sha256 and report.manifest_sha256 != cand.sha256):
        state = f" ({report.state}: {report.message})" if report is not None and report.message else ""
        return Judged(verdict=GateVerdict.PENDING, message=f"gate: running on pod {pod}{state}", gate_digest=digest,
                      **base), sent
    if trial.verdict == GateVerdict.PENDING:
        return Judged(verdict=GateVerdict.PENDING, message=f"gate: running on pod {pod}: {trial.message or 'smoke prompts'}",
                      prompts=tuple(trial.prompts), gate_digest=digest, **base), sent
    figures = cand.figures if cand.figures.known() else Figures(trial.baseline_eval_loss, trial.final_eval_loss)
    return Judged(verdict=trial.verdict, message=trial.message, prompts=tuple(trial.prompts), gate_digest=digest,
                  **{**base, "sha256": report.manifest_sha256, "figures": figures}), None


def plan_entry(entry: AdapterSource, resolve: Callable[[AdapterVersion | None], Candidate], current: DesiredSet | None,
               pods: list[str], reports: dict[str, SidecarStatus | None], previous: dict[str, Any] | None) -> EntryPlan:
    """One gated and/or versioned entry. `resolve(version)`: the candidate of a version (None: the entry's source)."""
    target_name = entry.serving.version if entry.serving else None
    canary = entry.serving.canary if entry.serving else None
    pod = trial_pod(current, pods, reports)
    judged, trials = {}, []
    for version in _versions(entry):
        key = version.name if version else ""
        cand = resolve(version)
        if key in ("" if target_name is None else target_name, canary.version if canary else None):
            got, trial = judge(entry, cand, previous, pod, reports)
            trials += [trial] if trial is not None else []
        else:  # listed, not asked for: its recorded verdict and figures are kept (history)
            record = _recorded(previous, key)
            got = Judged(version=key, source=cand.source, verdict=GateVerdict(record["gate"]) if record.get("gate") else None,
                         sha256=cand.sha256 or record.get("sha256"), message=record.get("message") or cand.message,
                         figures=cand.figures, gate_digest=record.get("gateDigest"), state=cand.state)
        judged[key] = got
    target = judged[target_name or ""]
    kept = next((a for a in (current.adapters if current else []) if a.name == entry.name and a.trial is None), None)
    label = f"version {target.version}: " if target.version else ""
    if target.servable and (target.sha256 or entry.gate is None):
        stable = DesiredAdapter(name=entry.name, uri=target_source_uri(entry, target, resolve), manifest_sha256=target.sha256)
        state, message, sends_target = LOADING, None, True
    else:
        sends_target = False
        stable = kept
        keeps = f"; {_served_version(judged, kept) or 'the previous version'} keeps serving" if kept else ""
        if target.state != LOADING:
            state, message = target.state, f"{label}{target.message}{keeps}"
        elif target.verdict == GateVerdict.FAILED:
            state, message = GATED, f"{label}{target.message}{keeps}"
        else:
            state, message = LOADING, f"{label}{target.message}{keeps}"
    canary_out = None
    if canary is not None:
        c = judged[canary.version]
        if c.servable and (c.sha256 or entry.gate is None):
            sent = DesiredAdapter(name=internal_name(entry.name, c.version),
                                  uri=target_source_uri(entry, c, resolve), manifest_sha256=c.sha256)
            canary_out = (c.version, canary.weight, sent)
        elif c.verdict == GateVerdict.FAILED and state == LOADING:
            state, message = GATED, f"canary version {c.version}: {c.message}"
    desired = tuple(a for a in (stable, canary_out[2] if canary_out else None, *trials) if a is not None)
    # The status follows the target on the pods only when it is what the name is sent as; else its state says why.
    uri, sha = (stable.uri, stable.manifest_sha256) if sends_target and state == LOADING else (None, None)
    return EntryPlan(state=state, source=_source(entry, target), uri=uri, sha256=sha, message=message, desired=desired,
                     target=target_name, canary=canary_out, trial_pod=pod if trials else None,
                     judged=tuple(judged.values()), stable_sent=stable)


def target_source_uri(entry: AdapterSource, judged: Judged, resolve: Callable[[AdapterVersion | None], Candidate]) -> str:
    version = next((v for v in entry.versions or [] if v.name == judged.version), None)
    return str(resolve(version).uri).rstrip("/")


def _source(entry: AdapterSource, target: Judged) -> str:
    return f"{target.version}: {target.source}" if target.version else target.source


def _served_version(judged: dict[str, Judged], kept: DesiredAdapter | None) -> str | None:
    if kept is None:
        return None
    for j in judged.values():
        if j.version and j.sha256 and j.sha256 == kept.manifest_sha256:
            return f"version {j.version}"
    return None
