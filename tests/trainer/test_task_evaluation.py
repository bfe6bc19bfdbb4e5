"""spec.evaluation on a real training run (tiny model, CPU, file:// storage), shared by every test of this module.

The task: each of 8 prompts has a fixed label word (good/bad), which the tiny model learns in 40 steps. The
regression set is 4 general prompts whose references are what the base model answers before training (computed
here with the trainer's own generate, same settings), so its score is 1 on the base model and drops once the model
has learned something else: a regression the trainer must report. The judge metric goes through the official
openai client to a local server that plays an OpenAI-compatible endpoint (tests/trainer/test_task_metrics.py).
The operator's part is its pure status derivation, fed with the trainer's real termination message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kubetune.api import exit_codes
from kubetune.api.constants import ENV_PVC_ROOT, ENV_TERMINATION_LOG
from kubetune.api.evaluation import EvalSample, EvalSummary, EvaluationSpec
from kubetune.api.finetunejob import Evaluation
from kubetune.status.finetunejob import Observed, derive_status
from kubetune_trainer.main import execute
from tests.fixtures.tiny_data import write_jsonl
from tests.trainer.helpers import make_config, manifest_problems, progress_lines
from tests.trainer.test_task_metrics import _JudgeEndpoint

pytestmark = pytest.mark.slow

LABELED = [(f"Is the {thing} {adj}?", label) for thing, adj, label in [
    ("cat", "fast", "good"), ("dog", "slow", "bad"), ("bird", "big", "good"), ("fish", "small", "bad"),
    ("tree", "green", "good"), ("sun", "white", "bad"), ("moon", "blue", "good"), ("star", "red", "bad")]]
GENERAL = ["Tell me about the sea.", "Please say hello.", "What is a river?", "Who likes the moon?"]
METRICS = ["exact_match", "contains", "accuracy", "macro_f1", "bleu", "rouge_l", "judge"]
EVALUATION = {"metrics": METRICS, "labelPattern": r"\b(good|bad)\b", "maxNewTokens": 8, "batchSize": 4,
              "maxRegression": "0.05", "judge": {"model": "judge", "rubric": "The answer names the right label."}}


def _base_answers(model_dir: Path, prompts: list[str]) -> list[str]:
    """The base model's answers, generated the way the trainer generates them (kubetune_trainer.evaluate.generate)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.evaluate import generate
    from kubetune_trainer.prompt_sets import Item

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    spec = EvaluationSpec.model_validate({k: v for k, v in EVALUATION.items() if k not in ("judge", "metrics")})
    return generate(model, AutoTokenizer.from_pretrained(model_dir), [Item(p, None) for p in prompts], spec, chat=True,
                    seed=42, max_length=128, deadline=float("inf"))


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("task-eval")
    endpoint = _JudgeEndpoint()
    train = write_jsonl(tmp / "data/train.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in (LABELED[i % len(LABELED)] for i in range(64))])
    prompts = write_jsonl(tmp / "data/prompts.jsonl", [{"prompt": q, "reference": a} for q, a in LABELED])
    regression = write_jsonl(tmp / "data/general.jsonl", [{"prompt": q, "reference": a}
                                                           for q, a in zip(GENERAL, _base_answers(tiny_model_dir, GENERAL))])
    progress = tmp / "progress.jsonl"
    evaluation = {**EVALUATION, "prompts": f"file://{prompts}", "regressionSet": f"file://{regression}",
                  "judge": {**EVALUATION["judge"], "endpoint": endpoint.url,
                            "apiKeySecretRef": {"name": "judge", "key": "token"}}}
    config = make_config(tmp / "config.json", job="task-eval", model=f"file://{tiny_model_dir}", train=f"file://{train}",
                         output=f"file://{tmp}/out", progress_file=progress, hyperparameters={"maxSteps": 40},
                         spec={"evaluation": evaluation, "checkpointing": {"intervalSteps": 20}})
    with pytest.MonkeyPatch.context() as env:  # what tests/trainer/conftest.py gives each test, for the module
        for name in ("KUBETUNE_S3_ENDPOINT", "KUBERNETES_SERVICE_HOST", "KUBETUNE_API_URL", "KUBETUNE_WORK_DIR"):
            env.delenv(name, raising=False)
        env.setenv(ENV_TERMINATION_LOG, str(tmp / "termination-log"))
        env.setenv("KUBETUNE_METRICS_PORT", "0")
        env.setenv(ENV_PVC_ROOT, str(tmp / "pvc"))
        env.setenv("HF_HUB_OFFLINE", "1")
        env.setenv("KUBETUNE_JUDGE_API_KEY", "sk-judge")  # the operator sets it from judge.apiKeySecretRef
        code = execute(config, work_dir=tmp / "work")
        text = (tmp / "termination-log").read_text()
    endpoint.close()
    assert code == exit_codes.SUCCESS, text
    yield {"text": text, "report": json.loads(text), "root": tmp / "out/team-a/task-eval", "progress": progress,
           "judge": endpoint}


def _figures(metric_set: dict) -> dict[str, tuple]:
    return {m["name"]: (m.get("baseline"), m.get("final")) for m in metric_set["metrics"]}


def test_task_metrics_rise_from_baseline_to_final(run):
    task = run["report"]["evaluation"]["task"]
    figures = _figures(task)
    assert task["prompts"] == len(LABELED) and list(figures) == METRICS
    for name in ("exact_match", "accuracy", "macro_f1", "contains"):
        baseline, final = figures[name]
        assert final == 1.0 and baseline < 0.5, (name, figures)
    assert figures["rouge_l"][1] == 1.0 > figures["rouge_l"][0]
    assert figures["judge"] == (0.2, 0.9)  # the endpoint's 2/10 for a wrong answer, 9/10 for a right one
    assert run["report"]["evaluation"]["final"]["evalLoss"] < run["report"]["evaluation"]["baseline"]["evalLoss"]
    assert run["report"]["evaluation"]["seconds"] > 0
    requests = run["judge"].requests
    assert len(requests) == 2 * (len(LABELED) + len(GENERAL)) and {r["auth"] for r in requests} == {"Bearer sk-judge"}


def test_regression_set_drop_is_reported(run, monkeypatch):
    regression = run["report"]["evaluation"]["regression"]
    figures = _figures(regression)
    assert regression["prompts"] == len(GENERAL) and regression["maxRegression"] == "0.05"
    assert figures["exact_match"][0] == 1.0 and figures["exact_match"][1] < 1.0  # the base model matched itself
    assert f"exact_match: 1 -> {figures['exact_match'][1]:g}" in regression["regressed"]
    # the operator: status.evaluation from the termination message, the Regressed condition, a Warning event
    job = {"metadata": {"name": "task-eval-train"}, "spec": {}, "status": {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": "2026-12-01T10:00:00Z"}]}}
    pod = {"metadata": {"name": "p1", "creationTimestamp": "2026-12-01T09:00:00Z"}, "spec": {"containers": [{"name": "trainer"}]},
           "status": {"phase": "Succeeded", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
               "exitCode": 0, "reason": "Completed", "message": run["text"]}}}]}}
    status = derive_status(Observed(1, job, [pod], output_prefix="file:///out/team-a/task-eval"), None).to_dict()
    assert status["evaluation"] == run["report"]["evaluation"]
    regressed = next(c for c in status["conditions"] if c["type"] == "Regressed")
    assert (regressed["status"], regressed["reason"]) == ("True", "RegressionExceeded")
    assert "exact_match: 1 -> " in regressed["message"] and "maxRegression 0.05" in regressed["message"]
    # the pod gone: the condition stays, read from status.evaluation
    later = derive_status(Observed(1, job, [], output_prefix="file:///out/team-a/task-eval"), status).to_dict()
    assert next(c for c in later["conditions"] if c["type"] == "Regressed") == regressed
    from kubetune.handlers import runtime  # the status write announces the transition (kopf.event: an Event object)

    events = []
    monkeypatch.setattr(runtime.kopf, "event", lambda body, **event: events.append(event))
    runtime.announce({"metadata": {"name": "task-eval", "namespace": "team-a"}}, None, status["conditions"])
    assert {"type": "Warning", "reason": "RegressionExceeded", "message": regressed["message"]} in events


