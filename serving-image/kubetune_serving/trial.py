"""A gate's trial on this pod (kubetune.api.promotion, docs/promotion.md): the adapter was loaded under its trial
name (``<name>--<version>--gate``, which nothing routes to); check the gate's eval part on manifest.json's figures,
then send each smoke prompt through vLLM's chat API (greedy) and judge the answer. The verdict goes into this
pod's /status (AdapterReport.trial); the operator promotes the version, or leaves it Gated."""

from __future__ import annotations

from kubetune.api.manifest import AdapterManifest
from kubetune.api.promotion import (MAX_ANSWER, Figures, GateVerdict, PromptResult, Trial, TrialReport, eval_verdict,
                                    prompt_verdict)

from .vllm_client import VLLMClient, VLLMError


def pending(trial: Trial, message: str = "queued") -> TrialReport:
    return TrialReport(verdict=GateVerdict.PENDING, gate_digest=trial.gate.digest(), message=message)


def manifest_figures(manifest: AdapterManifest) -> Figures:
    return Figures.of({k: v.to_dict() for k, v in manifest.evaluation.items()})


def eval_failed(trial: Trial, manifest: AdapterManifest) -> TrialReport | None:
    """The failed verdict of the gate's eval part on manifest.json's figures, checked before the adapter is loaded
    into vLLM at all; None when it passes (or the gate has no eval part)."""
    if not trial.gate.needs_eval:
        return None
    figures = manifest_figures(manifest)
    verdict, message = eval_verdict(trial.gate, figures)
    return _report(verdict, trial, message, figures) if verdict == GateVerdict.FAILED else None


def _report(verdict: GateVerdict, trial: Trial, message: str | None, figures: Figures,
            prompts: list[PromptResult] = ()) -> TrialReport:  # type: ignore[assignment]
    return TrialReport(verdict=verdict, gate_digest=trial.gate.digest(), message=(message or "")[:4096] or None,
                       prompts=list(prompts), baseline_eval_loss=figures.baseline_eval_loss,
                       final_eval_loss=figures.final_eval_loss)


async def run_trial(vllm: VLLMClient, name: str, trial: Trial, manifest: AdapterManifest) -> TrialReport:
    """The verdict of `trial.gate` for the adapter vLLM serves as `name` (published with `manifest`; its eval part
    passed eval_failed)."""
    gate, figures = trial.gate, manifest_figures(manifest)
    notes = [eval_verdict(gate, figures)[1]] if gate.needs_eval else []
    results, failed = [], 0
    for prompt in gate.smoke_prompts or []:
        try:
            answer = await vllm.chat(name, prompt.prompt, prompt.max_tokens)
        except VLLMError as exc:
            return _report(GateVerdict.PENDING, trial, f"vLLM did not answer: {exc}", figures)
        why = prompt_verdict(prompt, answer)
        failed += why is not None
        results.append(PromptResult(prompt=prompt.prompt[:MAX_ANSWER], answer=answer[:MAX_ANSWER], passed=why is None,
                                    message=why))
    if results:
        notes.append(f"smoke prompts: {len(results) - failed}/{len(results)} passed")
    if failed:
        bad = "; ".join(f"{r.prompt!r}: {r.message} (got {r.answer!r})" for r in results if not r.passed)
        return _report(GateVerdict.FAILED, trial, "gate failed: " + "; ".join(notes) + "; " + bad, figures, results)
    return _report(GateVerdict.PASSED, trial, "; ".join(notes) or "gate passed", figures, results)
