"""The evaluation report renderer (kubetune_trainer.report): escaping, the metrics table, the regressed highlight,
the blind view and its key, the files written next to the adapter. Pure (no training); the page in a real browser:
test_report_chromium.py."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from kubetune.api.evaluation import BlindKey, BlindSample, EvalSummary
from kubetune_trainer.report import (
    MAX_SAMPLES,
    blind_pairs,
    render_blind_report,
    render_report,
    write_report_files,
)
from tests.fixtures import eval_report as data
from tests.fixtures.eval_report import HOSTILE, Tables

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # bytes that need base64, not a real image: the page embeds them


def _page(**kw) -> str:
    return render_report(data.summary(), data.samples(), PNG, title="team-a/<b>job</b>",
                         details={"adapter": "s3://out/team-a/job", "base model": "hf://org/m<i>"}, seed=3,
                         regression_samples=data.regression_samples(), **kw)


def _section(page: str, main_id: str) -> str:
    match = re.search(rf'<main id="{main_id}">(.*?)</main>', page, re.S)
    assert match, f"no <main id={main_id}>"
    return match.group(1)


def test_user_text_is_escaped_and_the_page_has_no_script_and_no_external_asset():
    page = _page()
    assert "<script" not in page.lower() and "onerror=" not in page.replace("onerror=alert", "")  # only as text
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<title>team-a/&lt;b&gt;job&lt;/b&gt;</title>" in page and "<b>" not in page and "<i>" not in page
    assert not re.search(r'(src|href)="(?!data:)', page), "every asset is inline"
    assert "<link" not in page and "@import" not in page and "url(" not in page
    # The text comes back as a browser reads it: the prompt, the fine-tuned answer, the reference.
    rows = Tables(page).tables["side-by-side"]
    assert rows[1][1][1] == " ".join(f"Ticket 0: classify this message.\n{HOSTILE}".split())
    assert rows[1][1][4] == " ".join(f"bug {HOSTILE}".split())


def test_metrics_table_values_and_highlights():
    tables = Tables(_page()).tables
    assert tables["task-metrics"] == [
        ("", ["metric", "baseline (base model)", "final (fine-tuned)", "change"]),
        ("up", ["exact_match", "0", "0.9167", "+0.9167"]),
        ("up", ["accuracy", "0.25", "1", "+0.75"]),
        ("down", ["bleu", "31.5", "12.25", "-19.25"]),  # dropped, but the task set has no regression bound
    ]
    assert tables["regression-metrics"][1:] == [("regressed", ["rouge_l", "0.41", "0.22", "-0.19"]),
                                                ("", ["contains", "0.5", "0.5", "0"])]
    page = _page()
    assert "Regression set (4 prompts, largest drop allowed 0.05)" in page
    assert '<p class="verdict">Regressed: rouge_l: 0.41 -&gt; 0.22</p>' in page


def test_no_regression_and_no_metrics():
    quiet = data.summary()
    quiet.regression.regressed = []
    tables = Tables(render_report(quiet, [], None, title="t")).tables
    assert [cls for cls, _ in tables["regression-metrics"]] == ["", "down", ""]  # a drop within the bound: not red
    empty = render_report(EvalSummary(), [], None, title="t")
    assert "No metric was computed." in empty and "No loss curve was published." in empty
    assert "No sample was evaluated." in empty


def test_samples_side_by_side_with_scores_and_the_loss_curve_inline():
    page = _page()
    rows = Tables(page).tables["side-by-side"]
    assert rows[0][1] == ["#", "prompt", "reference", "base model", "fine-tuned model", "scores"]
    assert rows[3] == ("sample", ["2", "Ticket 2: classify this message.", "praise", "hmm, ticket 2 looks odd to me",
                                  "praise", "base fine-tuned exact_match 0 1 rouge_l 0.0123 0.9876"])
    assert len(rows) == 1 + 12
    regression = Tables(page).tables["regression-side-by-side"]
    assert regression[1][1] == ["0", "What is 0 plus 0?", "0", "It is 0.", "bug", "base fine-tuned contains 1 0"]
    src = re.search(r'<img class="curve" alt="loss curve" src="data:image/png;base64,([^"]+)">', page).group(1)
    assert base64.b64decode(src) == PNG


def test_blind_view_names_no_model_and_shows_no_score():
    alone = render_blind_report(blind_pairs(data.samples(), 5)[0], title="t")
    for blind in (_section(_page(), "blind"), alone[alone.index("<body>"):]):  # the page's text (not its CSS)
        text = blind.lower()
        for word in ("base", "fine-tuned", "finetuned", "fine tuned", "score", "0.0123", "0.9876", "baseline"):
            assert word not in text, word
        rows = Tables(blind).tables["blind-pairs"]
        assert rows[0][1] == ["#", "prompt", "reference", "answer A", "answer B"] and len(rows) == 13
    whole = render_blind_report(blind_pairs(data.samples(), 5)[0], title="rate these")
    assert "Metrics" not in whole and "side-by-side" not in whole and 'id="blind-pairs"' in whole


def test_blind_key_matches_the_shuffled_labels_and_the_seed_decides():
    samples = {s.id: s for s in data.samples(40)}
    blind, key = blind_pairs(list(samples.values()), seed=11)
    assert key.seed == 11 and set(key.a_is) == {str(i) for i in samples}
    for pair in blind:
        sample = samples[pair.id]
        assert (pair.a == sample.base) == (key.a_is[str(pair.id)] == "base")
        assert {pair.a, pair.b} == {sample.base, sample.finetuned}
        assert (pair.prompt, pair.reference) == (sample.prompt, sample.reference)
    orders = [a for a in key.a_is.values()]
    assert 5 < orders.count("base") < 35  # both orders occur: the answers are really shuffled
    assert blind_pairs(list(samples.values()), seed=11) == (blind, key)
    assert blind_pairs(list(samples.values()), seed=12)[1].a_is != key.a_is
    # The page's blind view shows the same pairs as blind.jsonl (render_report draws them from the same seed).
    rows = Tables(render_report(data.summary(), list(samples.values()), None, title="t", seed=11)).tables["blind-pairs"]
    assert [(r[1][3], r[1][4]) for r in rows[1:]] == [(" ".join(p.a.split()), " ".join(p.b.split())) for p in blind]


def test_write_report_files_keeps_the_key_apart(tmp_path: Path):
    eval_dir = tmp_path / "publish" / "eval"
    samples = data.samples()
    paths = write_report_files(eval_dir, data.summary(), samples, PNG, 99, title="team-a/job",
                               regression_samples=data.regression_samples())
    assert sorted(p.name for p in paths) == ["blind-key.json", "blind.jsonl", "report.html"]
    assert all(p.parent == eval_dir for p in paths)
    key = BlindKey.model_validate_json((eval_dir / "blind-key.json").read_text())
    blind = [BlindSample.model_validate_json(line) for line in (eval_dir / "blind.jsonl").read_text().splitlines()]
    assert (blind, key) == blind_pairs(samples, 99)
    assert set(json.loads((eval_dir / "blind.jsonl").read_text().splitlines()[0])) == {"id", "prompt", "reference",
                                                                                        "a", "b"}
    page = (eval_dir / "report.html").read_text()
    blind_text = " ".join((eval_dir / "blind.jsonl").read_text().split())
    for leak in ('"aIs"', '"seed"', "a_is"):
        assert leak not in page and leak not in blind_text
    assert "eval/blind-key.json" in page  # named, so reviewers know where the key is, but not included


def test_a_long_evaluation_is_cut_in_the_page_only(tmp_path: Path):
    samples = data.samples(MAX_SAMPLES + 3)
    write_report_files(tmp_path, EvalSummary(), samples, None, 1, title="t")
    tables = Tables((tmp_path / "report.html").read_text()).tables
    assert len(tables["side-by-side"]) == len(tables["blind-pairs"]) == 1 + MAX_SAMPLES
    assert f"The first {MAX_SAMPLES} of {MAX_SAMPLES + 3} samples" in (tmp_path / "report.html").read_text()
    assert len((tmp_path / "blind.jsonl").read_text().splitlines()) == MAX_SAMPLES + 3


@pytest.mark.parametrize("value,shown", [(None, "-"), (1.0, "1"), (0.0, "0"), (0.123456, "0.1235"), (23.456, "23.46")])
def test_figures(value, shown):
    from kubetune_trainer.report import fmt

    assert fmt(value) == shown