def test_eval_files_are_published_in_the_manifest_with_the_model_card(run):
    root = run["root"]
    assert manifest_problems(root) == []
    listed = {f["path"] for f in json.loads((root / "manifest.json").read_text())["files"]}
    assert {"eval/summary.json", "eval/samples.jsonl", "eval/regression.jsonl"} <= listed
    summary = EvalSummary.model_validate_json((root / "eval/summary.json").read_text())
    reported = Evaluation.model_validate(run["report"]["evaluation"])
    assert (summary.task, summary.regression, summary.seconds) == (reported.task, reported.regression, reported.seconds)
    samples = [EvalSample.model_validate_json(line) for line in (root / "eval/samples.jsonl").read_text().splitlines()]
    assert [(s.id, s.prompt, s.reference, s.finetuned) for s in samples] == [
        (i, q, a, a) for i, (q, a) in enumerate(LABELED)]
    assert all(s.finetuned_scores["exact_match"] == 1.0 and "macro_f1" not in s.finetuned_scores for s in samples)
    regression = [EvalSample.model_validate_json(x) for x in (root / "eval/regression.jsonl").read_text().splitlines()]
    assert [s.base for s in regression] == [s.reference for s in regression]
    card = (root / "README.md").read_text()
    assert "## Task evaluation (base model -> fine-tuned)" in card
    assert f"| exact_match | {_figures(run['report']['evaluation']['task'])['exact_match'][0]:g} -> 1 |" in card
    assert "Regressed beyond maxRegression 0.05: exact_match: 1 -> " in card


