"""Gated promotion and versioned adapters of a ModelDeployment adapter entry (docs/promotion.md). Pure: pydantic
and the gate decision, shared by the operator (plan.promotion) and the adapter-sync sidecar (smoke prompts).

An entry either names one source (fineTuneJobRef or uri, as before) or lists `versions` and says which one is
served (`serving.version`) and, optionally, which one canaries beside it (`serving.canary`):

    - name: support-bot
      gate: {minImprovement: "0.05", smokePrompts: [{prompt: "Who are you?", expect: "support"}]}
      versions:
        - {name: v1, fineTuneJobRef: {name: support-a}}
        - {name: v2, fineTuneJobRef: {name: support-b}}
      serving: {version: v1, canary: {version: v2, weight: 20}}

Names vLLM serves (internal_name): the served version under the entry's own name (what a direct vLLM client asks
for), the canary under ``<name>--<version>`` (the gateway sends it `weight` % of the requests for ``<name>``), and
a version whose gate runs smoke prompts under ``<name>--<version>--gate`` on one replica only (trial_name): never
routed, unloaded once decided.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator, model_validator

from .common import ADAPTER_URI, KubeModel, check_adapter_uri, decimal

VERSION_NAME = r"^[a-z0-9]+(-[a-z0-9]+)*$"  # a DNS label without "--" (that separates it in internal names)
MAX_VERSIONS = 16
MAX_SMOKE_PROMPTS = 16
MAX_ANSWER = 256  # characters of an answer kept in a report


class FineTuneJobRef(KubeModel):
    """A FineTuneJob in the same namespace."""

    name: str = Field(description="Name of the FineTuneJob.", min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class SmokePrompt(KubeModel):
    """One prompt the adapter must answer well before it is routable (greedy decoding, on one replica)."""

    prompt: str = Field(description="The user message sent (chat completion, temperature 0).", min_length=1, max_length=4096)
    expect: str | None = Field(default=None, description="A regular expression the answer must match (re.search).",
                               min_length=1, max_length=1024)
    must_not_contain: str | None = Field(default=None, description="Text the answer must not contain (case-insensitive).",
                                         min_length=1, max_length=1024)
    max_tokens: int = Field(default=32, description="Tokens generated at most.", ge=1, le=1024)

    @field_validator("expect")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_check(self) -> SmokePrompt:
        if self.expect is None and self.must_not_contain is None:
            raise ValueError("set expect (a regular expression) and/or mustNotContain")
        return self


class MinMetric(KubeModel):
    """A task metric of the FineTuneJob's evaluation (status.evaluation.task.metrics) the final model must reach."""

    name: str = Field(description="Metric name, e.g. exact_match, rouge_l.", min_length=1, max_length=32,
                      pattern=r"^[a-z0-9_]+$")
    value: str = decimal("Smallest final value accepted, e.g. \"0.8\".")


class Gate(KubeModel):
    """What a version must pass before it is routable. Set at least one check; all set must pass."""

    min_improvement: str | None = decimal(
        "The final eval loss must be below the baseline's (the base model before training) by at least this, "
        "e.g. \"0.05\"; \"0\": just better.")
    max_eval_loss: str | None = decimal("The final eval loss must not exceed this, e.g. \"1.5\".")
    min_metrics: list[MinMetric] | None = Field(default=None, max_length=16,
                                                description="Task metrics the final model must reach.")
    smoke_prompts: list[SmokePrompt] | None = Field(
        default=None, max_length=MAX_SMOKE_PROMPTS,
        description="Prompts run against the adapter on one replica, loaded under a name nothing routes to, before "
                    "it is routable.")

    @model_validator(mode="after")
    def _something(self) -> Gate:
        if not (self.min_improvement or self.max_eval_loss or self.min_metrics or self.smoke_prompts):
            raise ValueError("gate: set at least one of minImprovement, maxEvalLoss, minMetrics, smokePrompts")
        return self

    @property
    def needs_eval(self) -> bool:
        return bool(self.min_improvement or self.max_eval_loss or self.min_metrics)

    def digest(self) -> str:
        """Short hash of the gate: a verdict holds for one (adapter sha, gate)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


class AdapterVersion(KubeModel):
    """One published adapter a served name can point at."""

    name: str = Field(description="Version name, e.g. v2 (lowercase, digits, single '-').", min_length=1, max_length=20,
                      pattern=VERSION_NAME)
    fine_tune_job_ref: FineTuneJobRef | None = Field(
        default=None, description="The FineTuneJob (same namespace) whose published adapter this version is.")
    uri: str | None = Field(default=None, description="Folder holding a published adapter with its manifest.json "
                            "(as spec.adapters[].uri).", max_length=1024, pattern=ADAPTER_URI)

    @field_validator("uri", mode="before")
    @classmethod
    def _adapter_uri(cls, value: str | None) -> str | None:
        return check_adapter_uri(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> AdapterVersion:
        if (self.fine_tune_job_ref is None) == (self.uri is None):
            raise ValueError(f"version {self.name!r}: set exactly one of fineTuneJobRef or uri")
        return self

    @property
    def source(self) -> str:
        return f"fineTuneJob/{self.fine_tune_job_ref.name}" if self.fine_tune_job_ref else str(self.uri)


class Canary(KubeModel):
    """A second version served beside the stable one to a share of the gateway's requests."""

    version: str = Field(description="The canary version (one of versions).", max_length=20, pattern=VERSION_NAME)
    weight: int = Field(description="Percent of the gateway's requests for the name sent to it.", ge=1, le=99)


