"""The report files at publish (report.stage_report, called by publish.stage): eval/report.html, eval/blind.jsonl and
eval/blind-key.json land in the published folder before manifest.json, listed and sha-verified; summary.json, the
termination report (-> status.evaluation) and the model card carry where report.html is. A staged result, no
training (the figures and samples as kubetune_trainer.evaluate hands them to publish)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from kubetune.api.evaluation import BlindKey, BlindSample, EvalSample, EvalSummary
from kubetune.api.manifest import AdapterManifest
from kubetune.api.trainer_config import TrainerConfig
from kubetune_storage import open_store
from kubetune_trainer.evaluate import EvalOutcome
from kubetune_trainer.publish import publish
from kubetune_trainer.report import stage_report
from tests.fixtures import eval_report as data
from tests.fixtures.eval_report import Tables
from tests.trainer.helpers import make_config
from tests.trainer.test_publish import _result

EVAL_FILES = ["eval/blind-key.json", "eval/blind.jsonl", "eval/regression.jsonl", "eval/report.html",
              "eval/samples.jsonl", "eval/summary.json"]


def _config(tmp_path: Path, report: bool = True) -> TrainerConfig:
    evaluation = {"prompts": "s3://d/eval.jsonl", "regressionSet": "s3://d/general.jsonl", "report": report}
    path = make_config(tmp_path / "config.json", job="pub", model="hf://org/base", train="s3://d/train.jsonl",
                       output=f"file://{tmp_path}/out", spec={"evaluation": evaluation})
    return TrainerConfig.model_validate_json(path.read_text())


def _outcome() -> EvalOutcome:
    summary = data.summary()
    return EvalOutcome(summary=summary, samples=data.samples(), regression_samples=data.regression_samples())


def test_report_files_are_published_listed_and_linked(tmp_path: Path):
    config = _config(tmp_path)
    result = _result(tmp_path)
    result.task = _outcome()
    report = publish(config, result, open_store(config.output_prefix), tmp_path / "work")
    root = tmp_path / "out/team-a/pub"
    url = f"file://{root}/eval/report.html"

    manifest = AdapterManifest.model_validate_json((root / "manifest.json").read_bytes())
    listed = {f.path: f.sha256 for f in manifest.files}
    assert [p for p in sorted(listed) if p.startswith("eval/")] == EVAL_FILES
    for path in EVAL_FILES:
        assert listed[path] == hashlib.sha256((root / path).read_bytes()).hexdigest(), path

    assert EvalSummary.model_validate_json((root / "eval/summary.json").read_text()).report_uri == url
    assert report["evaluation"]["reportUri"] == url  # what the operator copies to status.evaluation

    samples = [EvalSample.model_validate_json(x) for x in (root / "eval/samples.jsonl").read_text().splitlines()]
    blind = [BlindSample.model_validate_json(x) for x in (root / "eval/blind.jsonl").read_text().splitlines()]
    key = BlindKey.model_validate_json((root / "eval/blind-key.json").read_text())
    by_id = {s.id: s for s in samples}
    assert len(blind) == len(samples) == 12 and set(key.a_is) == {str(s.id) for s in samples}
    for pair in blind:
        assert (pair.a == by_id[pair.id].base) == (key.a_is[str(pair.id)] == "base")

    page = (root / "eval/report.html").read_text()
    tables = Tables(page).tables
    assert tables["task-metrics"][1] == ("up", ["exact_match", "0", "0.9167", "+0.9167"])
    assert len(tables["side-by-side"]) == 13 and len(tables["regression-side-by-side"]) == 5
    assert [(r[1][3], r[1][4]) for r in tables["blind-pairs"][1:]] == [
        (" ".join(p.a.split()), " ".join(p.b.split())) for p in blind]
    assert page.count('src="data:image/png;base64,') == 1  # the published loss curve, inline
    assert "team-a/pub: evaluation" in page and "s3://d/eval.jsonl" in page and "hf://org/base" in page


def test_the_blind_order_is_drawn_anew_not_from_the_jobs_seed(tmp_path: Path):
    config = _config(tmp_path)
    seeds = set()
    for run in ("a", "b"):
        stage_report(tmp_path / run, config, _outcome(), None)
        seeds.add(json.loads((tmp_path / run / "eval/blind-key.json").read_text())["seed"])
    assert len(seeds) == 2 and config.spec.hyperparameters.seed not in seeds


def test_report_false_publishes_figures_only(tmp_path: Path):
    config = _config(tmp_path, report=False)
    result = _result(tmp_path)
    result.task = _outcome()
    report = publish(config, result, open_store(config.output_prefix), tmp_path / "work")
    root = tmp_path / "out/team-a/pub"
    assert sorted(p.relative_to(root).as_posix() for p in (root / "eval").rglob("*")) == ["eval/summary.json"]
    assert "reportUri" not in report["evaluation"]