def test_progress_shows_evaluation_and_the_checkpoint_keeps_the_base_answers(run):
    lines = progress_lines(run["progress"])
    phases = [line["progress"]["phase"] for line in lines]
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert order[order.index("BaselineEvaluation"):order.index("BaselineEvaluation") + 3] == [
        "BaselineEvaluation", "EvaluatingTask", "Training"]
    assert order[-4:] == ["FinalEvaluation", "EvaluatingTask", "Publishing", "Done"]
    started = [line["progress"]["evaluation"] for line in lines if "evaluation" in line["progress"]]
    assert {"model": "base", "set": "task", "done": 0, "total": len(LABELED)} in started
    assert {"model": "finetuned", "set": "regression", "done": 0, "total": len(GENERAL)} in started
    assert all(line["progress"]["phase"] == "EvaluatingTask" for line in lines if "evaluation" in line["progress"])
    state = json.loads((run["root"] / "checkpoints/00000040/kubetune_state.json").read_text())
    regression = [json.loads(x) for x in (run["root"] / "eval/regression.jsonl").read_text().splitlines()]
    assert state["taskBaseline"]["regression"]["texts"] == [s["base"] for s in regression]
    assert len(state["taskBaseline"]["task"]["texts"]) == len(LABELED)
    assert os.environ.get("KUBETUNE_JUDGE_API_KEY") is None  # the module's env did not leak


def test_the_report_shows_the_rise_the_regression_and_the_answers_side_by_side(run):
    """eval/report.html of this run (issue 17 item 2, kubetune_trainer.report): the figures of status, the answers of
    samples.jsonl in the side-by-side table, the blind view matching blind.jsonl and its key."""
    from kubetune.api.evaluation import BlindKey, BlindSample
    from tests.fixtures.eval_report import Tables

    root = run["root"]
    assert run["report"]["evaluation"]["reportUri"] == f"file://{root}/eval/report.html"
    listed = {f["path"] for f in json.loads((root / "manifest.json").read_text())["files"]}
    assert {"eval/report.html", "eval/blind.jsonl", "eval/blind-key.json"} <= listed
    tables = Tables((root / "eval/report.html").read_text()).tables
    task = {cells[0]: (cls, cells) for cls, cells in tables["task-metrics"][1:]}
    for name in ("exact_match", "accuracy"):
        cls, (_, baseline, final, _) = task[name]
        assert (cls, final) == ("up", "1") and float(baseline) < 0.5, task[name]
    assert ("regressed", "exact_match") in {(cls, cells[0]) for cls, cells in tables["regression-metrics"][1:]}
    assert [(cells[1], cells[2], cells[4]) for _, cells in tables["side-by-side"][1:]] == [(q, a, a) for q, a in LABELED]
    blind = [BlindSample.model_validate_json(x) for x in (root / "eval/blind.jsonl").read_text().splitlines()]
    key = BlindKey.model_validate_json((root / "eval/blind-key.json").read_text())
    samples = {s["id"]: s for s in map(json.loads, (root / "eval/samples.jsonl").read_text().splitlines())}
    for pair in blind:
        assert (pair.a == samples[pair.id]["base"]) == (key.a_is[str(pair.id)] == "base")
    assert [(cells[3], cells[4]) for _, cells in tables["blind-pairs"][1:]] == [
        (" ".join(p.a.split()), " ".join(p.b.split())) for p in blind]


def test_the_report_opens_in_headless_chromium(run, tmp_path):
    """The same page in Debian's chromium (tests/trainer/test_report_chromium.py): the side-by-side table is in the
    rendered DOM; the screenshot is kept (printed path, and build/test-artifacts/eval-report-task-eval.png)."""
    import shutil

    from tests.fixtures.eval_report import Tables
    from tests.trainer.test_report_chromium import ARTIFACTS, CHROMIUM, chromium

    if CHROMIUM is None:
        pytest.skip("no chromium: apt-get install chromium (.ci/run does)")
    url = (run["root"] / "eval/report.html").as_uri()
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", url)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"screenshot of the report: {shot} (copy: {shutil.copy(shot, ARTIFACTS / 'eval-report-task-eval.png')})")
    rows = Tables(chromium(tmp_path, "--dump-dom", url).stdout).tables["side-by-side"]
    assert [dict(zip(rows[0][1], cells))["fine-tuned model"] for _, cells in rows[1:]] == [a for _, a in LABELED]
    assert all(dict(zip(rows[0][1], cells))["base model"] for _, cells in rows[1:])