class ServingPolicy(KubeModel):
    """Which versions answer the served name."""

    version: str = Field(description="The stable version: vLLM serves it under the entry's name. Pointing back at "
                                     "an earlier version is a rollback (hot-load, no pod restart).",
                         max_length=20, pattern=VERSION_NAME)
    canary: Canary | None = Field(default=None, description="A version the gateway sends a share of the requests to.")


def internal_name(name: str, version: str) -> str:
    """vLLM's name of a canary version."""
    return f"{name}--{version}"


def trial_name(name: str, version: str | None) -> str:
    """vLLM's name of a version under gate (smoke prompts), loaded on one replica, never routed."""
    return f"{name}--{version}--gate" if version else f"{name}--gate"


def check_entry(name: str, source_set: bool, versions: list[AdapterVersion] | None, serving: ServingPolicy | None) -> None:
    """Cross-field rules of one spec.adapters entry (ValueError naming the field)."""
    if versions is None and serving is None:
        if not source_set:
            raise ValueError(f"adapter {name!r}: set exactly one of fineTuneJobRef, uri or versions")
        return
    if source_set:
        raise ValueError(f"adapter {name!r}: versions replace fineTuneJobRef/uri: set only versions and serving")
    if not versions or serving is None:
        raise ValueError(f"adapter {name!r}: versions and serving go together (serving.version names the one served)")
    names = [v.name for v in versions]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"adapter {name!r}: versions: duplicate name(s) {', '.join(dupes)}")
    if serving.version not in names:
        raise ValueError(f"adapter {name!r}: serving.version {serving.version!r} is not one of versions ({', '.join(names)})")
    if serving.canary is not None:
        if serving.canary.version not in names:
            raise ValueError(f"adapter {name!r}: serving.canary.version {serving.canary.version!r} is not one of "
                             f"versions ({', '.join(names)})")
        if serving.canary.version == serving.version:
            raise ValueError(f"adapter {name!r}: serving.canary.version must differ from serving.version")
    longest = max(len(trial_name(name, v)) for v in names)
    if longest > 63:
        raise ValueError(f"adapter {name!r}: name + version too long: vLLM names {name}--<version>--gate must fit 63 "
                         f"characters ({longest})")


def check_names(entries: list[Any]) -> None:
    """No entry's name may be another entry's internal (canary or gate) name."""
    taken = {e.name for e in entries}
    for e in entries:
        for version in [v.name for v in e.versions or []] or [None]:
            for internal in {trial_name(e.name, version), *([internal_name(e.name, version)] if version else [])}:
                if internal in taken:
                    raise ValueError(f"adapters: {internal!r} is both an adapter name and the vLLM name of "
                                     f"adapter {e.name!r}'s version {version or '(gate)'}: rename one")


# -------------------------------------------------------------------------------------- the decision


class GateVerdict(StrEnum):
    PENDING = "Pending"  # not decided yet (smoke prompts running, figures not known yet)
    PASSED = "Passed"
    FAILED = "Failed"


@dataclass(frozen=True)
class Figures:
    """What a gate reads of an adapter's evaluation (FineTuneJob status.evaluation or manifest.json's)."""

    baseline_eval_loss: float | None = None
    final_eval_loss: float | None = None
    metrics: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # name -> (baseline, final)

    @classmethod
    def of(cls, evaluation: dict[str, Any] | None) -> Figures:
        """From status.evaluation / manifest.json's evaluation: {baseline: {evalLoss}, final: {evalLoss},
        task: {metrics: [{name, baseline, final}]}} (any part may be missing)."""
        ev = evaluation or {}
        loss = {k: (ev.get(k) or {}).get("evalLoss", (ev.get(k) or {}).get("eval_loss")) for k in ("baseline", "final")}
        metrics = {m["name"]: (m.get("baseline"), m.get("final")) for m in ((ev.get("task") or {}).get("metrics") or [])
                   if isinstance(m, dict) and m.get("name")}
        return cls(loss["baseline"], loss["final"], metrics)

    def known(self) -> bool:
        return self.final_eval_loss is not None or bool(self.metrics)


