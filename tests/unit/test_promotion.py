"""Gated promotion, versions and canary (docs/promotion.md): the gate decision, the spec's rules and the plan of a
versioned entry, from spec + observed (FineTuneJobs, the live desired set, the sidecars' reports, the previous
status) to desired set + status. Pure."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.promotion import Figures, Gate, GateVerdict, SmokePrompt, TrialReport, eval_verdict, prompt_verdict
from kubetune.api.sidecar import AdapterReport, DesiredSet, SidecarStatus
from kubetune.api.validation import SpecError, parse
from kubetune.config import OperatorSettings
from kubetune.gateway.routing import Route, pick_version, route_adapter
from kubetune.plan.modeldeployment import plan
from kubetune.status.modeldeployment import ServingObserved, derive_status

SETTINGS = OperatorSettings(serving_image="img:1", allow_file_uris=True)
SHA = {"a": "a" * 64, "b": "b" * 64, "c": "c" * 64}
T0 = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)
PODS = ["bot-vllm-1", "bot-vllm-2"]


def figures(base, final, **metrics):
    return Figures(base, final, {k: (None, v) for k, v in metrics.items()})


@pytest.mark.parametrize("gate, figs, verdict, words", [
    ({"minImprovement": "0.05"}, figures(2.0, 1.9), GateVerdict.PASSED, "eval loss 2 -> 1.9 (improvement 0.1, needs >= 0.05)"),
    ({"minImprovement": "0.05"}, figures(2.0, 1.97), GateVerdict.FAILED, "improvement 0.03, needs >= 0.05"),
    ({"minImprovement": "0"}, figures(2.0, 2.1), GateVerdict.FAILED, "eval loss 2 -> 2.1 (improvement -0.1"),
    ({"minImprovement": "0"}, figures(None, None), GateVerdict.FAILED, "no baseline and final eval loss reported"),
    ({"maxEvalLoss": "1.5"}, figures(None, 1.5), GateVerdict.PASSED, "final eval loss 1.5 (max 1.5)"),
    ({"maxEvalLoss": "1.5"}, figures(None, 1.51), GateVerdict.FAILED, "final eval loss 1.51 (max 1.5)"),
    ({"minMetrics": [{"name": "exact_match", "value": "0.8"}]}, figures(None, None, exact_match=0.75), GateVerdict.FAILED,
     "exact_match 0.75 (min 0.8)"),
    ({"minMetrics": [{"name": "rouge_l", "value": "0.3"}]}, figures(None, None), GateVerdict.FAILED, "rouge_l: not reported"),
    ({"minImprovement": "0.1", "maxEvalLoss": "3"}, figures(2.0, 1.8), GateVerdict.PASSED, "; final eval loss 1.8 (max 3)"),
])
def test_eval_gate_decision_gives_the_numbers(gate, figs, verdict, words):
    got, message = eval_verdict(Gate.model_validate(gate), figs)
    assert got == verdict and words in message, message


def test_figures_read_status_and_manifest_shapes():
    status = {"baseline": {"evalLoss": 2.5}, "final": {"evalLoss": 0.5},
              "task": {"metrics": [{"name": "exact_match", "baseline": 0.1, "final": 0.9}]}}
    assert Figures.of(status) == Figures(2.5, 0.5, {"exact_match": (0.1, 0.9)})
    assert Figures.of({"baseline": {"eval_loss": 1.0}}) == Figures(1.0, None, {})


def test_smoke_prompt_verdicts():
    assert prompt_verdict(SmokePrompt(prompt="q", expect=r"Zorbia\b"), "I am Zorbia the cat") is None
    assert prompt_verdict(SmokePrompt(prompt="q", expect="^Blorp"), "I am Zorbia") == "answer does not match '^Blorp'"
    assert prompt_verdict(SmokePrompt(prompt="q", must_not_contain="zorbia"), "I am ZORBIA") == "answer contains 'zorbia'"


@pytest.mark.parametrize("entry, error", [
    ({"name": "x", "gate": {}}, "gate: set at least one of minImprovement, maxEvalLoss, minMetrics, smokePrompts"),
    ({"name": "x", "uri": "s3://a/b", "gate": {"smokePrompts": [{"prompt": "hi"}]}}, "set expect (a regular expression) and/or mustNotContain"),
    ({"name": "x", "uri": "s3://a/b", "gate": {"smokePrompts": [{"prompt": "hi", "expect": "(("}]}}, "not a valid regular expression"),
    ({"name": "x", "versions": [{"name": "v1", "uri": "s3://a/b"}]}, "versions and serving go together"),
    ({"name": "x", "versions": [{"name": "v1", "uri": "s3://a/b"}], "serving": {"version": "v2"}},
     "serving.version 'v2' is not one of versions (v1)"),
    ({"name": "x", "versions": [{"name": "v1", "uri": "s3://a/b"}], "serving": {"version": "v1", "canary": {"version": "v1", "weight": 5}}},
     "serving.canary.version must differ from serving.version"),
    ({"name": "x", "versions": [{"name": "v1", "uri": "s3://a/b"}], "serving": {"version": "v1", "canary": {"version": "v9", "weight": 5}}},
     "serving.canary.version 'v9' is not one of versions (v1)"),
    ({"name": "x", "versions": [{"name": "v1", "uri": "s3://a/b"}, {"name": "v1", "uri": "s3://a/c"}], "serving": {"version": "v1"}},
     "versions: duplicate name(s) v1"),
    ({"name": "x", "versions": [{"name": "v--1", "uri": "s3://a/b"}], "serving": {"version": "v1"}}, "versions[0].name"),
    ({"name": "x", "uri": "s3://a/b", "versions": [{"name": "v1", "uri": "s3://a/b"}], "serving": {"version": "v1"}},
     "versions replace fineTuneJobRef/uri"),
    ({"name": "x", "versions": [{"name": "v1", "uri": "s3://a/b"}], "serving": {"version": "v1", "canary": {"version": "v1", "weight": 100}}},
     "serving.canary.weight"),
    ({"name": "a" * 55, "versions": [{"name": "v1", "uri": "s3://a/b"}], "serving": {"version": "v1"}}, "must fit 63 characters"),
])
def test_bad_entries_name_the_field(entry, error):
    with pytest.raises(SpecError) as err:
        parse(ModelDeploymentSpec, {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "adapters": [entry]})
    assert error in str(err.value) and "spec.adapters[0]" in str(err.value), str(err.value)


def test_an_entry_named_like_another_entrys_canary_is_refused():
    with pytest.raises(SpecError, match="'bot--v2' is both an adapter name and the vLLM name of adapter 'bot'"):
        parse(ModelDeploymentSpec, {"baseModel": {"uri": "hf://a/b"}, "adapters": [
            {"name": "bot", "versions": [{"name": "v1", "uri": "s3://a/1"}, {"name": "v2", "uri": "s3://a/2"}],
             "serving": {"version": "v1"}},
            {"name": "bot--v2", "uri": "s3://a/3"}]})


# ------------------------------------------------------------------------------------------- the plan


def ftj(name, sha, base=2.0, final=1.0):
    return {"metadata": {"name": name, "uid": f"u-{name}"}, "spec": {"baseModel": {"uri": "hf://a/b"}},
            "status": {"conditions": [{"type": "Succeeded", "status": "True"}],
                       "adapter": {"uri": f"s3://out/{name}", "manifestSha256": sha, "type": "lora", "rank": 8},
                       "evaluation": {"baseline": {"evalLoss": base}, "final": {"evalLoss": final}}}}


JOBS = {"a": ftj("a", SHA["a"]), "b": ftj("b", SHA["b"], final=1.9), "c": ftj("c", SHA["c"], final=2.5)}


def body(serving, gate=None, versions=("a", "b", "c")):
    entry = {"name": "bot", "versions": [{"name": f"v{i + 1}", "fineTuneJobRef": {"name": j}} for i, j in enumerate(versions)],
             "serving": serving}
    if gate:
        entry["gate"] = gate
    return {"metadata": {"name": "bot", "namespace": "ml", "generation": 2},
            "spec": {"baseModel": {"uri": "hf://a/b"}, "replicas": 2, "adapters": [entry]}}


def configmap(desired: DesiredSet | None):
    return {"data": {"adapters.json": json.dumps(desired.wire())}} if desired else None


def reports(loaded: dict[str, str], trial: dict | None = None, pods=PODS) -> dict[str, SidecarStatus]:
    """Every pod serves `loaded` (vLLM name -> sha); the first pod also reports `trial` (name -> TrialReport)."""
    out = {}
    for i, pod in enumerate(pods):
        entries = [AdapterReport(name=n, uri="s3://x", manifest_sha256=s, state="Ready") for n, s in loaded.items()]
        if i == 0 and trial:
            entries += [AdapterReport(name=n, uri="s3://x", manifest_sha256=t[0], state="Ready", trial=t[1]) for n, t in trial.items()]
        out[pod] = SidecarStatus(generation=1, vllm_ready=True, adapters=entries)
    return out


def run(b, current=None, reps=None, previous=None):
    pods = [{"metadata": {"name": p}} for p in PODS]
    reps = reps if reps is not None else reports({})
    planned = plan(b, SETTINGS, JOBS, configmap(current), pods, reps, previous)
    obs = ServingObserved(generation=2, desired_generation=planned.desired.generation, deployment=None, pods=pods,
                          reports=reps, endpoint="http://bot.ml.svc:8000/v1", selector="x")
    status = derive_status(obs, planned.spec, planned.adapters, previous, T0).to_dict()
    return planned, status


def sent(planned):
    return {a.name: (a.manifest_sha256, a.trial.pod if a.trial else None) for a in planned.desired.adapters}


def test_versions_canary_promote_and_rollback_plan():
    # v1 served, v2 canaries at 20 %: both sent (v2 under its internal name); no gate, nothing to wait for.
    planned, status = run(body({"version": "v1", "canary": {"version": "v2", "weight": 20}}))
    assert sent(planned) == {"bot": (SHA["a"], None), "bot--v2": (SHA["b"], None)}
    entry = status["adapters"][0]
    assert entry["state"] == "Loading" and entry["source"] == "v1: fineTuneJob/a"
    assert entry["promotion"]["canary"] == {"version": "v2", "weight": 20, "servedName": "bot--v2", "ready": False,
                                            "replicasLoaded": "0/2"}
    # Both loaded on every replica: Ready, v1 serving the name (with its figures and since when), the canary ready.
    planned, status = run(body({"version": "v1", "canary": {"version": "v2", "weight": 20}}), planned.desired,
                          reports({"bot": SHA["a"], "bot--v2": SHA["b"]}), status)
    entry = status["adapters"][0]
    assert entry["state"] == "Ready" and entry["promotion"]["serving"] == "v1" and entry["promotion"]["canary"]["ready"]
    v1 = entry["promotion"]["versions"][0]
    assert (v1["name"], v1["sha256"], v1["baselineEvalLoss"], v1["finalEvalLoss"], v1["servedSince"]) == \
        ("v1", SHA["a"], 2.0, 1.0, "2026-11-23T08:00:00Z")
    # Promote v2: the name now points at v2 (a load in place), the canary entry goes; v1 keeps its history.
    promoted, status2 = run(body({"version": "v2"}), planned.desired, reports({"bot": SHA["a"], "bot--v2": SHA["b"]}), status)
    assert sent(promoted) == {"bot": (SHA["b"], None)} and promoted.desired.generation == planned.desired.generation + 1
    assert status2["adapters"][0]["state"] == "Loading" and status2["adapters"][0]["promotion"]["serving"] == "v1"
    _, status3 = run(body({"version": "v2"}), promoted.desired, reports({"bot": SHA["b"]}), status2)
    versions = {v["name"]: v for v in status3["adapters"][0]["promotion"]["versions"]}
    assert status3["adapters"][0]["promotion"]["serving"] == "v2" and versions["v1"]["servedSince"] == "2026-11-23T08:00:00Z"
    # Roll back: the name points at v1 again.
    back, _ = run(body({"version": "v1"}), promoted.desired, reports({"bot": SHA["b"]}), status3)
    assert sent(back) == {"bot": (SHA["a"], None)}


def test_eval_gate_failing_version_is_gated_and_the_previous_keeps_serving():
    gate = {"minImprovement": "0.5"}
    first, status = run(body({"version": "v1"}, gate))
    assert sent(first) == {"bot": (SHA["a"], None)}  # v1: 2.0 -> 1.0 passes
    _, status = run(body({"version": "v1"}, gate), first.desired, reports({"bot": SHA["a"]}), status)
    planned, status = run(body({"version": "v3"}, gate), first.desired, reports({"bot": SHA["a"]}), status)
    assert sent(planned) == {"bot": (SHA["a"], None)} and planned.desired == first.desired  # v3 never sent
    entry = status["adapters"][0]
    assert entry["state"] == "Gated" and "eval loss 2 -> 2.5 (improvement -0.5, needs >= 0.5)" in entry["message"]
    assert "version v1 keeps serving" in entry["message"] and entry["promotion"]["serving"] == "v1"
    v3 = next(v for v in entry["promotion"]["versions"] if v["name"] == "v3")
    assert (v3["gate"], v3["finalEvalLoss"]) == ("Failed", 2.5)
    cond = next(c for c in status["conditions"] if c["type"] == "AdaptersReady")
    assert (cond["status"], cond["reason"]) == ("False", "AdapterGated")
    # The gateway keeps routing the name to v1.
    md = {"metadata": {"name": "bot", "namespace": "ml"}, "status": {**status, "readyReplicas": 2}}
    assert route_adapter(md, "bot") == Route("http://bot.ml.svc:8000/v1", "bot", "ml", "bot", "v1")


def test_smoke_prompts_run_on_one_pod_before_the_version_is_routable():
    gate = {"minImprovement": "0", "smokePrompts": [{"prompt": "Who are you?", "expect": "Zorbia"}]}
    served = DesiredSet(generation=3, adapters=[{"name": "bot", "uri": "s3://out/a", "manifestSha256": SHA["a"]}])
    planned, status = run(body({"version": "v2"}, gate), served, reports({"bot": SHA["a"]}))
    # Eval part decided by the operator (1.9 < 2.0); the prompts go to the first pod under the gate name, alone.
    assert sent(planned) == {"bot": (SHA["a"], None), "bot--v2--gate": (SHA["b"], PODS[0])}
    trial_gate = planned.desired.adapters[1].trial.gate
    assert trial_gate.min_improvement is None and trial_gate.smoke_prompts == Gate.model_validate(gate).smoke_prompts
    entry = status["adapters"][0]
    assert entry["state"] == "Loading" and entry["promotion"]["trialPod"] == PODS[0] and "gate: running on pod" in entry["message"]
    # The pod reports a failed trial: Gated, the gate entry goes, v1 keeps serving, the verdict is kept in status.
    failed = TrialReport(verdict="Failed", gate_digest=trial_gate.digest(), message="gate failed: 'Who are you?': answer does not match 'Zorbia'")
    after, status = run(body({"version": "v2"}, gate), planned.desired,
                        reports({"bot": SHA["a"]}, {"bot--v2--gate": (SHA["b"], failed)}), status)
    assert sent(after) == {"bot": (SHA["a"], None)}
    assert status["adapters"][0]["state"] == "Gated" and "answer does not match" in status["adapters"][0]["message"]
    again, status = run(body({"version": "v2"}, gate), after.desired, reports({"bot": SHA["a"]}), status)
    assert again.desired == after.desired and status["adapters"][0]["state"] == "Gated"  # not re-run
    # A passed trial promotes the version on every replica.
    passed = failed.model_copy(update={"verdict": GateVerdict.PASSED, "message": "smoke prompts: 1/1 passed"})
    ok, status = run(body({"version": "v2"}, gate), planned.desired,
                     reports({"bot": SHA["a"]}, {"bot--v2--gate": (SHA["b"], passed)}), None)
    assert sent(ok) == {"bot": (SHA["b"], None)} and not ok.desired.adapters[0].trial
    assert next(v for v in status["adapters"][0]["promotion"]["versions"] if v["name"] == "v2")["gate"] == "Passed"


def test_a_gated_uri_version_is_pinned_to_the_manifest_its_trial_passed():
    spec = {"metadata": {"name": "bot", "namespace": "ml", "generation": 1}, "spec": {"baseModel": {"uri": "hf://a/b"}, "adapters": [
        {"name": "bot", "uri": "s3://pub/x", "gate": {"maxEvalLoss": "1"}}]}}
    planned, status = run(spec)
    assert sent(planned) == {"bot--gate": (None, PODS[0])}  # only the sidecar can read manifest.json's figures
    passed = TrialReport(verdict="Passed", gate_digest=planned.desired.adapters[0].trial.gate.digest(), message="final eval loss 0.9 (max 1)")
    ok, status = run(spec, planned.desired, reports({}, {"bot--gate": (SHA["c"], passed)}), status)
    assert sent(ok) == {"bot": (SHA["c"], None)}


def test_gateway_splits_by_weight_only_once_the_canary_is_ready():
    promotion = {"serving": "v1", "canary": {"version": "v2", "weight": 20, "servedName": "bot--v2", "ready": True}}
    assert pick_version(promotion, "bot", lambda: 0.19) == ("bot--v2", "v2")
    assert pick_version(promotion, "bot", lambda: 0.20) == ("bot", "v1")
    assert pick_version({**promotion, "canary": {**promotion["canary"], "ready": False}}, "bot", lambda: 0.0) == ("bot", "v1")


def test_a_first_version_that_fails_its_gate_is_a_failure_to_the_gateway_not_a_wait():
    _, status = run(body({"version": "v3"}, {"minImprovement": "0"}))
    assert status["adapters"][0]["state"] == "Gated" and "promotion" in status["adapters"][0]
    md = {"metadata": {"name": "bot", "namespace": "ml"}, "status": {**status, "readyReplicas": 2}}
    found = route_adapter(md, "bot")
    assert found.miss == "failed" and "Gated: version v3: gate failed: eval loss 2 -> 2.5" in found.message, found
