"""`kubetune eval report <uri>` (kubetune.eval_cli) on published folders built from the contract's models
(tests/fixtures/eval_report.py): file://, and s3:// against the real S3 server (SeaweedFS, tests/fixtures/s3.py).
The browser of --open is played by a recording script given as $BROWSER (the variable Python's webbrowser reads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.cli import main
from kubetune_storage import open_store
from kubetune_trainer.report import write_report_files
from tests.fixtures import eval_report as data
from tests.fixtures.eval_report import Tables

PNG = b"\x89PNG\r\n\x1a\nnot-a-real-image"


def _published(root: Path, *, report: bool = True, manifest: bool = True) -> Path:
    """A job's published folder as the trainer leaves it (the eval part; the adapter files do not matter here)."""
    data.write_eval(root, data.summary(report_uri=f"file://{root}/eval/report.html"), data.samples(),
                    data.regression_samples())
    if report:
        write_report_files(root / "eval", data.summary(), data.samples(), PNG, 7, title="team-a/job")
    (root / "loss_curve.png").write_bytes(PNG)
    if manifest:
        (root / "manifest.json").write_text("{}")
    return root


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["eval", "report", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_terminal_summary(tmp_path: Path, capsys):
    root = _published(tmp_path / "out/team-a/job")
    rc, out, err = _run(capsys, f"file://{root}", "--width", "100")
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[:12] == [
        f"Evaluation of file://{root}",
        "Task set (12 prompts)",
        "  metric       baseline   final   change",
        "  exact_match         0  0.9167  +0.9167",
        "  accuracy         0.25       1    +0.75",
        "  bleu             31.5   12.25   -19.25",
        "Regression set (4 prompts, largest drop allowed 0.05)",
        "  metric    baseline  final  change",
        "  rouge_l       0.41   0.22   -0.19  REGRESSED",
        "  contains       0.5    0.5       0",
        "Regressed: rouge_l: 0.41 -> 0.22",
        "Generation and scoring: 42.0 s",
    ]
    assert lines[12] == f"Report: file://{root}/eval/report.html (kubetune eval report file://{root} --open)"
    assert f"Samples (first 3 of 12; all in file://{root}/eval/samples.jsonl):" in out
    sample_1 = out[out.index("#1 prompt:"):out.index("#2 prompt:")].splitlines()
    assert sample_1 == ["#1 prompt:", "    Ticket 1: classify this message.", "  reference:", "    billing",
                        f"    {'base model':<46} | fine-tuned model", f"    {'----------':<46} | ----------------",
                        f"    {'hmm, ticket 1 looks odd to me':<46} | billing",
                        "    scores (base -> fine-tuned): exact_match 0 -> 1, rouge_l 0.0123 -> 0.9876", ""]
    assert "#3 prompt:" not in out
    # The same from the URI status.evaluation.reportUri gives, with every sample, and with none.
    rc, every, _ = _run(capsys, f"file://{root}/eval/report.html", "-n", "100", "--width", "100")
    assert rc == 0 and "#11 prompt:" in every and "first 12 of 12" in every
    rc, metrics_only, _ = _run(capsys, f"file://{root}/eval", "-n", "0")
    assert rc == 0 and "prompt:" not in metrics_only and "REGRESSED" in metrics_only


def test_blind_text_names_no_model(tmp_path: Path, capsys):
    root = _published(tmp_path / "job")
    rc, out, _ = _run(capsys, f"file://{root}", "--blind", "--width", "100")
    assert rc == 0 and out.count(" prompt:") == 12 and "answer A" in out and "answer B" in out
    for word in ("base", "fine-tuned", "finetuned", "score", "0.9876"):
        assert word not in out.lower(), word


def test_output_writes_the_published_page_or_renders_one(tmp_path: Path, capsys):
    root = _published(tmp_path / "job")
    rc, out, _ = _run(capsys, f"file://{root}", "--output", str(tmp_path / "a" / "r.html"))
    assert rc == 0 and out == f"wrote {tmp_path / 'a' / 'r.html'}\n"
    assert (tmp_path / "a" / "r.html").read_bytes() == (root / "eval/report.html").read_bytes()
    # No report.html (spec.evaluation.report false, or an older trainer): rendered here from summary + samples.
    bare = _published(tmp_path / "bare", report=False)
    rc, _, _ = _run(capsys, f"file://{bare}", "-o", str(tmp_path / "b.html"))
    tables = Tables((tmp_path / "b.html").read_text()).tables
    assert rc == 0 and tables["regression-metrics"][1] == ("regressed", ["rouge_l", "0.41", "0.22", "-0.19"])
    assert len(tables["side-by-side"]) == 13 and tables["regression-side-by-side"][1][1][4] == "bug"
    assert "data:image/png;base64," in (tmp_path / "b.html").read_text()  # the published loss_curve.png
    # --blind: the raters' page, from blind.jsonl.
    rc, _, _ = _run(capsys, f"file://{root}", "--blind", "-o", str(tmp_path / "blind.html"))
    page = (tmp_path / "blind.html").read_text()
    assert rc == 0 and len(Tables(page).tables["blind-pairs"]) == 13 and "side-by-side" not in page


def test_open_starts_the_browser_on_a_local_copy(tmp_path: Path):
    root = _published(tmp_path / "job")
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    env = {**os.environ, "BROWSER": str(browser)}
    result = subprocess.run([sys.executable, "-m", "kubetune.cli", "eval", "report", f"file://{root}", "--open"],
                            capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = Path(result.stdout.strip().removeprefix("wrote "))
    assert written.name == "report.html" and written.read_bytes() == (root / "eval/report.html").read_bytes()
    assert opened.read_text().strip() == written.resolve().as_uri()


@pytest.mark.parametrize("layout,expected", [
    ("published-no-eval", "{uri} has no eval/ folder: the job was published without an evaluation (no "
                          "spec.evaluation, or spec.evaluation.report: false)"),
    ("not-a-job", "{uri} has no eval/ folder and no manifest.json: it is not a job's published folder (give "
                  "status.adapter.uri of a succeeded FineTuneJob)"),
    ("eval-without-summary", "{uri} holds eval/blind.jsonl, eval/report.html but not eval/summary.json"),
])
def test_a_uri_without_an_evaluation_is_named_with_what_is_missing(tmp_path: Path, capsys, layout, expected):
    root = tmp_path / "job"
    root.mkdir()
    if layout == "published-no-eval":
        (root / "manifest.json").write_text("{}")
    if layout == "eval-without-summary":
        (root / "eval").mkdir()
        (root / "eval/report.html").write_text("<p>x</p>")
        (root / "eval/blind.jsonl").write_text("")
    rc, out, err = _run(capsys, f"file://{root}")
    assert (rc, out) == (1, "")
    assert err == f"kubetune eval report: {expected.format(uri=f'file://{root}')}\n"


def test_bad_files_and_bad_arguments(tmp_path: Path, capsys):
    root = _published(tmp_path / "job")
    (root / "eval/samples.jsonl").write_text('{"id": 0, "prompt": "p", "base": "b", "finetuned": "f"}\n{"id": -1}\n')
    rc, _, err = _run(capsys, f"file://{root}")
    assert rc == 1 and err.startswith(f"kubetune eval report: file://{root}/eval/samples.jsonl:2: not a valid EvalSample")
    assert _run(capsys, f"file://{root}", "-n", "-1")[:1] == (2,)
    rc, _, err = _run(capsys, "gs://bucket/job")
    assert rc == 1 and "unsupported storage URI 'gs://bucket/job'" in err


def test_s3_without_boto3_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # as in an install with the operator extra only
    rc, _, err = _run(capsys, "s3://bucket/out/team-a/job")
    assert (rc, err) == (1, "kubetune eval report: reading s3://bucket/out/team-a/job needs the Python package boto3: "
                            "pip install boto3\n")


def test_s3(tmp_path: Path, capsys, s3_env, s3_bucket):
    """The same, read from a real S3 server with the credentials in the environment."""
    root = _published(tmp_path / "job")
    open_store(f"s3://{s3_bucket}/out/team-a/job").upload_tree(root)
    rc, out, err = _run(capsys, f"s3://{s3_bucket}/out/team-a/job", "--width", "100")
    assert (rc, err) == (0, "") and "  rouge_l       0.41   0.22   -0.19  REGRESSED" in out and "#2 prompt:" in out
    rc, _, _ = _run(capsys, f"s3://{s3_bucket}/out/team-a/job/eval/report.html", "-o", str(tmp_path / "r.html"))
    assert rc == 0 and (tmp_path / "r.html").read_bytes() == (root / "eval/report.html").read_bytes()
    rc, _, err = _run(capsys, f"s3://{s3_bucket}/out/team-a/other")
    assert rc == 1 and f"s3://{s3_bucket}/out/team-a/other has no eval/ folder and no manifest.json" in err


def test_the_local_summary_links_the_report(tmp_path: Path, capsys):
    """`kubetune local` (quickstart) prints where the report is, from status.evaluation.reportUri, and the command
    it prints works on the adapter's folder."""
    from kubetune_local.cli import eval_report_line

    root = _published(tmp_path / "job")
    line = eval_report_line(f"file://{root}", {"reportUri": f"file://{root}/eval/report.html"})
    assert line == (f"evaluation report: {root}/eval/report.html (in the terminal: kubetune eval report file://{root}; "
                    "in the browser: add --open)")
    command = line.split("in the terminal: ")[1].split(";")[0].split()
    assert command[:3] == ["kubetune", "eval", "report"] and main(command[1:]) == 0
    assert "REGRESSED" in capsys.readouterr().out
    assert eval_report_line(f"file://{root}", {"baseline": {"evalLoss": 1.0}}) is None  # no spec.evaluation