def eval_verdict(gate: Gate, figures: Figures) -> tuple[GateVerdict, str]:
    """The eval part of a gate (minImprovement, maxEvalLoss, minMetrics): (PASSED or FAILED, the numbers)."""
    problems, notes = [], []
    final, base = figures.final_eval_loss, figures.baseline_eval_loss
    if gate.min_improvement is not None:
        if final is None or base is None:
            problems.append("minImprovement: no baseline and final eval loss reported (was evaluation on?)")
        else:
            gain = base - final
            line = f"eval loss {base:.4g} -> {final:.4g} (improvement {gain:.4g}, needs >= {gate.min_improvement})"
            (notes if Decimal(repr(gain)) >= Decimal(gate.min_improvement) and gain >= 0 else problems).append(line)
    if gate.max_eval_loss is not None:
        if final is None:
            problems.append("maxEvalLoss: no final eval loss reported")
        else:
            line = f"final eval loss {final:.4g} (max {gate.max_eval_loss})"
            (notes if Decimal(repr(final)) <= Decimal(gate.max_eval_loss) else problems).append(line)
    for want in gate.min_metrics or []:
        got = figures.metrics.get(want.name, (None, None))[1]
        if got is None:
            problems.append(f"{want.name}: not reported")
        else:
            (notes if Decimal(repr(got)) >= Decimal(want.value) else problems).append(f"{want.name} {got:.4g} (min {want.value})")
    if problems:
        return GateVerdict.FAILED, "gate failed: " + "; ".join(problems + notes)
    return GateVerdict.PASSED, "gate passed: " + "; ".join(notes) if notes else "gate passed"


def prompt_verdict(prompt: SmokePrompt, answer: str) -> str | None:
    """None when the answer passes, else why not."""
    if prompt.expect is not None and re.search(prompt.expect, answer) is None:
        return f"answer does not match {prompt.expect!r}"
    if prompt.must_not_contain is not None and prompt.must_not_contain.lower() in answer.lower():
        return f"answer contains {prompt.must_not_contain!r}"
    return None


# ------------------------------------------------------------------------ sidecar wire (trial) and status


class Trial(KubeModel):
    """In the desired set: run this adapter's gate on one pod (the one named), under its trial name."""

    pod: str = Field(description="The only pod whose sidecar loads it.", max_length=253)
    gate: Gate = Field(description="The gate to run: its eval part on manifest.json's figures, then the smoke prompts.")


class PromptResult(KubeModel):
    prompt: str = Field(description="The prompt (cut).", max_length=MAX_ANSWER)
    answer: str | None = Field(default=None, description="The adapter's answer (cut).", max_length=MAX_ANSWER)
    passed: bool = Field(description="Whether it passed.")
    message: str | None = Field(default=None, description="Why not.", max_length=1024)


class TrialReport(KubeModel):
    """In a sidecar's report of a trial entry: the verdict (Pending while it runs)."""

    verdict: GateVerdict = Field(description="Pending, Passed or Failed.")
    gate_digest: str = Field(description="Gate.digest() of the gate run.", max_length=12)
    message: str | None = Field(default=None, description="The numbers, or why it failed.", max_length=4096)
    prompts: list[PromptResult] = Field(default_factory=list, max_length=MAX_SMOKE_PROMPTS, description="Per prompt.")
    baseline_eval_loss: float | None = Field(default=None, description="manifest.json's baseline eval loss.")
    final_eval_loss: float | None = Field(default=None, description="manifest.json's final eval loss.")


class VersionStatus(KubeModel):
    """One version of a served name, with its gate verdict and eval figures (kept while it is listed)."""

    name: str = Field(description="Version name ('' for an entry without versions).", max_length=20)
    source: str = Field(description="fineTuneJob/<name> or the URI.", max_length=1100)
    sha256: str | None = Field(default=None, description="manifest.json sha256 it is pinned to.", max_length=64)
    gate: GateVerdict | None = Field(default=None, description="Pending, Passed or Failed; empty: no gate.")
    gate_digest: str | None = Field(default=None, description="Which gate the verdict is for.", max_length=12)
    message: str | None = Field(default=None, description="Gate numbers or why it is not servable.", max_length=4096)
    baseline_eval_loss: float | None = Field(default=None, description="Eval loss of the base model.")
    final_eval_loss: float | None = Field(default=None, description="Eval loss of this version.")
    prompts: list[PromptResult] | None = Field(default=None, max_length=MAX_SMOKE_PROMPTS, description="Smoke prompts.")
    served_since: str | None = Field(default=None, description="RFC 3339 time it last began serving the name on "
                                     "every replica (kept after it stops: the history of served versions).", max_length=32)


class CanaryStatus(KubeModel):
    version: str = Field(description="Canary version.", max_length=20)
    weight: int = Field(description="Percent of the gateway's requests.", ge=0, le=100)
    served_name: str = Field(description="vLLM's name of it.", max_length=63)
    ready: bool = Field(description="Loaded on every replica: the gateway routes its share only then.")
    replicas_loaded: str | None = Field(default=None, description="e.g. 1/2.", max_length=16)


class PromotionStatus(KubeModel):
    """Which version answers the name now, the canary, and every version's gate."""

    target: str | None = Field(default=None, description="spec serving.version.", max_length=20)
    serving: str | None = Field(default=None, description="The version vLLM serves under the name on every replica "
                                "now (may differ from target while it loads, or when target is Gated).", max_length=20)
    canary: CanaryStatus | None = Field(default=None, description="The canary, if any.")
    trial_pod: str | None = Field(default=None, description="The pod running a gate's smoke prompts now.", max_length=253)
    versions: list[VersionStatus] = Field(default_factory=list, max_length=MAX_VERSIONS, description="Per version.")
