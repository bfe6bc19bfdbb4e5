"""spec.evaluation without a model: each metric against hand-computed values, sacrebleu's and rouge-score's own
behaviour, label extraction, macro-F1 with a missing label, the regression verdict, the prompt files, the judge
(the official openai client against an OpenAI-compatible endpoint), the spec's validation errors, and the 4 KiB
termination report with the task figures."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kubetune.api.evaluation import Judge, MetricName, MetricResult, MetricSet, RegressionResult
from kubetune.api.finetunejob import EvalFigures, Evaluation, FineTuneJobSpec, PublishedAdapter
from kubetune.api.termination import MAX_TERMINATION_MESSAGE, TerminationReport
from kubetune.api.validation import SpecError, parse
from kubetune_trainer import task_metrics as tm
from kubetune_trainer.errors import DataError
from kubetune_trainer.judge import JudgeClient, parse_score
from kubetune_trainer.prompt_sets import from_held_out, load_items

M = MetricName
LABEL = re.compile(r"\b(positive|negative|neutral)\b", re.IGNORECASE)


def test_exact_match_contains_regex_per_sample():
    assert tm.sample_score(M.EXACT_MATCH, "  The  Sky is PURPLE ", "the sky is purple", None) == 1.0
    assert tm.sample_score(M.EXACT_MATCH, "The sky is purple.", "the sky is purple", None) == 0.0  # punctuation counts
    assert tm.sample_score(M.CONTAINS, "I think: the SKY is purple, yes", "the sky is purple", None) == 1.0
    assert tm.sample_score(M.CONTAINS, "purple", "the sky is purple", None) == 0.0
    assert tm.sample_score(M.REGEX, "Order 4521 shipped", r"\d{4} shipped$", None) == 1.0
    assert tm.sample_score(M.REGEX, "Order 45 shipped", r"\d{4} shipped$", None) == 0.0
    assert tm.sample_score(M.EXACT_MATCH, "anything", None, None) is None  # no reference: not scored


def test_labels_accuracy_and_macro_f1_with_a_missing_label():
    assert tm.extract_label(LABEL, "I'd say Positive, mostly") == "positive"
    assert tm.extract_label(LABEL, "no idea") is None
    assert tm.reference_label(LABEL, "Negative") == "negative" and tm.reference_label(LABEL, "other") == "other"
    refs = ["positive", "positive", "negative", "neutral"]
    answers = ["positive!", "negative", "negative", "dunno"]  # neutral is never predicted; one answer has no label
    totals, rows = tm.score_answers([M.ACCURACY, M.MACRO_F1], answers, refs, LABEL)
    assert [r["accuracy"] for r in rows] == [1.0, 0.0, 1.0, 0.0] and totals["accuracy"] == 0.5
    # positive: tp1 fp0 fn1 -> 2/3; negative: tp1 fp1 fn0 -> 2/3; neutral: tp0 -> 0; mean 4/9
    assert totals["macro_f1"] == round(4 / 9, 4)
    assert "macro_f1" not in rows[0]  # a set-level metric only
    assert tm.macro_f1(["a", "b"], ["a", "b"]) == 1.0 and tm.macro_f1([], []) == 0.0


def test_bleu_and_rouge_are_the_libraries_figures():
    import sacrebleu
    from rouge_score import rouge_scorer

    answers, refs = ["the cat is on the mat", "hello world"], ["the cat sat on the mat", "hello world"]
    totals, rows = tm.score_answers([M.BLEU, M.ROUGE_L], answers, refs, None)
    assert totals["bleu"] == round(sacrebleu.corpus_bleu(answers, [refs]).score, 4)  # corpus BLEU, not a mean
    assert rows[1]["bleu"] == 100.0 and rows[0]["bleu"] == round(sacrebleu.sentence_bleu(answers[0], [refs[0]]).score, 4)
    # ROUGE-L: LCS "the cat on the mat" = 5 of 6 tokens each side -> F 5/6
    assert rows[0]["rouge_l"] == round(5 / 6, 4) and rows[1]["rouge_l"] == 1.0
    assert totals["rouge_l"] == round((5 / 6 + 1) / 2, 4)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    assert rows[0]["rouge_l"] == round(scorer.score(refs[0], answers[0])["rougeL"].fmeasure, 4)


def test_samples_without_reference_count_only_for_the_judge():
    totals, rows = tm.score_answers([M.EXACT_MATCH, M.BLEU, M.JUDGE], ["a", "b"], [None, None], None, [0.8, None])
    assert totals == {"exact_match": None, "bleu": None, "judge": 0.8}
    assert rows == [{"judge": 0.8}, {}]


def test_regression_verdict_uses_each_metrics_own_unit():
    metrics = [MetricResult(name=M.ROUGE_L, baseline=0.41, final=0.22), MetricResult(name=M.BLEU, baseline=30.0, final=29.0),
               MetricResult(name=M.EXACT_MATCH, baseline=0.5, final=0.45), MetricResult(name=M.CONTAINS, baseline=None, final=0.1)]
    assert tm.regressions(metrics, "0.05") == ["rouge_l: 0.41 -> 0.22", "bleu: 30 -> 29"]  # 0.05 exactly is allowed
    assert tm.regressions(metrics, "2") == []


def test_prompt_files_and_held_out_items(tmp_path):
    from kubetune.api.evaluation import EvaluationSpec

    good = tmp_path / "p.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Q1", "reference": "A1"}, {"prompt": [{"role": "user", "content": "Q2"}], "label": "yes"},
        {"messages": [{"role": "user", "content": "Q3"}, {"role": "assistant", "content": "A3"}]}, {"prompt": "Q4"}]))
    spec = EvaluationSpec(metrics=["regex"], maxPrompts=3)
    items = load_items([good], "file://p.jsonl", spec, "prompts")
    assert [(i.prompt, i.reference) for i in items] == [("Q1", "A1"), ([{"role": "user", "content": "Q2"}], "yes"),
                                                        ([{"role": "user", "content": "Q3"}], "A3")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": ""}\n{"reference": "x"}\n{"prompt": "q", "reference": "("}\nnot json\n')
    with pytest.raises(DataError) as err:
        load_items([bad], "s3://b/bad.jsonl", spec, "regressionSet")
    text = str(err.value)
    assert text.startswith("spec.evaluation.regressionSet s3://b/bad.jsonl is invalid")
    for where in ("bad.jsonl:1: prompt", "bad.jsonl:2: prompt", "bad.jsonl:3: reference is not a regular expression",
                  "bad.jsonl:4: not valid JSON"):
        assert where in text, text
    held = from_held_out([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
                          {"prompt": "p", "completion": "c"}])
    assert [(i.prompt, i.reference) for i in held] == [([{"role": "user", "content": "q"}], "a"), ("p", "c")]
    with pytest.raises(Exception, match="spec.evaluation.prompts"):
        from_held_out([{"text": "a document"}])


BASE_SPEC = {"baseModel": {"uri": "hf://org/model"}, "dataset": {"train": "s3://data/train.jsonl"}}


@pytest.mark.parametrize(("evaluation", "expected"), [
    ({"metrics": ["accuracy", "exact_match"]}, "spec.evaluation.labelPattern: required by the metric(s) accuracy"),
    ({"metrics": ["macro_f1"]}, "spec.evaluation.labelPattern: required by the metric(s) macro_f1"),
    ({"metrics": ["accuracy"], "labelPattern": "yes|no"}, "spec.evaluation.labelPattern: 'yes|no' must have exactly one group"),
    ({"labelPattern": "(a)(b)"}, "it has 2"),
    ({"labelPattern": "(yes"}, "spec.evaluation.labelPattern: '(yes' is not a regular expression"),
    ({"metrics": ["judge"]}, "spec.evaluation.judge: required by the metric judge"),
    ({"metrics": ["bleu"], "prompts": "ftp://x/p.jsonl"}, "spec.evaluation.prompts: 'ftp://x/p.jsonl' is not a valid data URI"),
    ({"regressionSet": "s3://b/../p.jsonl"}, "spec.evaluation.regressionSet: must not contain '..'"),
    ({"metrics": ["rouge"]}, "spec.evaluation.metrics[0]: 'rouge' is not allowed"),
    ({"maxRegression": "-1"}, "spec.evaluation.maxRegression"),
])
def test_bad_evaluation_specs_name_the_field(evaluation, expected):
    with pytest.raises(SpecError) as err:
        parse(FineTuneJobSpec, {**BASE_SPEC, "evaluation": evaluation})
    assert expected in str(err.value), str(err.value)


def test_good_evaluation_spec_and_its_cel_rules_agree():
    import celpy

    from kubetune.api.crd import all_crds

    schema = all_crds()["kubetune.io_finetunejobs.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = schema["properties"]["spec"]["properties"]["evaluation"]["x-kubernetes-validations"]
    env = celpy.Environment()
    for evaluation, ok in [({"metrics": ["accuracy"], "labelPattern": "(y|n)"}, True), ({"metrics": ["accuracy"]}, False),
                           ({"metrics": ["judge"]}, False), ({}, True), ({"metrics": ["bleu"]}, True)]:
        cel_ok = all(env.program(env.compile(r["rule"])).evaluate({"self": celpy.json_to_cel(evaluation)}) for r in rules)
        try:
            parse(FineTuneJobSpec, {**BASE_SPEC, "evaluation": evaluation})
            pydantic_ok = True
        except SpecError:
            pydantic_ok = False
        assert cel_ok == pydantic_ok == ok, evaluation


def test_termination_report_with_16_metrics_in_two_sets_fits_4_kib():
    """The worst case the contract allows: 16 metrics per set (MAX_METRICS), every figure a long float, all regressed."""
    names = list(MetricName) * 2
    metrics = [MetricResult(name=n, baseline=-123.4567, final=-99.1234) for n in names]
    regressed = tm.regressions([MetricResult(name=n, baseline=99.1234, final=0.1234) for n in names], "0.05")
    evaluation = Evaluation(baseline=EvalFigures(eval_loss=12.345678, perplexity=229345.1234),
                            final=EvalFigures(eval_loss=0.123456, perplexity=1.1314),
                            task=MetricSet(metrics=metrics, prompts=10000),
                            regression=RegressionResult(metrics=metrics, prompts=10000, max_regression="0.05",
                                                        regressed=regressed),
                            seconds=86400.123, report_uri="s3://" + "b" * 60 + "/adapters/team-a/" + "j" * 63 + "/eval/report.html")
    report = TerminationReport(adapter=PublishedAdapter(uri="s3://" + "b" * 60 + "/adapters/team-a/" + "j" * 63,
                                                        manifest_sha256="a" * 64, type="lora", rank=256),
                               evaluation=evaluation)
    text = report.text()
    assert len(text.encode()) <= MAX_TERMINATION_MESSAGE, len(text.encode())
    assert TerminationReport.parse(text) == report
    assert Evaluation.model_validate(json.loads(text)["evaluation"]).regression.regressed == regressed


class _JudgeEndpoint:
    """Plays an OpenAI-compatible server (POST /v1/chat/completions answering a chat.completion object, as OpenAI's API
    reference documents it): replies 'Score: 9/10' when the answer contains the reference, 'I cannot grade that'
    for an empty answer, else '2'. Records the requests."""

    def __init__(self):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                user = body["messages"][-1]["content"]
                answer = user.split("Answer to grade:\n", 1)[1].split("\n\nScore", 1)[0]
                reference = user.split("Reference answer:\n", 1)[1].split("\n\n", 1)[0] if "Reference" in user else "?"
                text = "I cannot grade that" if not answer else ("Score: 9/10" if reference in answer else "2")
                data = json.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge_endpoint():
    endpoint = _JudgeEndpoint()
    yield endpoint
    endpoint.close()


def test_judge_scores_through_the_openai_client_with_the_key_from_env(judge_endpoint, monkeypatch):
    monkeypatch.setenv("KUBETUNE_JUDGE_API_KEY", "sk-judge-secret")
    judge = JudgeClient(Judge(endpoint=judge_endpoint.url, model="judge-model", rubric="Correct label."), seed=7)
    scores = judge.score(["q1", "q2", "q3"], ["positive", "negative", None], ["positive!", "positive", ""], deadline=1e12)
    assert scores == [0.9, 0.2, None]
    first = judge_endpoint.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-judge-secret"
    assert (first["body"]["model"], first["body"]["temperature"], first["body"]["seed"]) == ("judge-model", 0, 7)
    assert "Correct label." in first["body"]["messages"][0]["content"]
    assert [parse_score(t) for t in ("10", "7.5 / 10", "score 3", "none", "11", "0")] == [1.0, 0.75, 0.3, None, None, 0.0]


def test_a_judge_that_is_down_is_given_up_on(monkeypatch):
    judge = JudgeClient(Judge(endpoint="http://127.0.0.1:9/v1", model="m", rubric="r"), seed=0)
    judge.client = judge.client.with_options(max_retries=0, timeout=2)
    assert judge.score(["q"] * 6, ["a"] * 6, ["a"] * 6, deadline=1e12) == [None] * 6


def test_a_resumed_run_compares_the_same_prompts_from_the_checkpointed_base_answers(tmp_path):
    """The base answers travel in the checkpoint state (state/restore as JSON); the figures cover only the prompts
    both models answered (here the base model's time budget stopped it after 3 of 4)."""
    from kubetune.api.evaluation import EvaluationSpec
    from kubetune_trainer.evaluate import BASE, FINETUNED, Answers, TaskEvaluator, write_eval_files
    from kubetune_trainer.prompt_sets import Item

    spec = EvaluationSpec(metrics=["exact_match", "accuracy"], labelPattern="(?i)(yes|no)", report=False)
    items = [Item("q1", "yes"), Item([{"role": "user", "content": "q2"}], "no"), Item("q3", "yes"), Item("q4", "no")]
    before = TaskEvaluator(spec, {"task": items}, tokenizer=None, chat=True, seed=1, max_length=64)
    before.answers[BASE]["task"] = Answers(texts=["no", "no", "maybe"], seconds=1.5)
    resumed = TaskEvaluator(spec, {"task": items}, tokenizer=None, chat=True, seed=1, max_length=64)
    resumed.restore(json.loads(json.dumps(before.state())))
    resumed.answers[FINETUNED]["task"] = Answers(texts=["yes", "No.", "yes"], seconds=0.5)
    outcome = resumed.outcome()
    assert outcome.summary.task.prompts == 3 and 2.0 <= outcome.summary.seconds < 2.5  # + the scoring itself
    assert [(m.name.value, m.baseline, m.final) for m in outcome.summary.task.metrics] == [
        ("exact_match", round(1 / 3, 4), round(2 / 3, 4)), ("accuracy", round(1 / 3, 4), 1.0)]
    assert [s.prompt for s in outcome.samples] == ["q1", "user: q2", "q3"]
    assert outcome.summary.regression is None
    written = write_eval_files(tmp_path, outcome, spec)  # report: false -> the figures only
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == ["eval/summary.json"]
    assert json.loads((tmp_path / "eval/summary.json").read_text()) == written.to_dict()


def test_the_preflight_refuses_a_bad_prompt_file_before_any_gpu(tmp_path, trainer_env, tiny_model_dir):
    """`python -m kubetune_trainer --preflight` (the CPU-only pod before the training Job) checks the prompt sets."""
    from kubetune.api import exit_codes
    from kubetune.api.preflight import PreflightReport
    from kubetune_trainer.main import main as trainer_main
    from tests.fixtures.tiny_data import chat_records, write_jsonl
    from tests.trainer.helpers import make_config

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "fine", "reference": "x"}\n{"prompt": 3}\n')
    config = make_config(tmp_path / "config.json", job="pf", model=f"file://{tiny_model_dir}",
                         train=f"file://{write_jsonl(tmp_path / 't.jsonl', chat_records(20))}",
                         output=f"file://{tmp_path}/out", spec={"evaluation": {"prompts": f"file://{prompts}"}})
    code = trainer_main(["--config", str(config), "--preflight"])
    report = PreflightReport.parse(trainer_env.read_text())
    assert code == exit_codes.USER_ERROR and not report.passed
    assert f"spec.evaluation.prompts file://{prompts} is invalid: prompts.jsonl:2: prompt: missing or empty" in report.message
