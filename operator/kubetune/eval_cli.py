"""`kubetune eval report <uri>`: a published job's evaluation (kubetune.api.evaluation) read from any storage URI the
storage layer serves (file://, s3:// with AWS_* / KUBETUNE_S3_ENDPOINT, hf://, https://).

Without options it prints the metrics baseline -> final and the first samples side by side (plain text: the operator
image has no rich). `--open` writes the HTML report to a local file and opens it in the browser; `--output PATH` writes
it there. `--blind` shows only the answers labelled A and B (eval/blind.jsonl): no model names, no scores, no key.
Exit 0 on success, 1 when the URI holds no evaluation or cannot be read, 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import textwrap
import webbrowser
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ValidationError

from kubetune.api.evaluation import (
    BLIND_FILE,
    BLIND_KEY_FILE,
    EVAL_DIR,
    REGRESSION_SAMPLES_FILE,
    REPORT_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
    BlindSample,
    EvalSample,
    EvalSummary,
    MetricSet,
)
from kubetune.api.storage_layout import LOSS_CURVE, MANIFEST
from kubetune_storage import Store, StorageError, open_store
from kubetune_trainer.report import change, fmt, regressed_names, render_blind_report, render_report

PROG = "kubetune eval report"


class ReportError(Exception):
    """What the user is told (exit 1)."""


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="a published fine-tune's evaluation (metrics, answers side by side, blind A/B)")
    cmds = ev.add_subparsers(dest="eval_command", required=True)
    rep = cmds.add_parser(
        "report", help="print or open the evaluation report of a published job",
        description="Print the metrics baseline -> final and the first samples side by side, or open the HTML report. "
        "URI: the job's published folder (status.adapter.uri), its eval/ folder, or eval/report.html "
        "(status.evaluation.reportUri).")
    rep.add_argument("uri", help="e.g. s3://bucket/out/team-a/my-job or file:///path/out/team-a/my-job")
    rep.add_argument("-n", "--samples", type=int, default=None, metavar="N",
                     help="samples printed side by side (default 3, with --blind all; 0: the metrics only)")
    rep.add_argument("--blind", action="store_true",
                     help="only the answers labelled A and B (eval/blind.jsonl): no model names, no scores")
    rep.add_argument("--open", action="store_true", help="write the HTML report to a local file and open it in the browser")
    rep.add_argument("-o", "--output", metavar="PATH", help="write the HTML report to PATH (with --open: and open it)")
    rep.add_argument("--width", type=int, default=None, help="terminal width (default: the terminal's)")
    rep.set_defaults(func=run)


def job_folder(uri: str) -> str:
    """The published folder from a URI naming it, its eval/ folder or one of the eval files."""
    uri = uri.rstrip("/")
    for rel in (SUMMARY_FILE, SAMPLES_FILE, REGRESSION_SAMPLES_FILE, BLIND_FILE, BLIND_KEY_FILE, REPORT_FILE, EVAL_DIR):
        if uri.endswith(f"/{rel}"):
            return uri[: -len(rel) - 1]
    return uri


class Published:
    """The eval files of one published folder, read on demand."""

    def __init__(self, uri: str) -> None:
        self.uri = job_folder(uri)
        self.store: Store = open_store(self.uri)

    def read(self, rel: str) -> bytes | None:
        return self.store.read_optional(rel)

    def missing(self, *wanted: str) -> ReportError:
        """The error for a folder without the wanted eval files: names the URI, what is missing and why it may be."""
        present = self.store.list(EVAL_DIR)
        if present:
            why = f"{self.uri} holds {', '.join(present)} but not {' or '.join(wanted)}"
        elif self.store.exists(MANIFEST):
            why = (f"{self.uri} has no {EVAL_DIR}/ folder: the job was published without an evaluation "
                   f"(no spec.evaluation, or spec.evaluation.report: false)")
        else:
            why = (f"{self.uri} has no {EVAL_DIR}/ folder and no {MANIFEST}: it is not a job's published folder "
                   f"(give status.adapter.uri of a succeeded FineTuneJob)")
        return ReportError(f"{PROG}: {why}")

    def model(self, rel: str, cls: type[BaseModel]):
        raw = self.read(rel)
        if raw is None:
            return None
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ReportError(f"{PROG}: {self.uri}/{rel} is not a valid {cls.__name__}: {exc}") from None

    def lines(self, rel: str, cls: type[BaseModel]) -> list | None:
        raw = self.read(rel)
        if raw is None:
            return None
        out = []
        for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
            if line.strip():
                try:
                    out.append(cls.model_validate_json(line))
                except ValidationError as exc:
                    raise ReportError(f"{PROG}: {self.uri}/{rel}:{number}: not a valid {cls.__name__}: {exc}") from None
        return out

    def html(self, blind: bool) -> str:
        """The page: the published report.html, else one rendered here from summary.json and samples.jsonl."""
        title = "/".join(self.uri.split("/")[-2:])
        if blind:
            pairs = self.lines(BLIND_FILE, BlindSample)
            if pairs is None:
                raise self.missing(BLIND_FILE)
            return render_blind_report(pairs, title=f"{title}: blind A/B")
        raw = self.read(REPORT_FILE)
        if raw is not None:
            return raw.decode("utf-8", errors="replace")
        summary, samples = self.model(SUMMARY_FILE, EvalSummary), self.lines(SAMPLES_FILE, EvalSample)
        if summary is None and samples is None:
            raise self.missing(REPORT_FILE, SUMMARY_FILE)
        return render_report(summary or EvalSummary(), samples or [], self.read(LOSS_CURVE), title=title,
                             details={"published": self.uri}, blind=self.lines(BLIND_FILE, BlindSample),
                             regression_samples=self.lines(REGRESSION_SAMPLES_FILE, EvalSample) or [])


def run(args: argparse.Namespace) -> int:
    if args.samples is not None and args.samples < 0:
        print(f"{PROG}: --samples must be 0 or more, not {args.samples}", file=sys.stderr)
        return 2
    try:
        published = Published(args.uri)
        if args.open or args.output:
            return _write_html(published, args)
        width = args.width or shutil.get_terminal_size((100, 24)).columns
        if args.blind:
            print(_blind_text(published, args.samples, width), end="")
        else:
            print(_text(published, 3 if args.samples is None else args.samples, width), end="")
        return 0
    except ReportError as exc:
        print(exc, file=sys.stderr)
        return 1
    except StorageError as exc:  # unreachable, denied, a bad URI: the layer's message names the URI
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # a scheme's client (boto3 for s3://) is not in the operator's extra
        package = (exc.name or "?").split(".")[0]
        print(f"{PROG}: reading {args.uri} needs the Python package {package}: pip install {package}", file=sys.stderr)
        return 1


def _write_html(published: Published, args: argparse.Namespace) -> int:
    page = published.html(args.blind)
    name = "blind.html" if args.blind else "report.html"
    path = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="kubetune-eval-")) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    print(f"wrote {path}")
    if args.open and not webbrowser.open(path.resolve().as_uri()):
        print(f"{PROG}: no browser could be started; open {path} yourself", file=sys.stderr)
    return 0


def _table(metrics: MetricSet, regressed: set[str]) -> list[str]:
    rows = [("metric", "baseline", "final", "change", "")] + [
        (str(m.name), fmt(m.baseline), fmt(m.final), change(m.baseline, m.final),
         "REGRESSED" if str(m.name) in regressed else "") for m in metrics.metrics]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return [f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}".rstrip()
            for r in rows]


def _text(published: Published, count: int, width: int) -> str:
    summary, samples = published.model(SUMMARY_FILE, EvalSummary), published.lines(SAMPLES_FILE, EvalSample)
    if summary is None:
        raise published.missing(SUMMARY_FILE)
    out = [f"Evaluation of {published.uri}"]
    if summary.task is not None:
        out += [f"Task set ({summary.task.prompts} prompts)", *_table(summary.task, set())]
    reg = summary.regression
    if reg is not None:
        out += [f"Regression set ({reg.prompts} prompts, largest drop allowed {reg.max_regression})",
                *_table(reg, regressed_names(summary))]
        out.append(f"Regressed: {'; '.join(reg.regressed)}" if reg.regressed else "No regression beyond the bound.")
    if summary.seconds is not None:
        out.append(f"Generation and scoring: {summary.seconds:.1f} s")
    report = summary.report_uri or (published.store.uri_of(REPORT_FILE) if published.read(REPORT_FILE) else None)
    out.append(f"Report: {report} (kubetune eval report {published.uri} --open)" if report else "Report: none published")
    if count and samples:
        out += ["", f"Samples (first {min(count, len(samples))} of {len(samples)}; all in {published.uri}/{SAMPLES_FILE}):"]
        for sample in samples[:count]:
            scores = ", ".join(f"{name} {fmt(sample.base_scores.get(name))} -> {fmt(sample.finetuned_scores.get(name))}"
                               for name in dict.fromkeys([*sample.base_scores, *sample.finetuned_scores]))
            out += _pair(sample.id, sample.prompt, sample.reference, ("base model", sample.base),
                         ("fine-tuned model", sample.finetuned), width)
            out += [f"    scores (base -> fine-tuned): {scores}"] if scores else []
    elif samples is None:
        out += ["", f"No {SAMPLES_FILE} was published."]
    return "\n".join(out) + "\n"


def _blind_text(published: Published, count: int | None, width: int) -> str:
    pairs = published.lines(BLIND_FILE, BlindSample)
    if pairs is None:
        raise published.missing(BLIND_FILE)
    out = [f"Blind A/B of {published.uri}: the two answers of each prompt in a random order "
           f"(the key is kept apart, in eval/blind-key.json)"]
    for pair in pairs[:count]:
        out += _pair(pair.id, pair.prompt, pair.reference, ("answer A", pair.a), ("answer B", pair.b), width)
    return "\n".join(out) + "\n"


def _wrap(text: str, width: int) -> list[str]:
    return [line for para in text.splitlines() or [""] for line in (textwrap.wrap(para, width) or [""])]


def _pair(id_: int, prompt: str, reference: str | None, left: tuple[str, str], right: tuple[str, str],
          width: int) -> list[str]:
    """One sample: the prompt and reference, then the two answers in two columns."""
    col = max(20, (width - 7) // 2)
    out = ["", f"#{id_} prompt:", *("    " + line for line in _wrap(prompt, width - 4))]
    if reference is not None:
        out += ["  reference:", *("    " + line for line in _wrap(reference, width - 4))]
    lines: Sequence[tuple[str, str]] = list(itertools.zip_longest(
        [left[0], "-" * len(left[0]), *_wrap(left[1], col)], [right[0], "-" * len(right[0]), *_wrap(right[1], col)],
        fillvalue=""))
    out += [f"    {a:<{col}} | {b}".rstrip() for a, b in lines]
    return out

