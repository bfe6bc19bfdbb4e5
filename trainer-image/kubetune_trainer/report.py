"""The side-by-side evaluation report (kubetune.api.evaluation): eval/report.html, eval/blind.jsonl, eval/blind-key.json.

`render_report` is pure: the contract's models in, one self-contained HTML page out (inline CSS, the loss curve as
a data: URI, no script, no external asset). It has two views, switched by two radio buttons and CSS alone:
- "Side by side": the metrics baseline -> final (task set; regression set with the regressed metrics marked),
  the loss curve, and each sample's prompt, reference, base answer, fine-tuned answer and per-sample scores;
- "Blind A/B": the same prompts with the two answers in a seeded random order, labelled A and B, with neither
  model names nor scores. The key (which model wrote A) is eval/blind-key.json, never in the page.
`render_blind_report` is the blind view alone (a page to hand to raters: it holds nothing that unblinds).

Every text (prompts and answers are user data) is HTML-escaped. Used by the trainer at publish time (`stage_report`,
called by publish.stage before write_eval_files writes summary.json) and by `kubetune eval report`
(kubetune.eval_cli), which renders a page from summary.json and samples.jsonl when a folder has no report.html.
Light to import (standard library, kubetune.api, kubetune_storage): the operator image runs it without torch.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from kubetune.api.evaluation import (
    BLIND_FILE,
    BLIND_KEY_FILE,
    EVAL_DIR,
    REGRESSION_SAMPLES_FILE,
    REPORT_FILE,
    SAMPLES_FILE,
    BlindKey,
    BlindSample,
    EvalSample,
    EvalSummary,
    MetricSet,
)
from kubetune_storage import join_uri

if TYPE_CHECKING:
    from kubetune.api.trainer_config import TrainerConfig

    from .evaluate import EvalOutcome

MAX_SAMPLES = 500  # rows in the page; every sample stays in samples.jsonl and blind.jsonl
BASE, FINETUNED = "base", "finetuned"  # BlindKey.a_is values

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;padding:0 24px 48px;max-width:1400px;color:#1d1d1f}
h1{font-size:22px;margin:20px 0 6px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
dl.job{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:8px 0;color:#444}dl.job dt{font-weight:600}
dl.job dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:6px 0 12px}th,td{border:1px solid #d0d0d0;padding:5px 8px;vertical-align:top;text-align:left}
th{background:#f3f3f5}table.metrics td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.regressed td{background:#fde2e2;color:#8a1010;font-weight:600}tr.down td{background:#fff4d6}tr.up td.change{color:#0a6b2d}
p.verdict{color:#8a1010;font-weight:600}p.note{color:#555}
table.samples{width:100%;table-layout:fixed}table.samples .id{width:3em}
pre.text{white-space:pre-wrap;overflow-wrap:anywhere;margin:0;font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
table.scores{margin:0}table.scores td,table.scores th{border:none;padding:1px 6px 1px 0;font-size:12px}
img.curve{max-width:min(100%,960px);height:auto;border:1px solid #ddd}
input.view{position:absolute;opacity:0;pointer-events:none}
nav.views label{display:inline-block;padding:6px 14px;border:1px solid #bbb;border-radius:6px;margin-right:6px;cursor:pointer}
#view-side:checked~header label[for=view-side],#view-blind:checked~header label[for=view-blind]{background:#1d1d1f;color:#fff}
#view-side:checked~#blind,#view-blind:checked~#side{display:none}
"""


def blind_pairs(samples: Sequence[EvalSample], seed: int) -> tuple[list[BlindSample], BlindKey]:
    """The samples' two answers in an order drawn per sample from `seed` (the same seed, the same order), labelled A
    and B, and the key saying which model wrote A."""
    rng = random.Random(seed)
    blind, a_is = [], {}
    for sample in samples:
        base_first = rng.random() < 0.5
        a, b = (sample.base, sample.finetuned) if base_first else (sample.finetuned, sample.base)
        blind.append(BlindSample(id=sample.id, prompt=sample.prompt, reference=sample.reference, a=a, b=b))
        a_is[str(sample.id)] = BASE if base_first else FINETUNED
    return blind, BlindKey(seed=seed, a_is=a_is)


def fmt(value: float | None) -> str:
    """A figure for people: '-' for none, integers without decimals, else 4 significant digits."""
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def change(baseline: float | None, final: float | None) -> str:
    return "-" if baseline is None or final is None else ("0" if final == baseline else f"{final - baseline:+.4g}")


def regressed_names(summary: EvalSummary) -> set[str]:
    """Metrics named in the regression verdict ('rouge_l: 0.41 -> 0.22' -> 'rouge_l')."""
    return {entry.split(":", 1)[0].strip() for entry in (summary.regression.regressed if summary.regression else [])}


def _text(value: str | None) -> str:
    return f'<pre class="text">{escape(value)}</pre>' if value else '<span class="note">-</span>'


def _metrics_table(metrics: MetricSet, regressed: set[str], table_id: str) -> str:
    rows = []
    for m in metrics.metrics:
        name = str(m.name)
        down = m.baseline is not None and m.final is not None and m.final < m.baseline
        up = m.baseline is not None and m.final is not None and m.final > m.baseline
        cls = "regressed" if name in regressed else "down" if down else "up" if up else ""
        rows.append(f'<tr class="{cls}"><td>{escape(name)}</td><td class="num">{fmt(m.baseline)}</td>'
                    f'<td class="num">{fmt(m.final)}</td><td class="num change">{change(m.baseline, m.final)}</td></tr>')
    if not rows:
        return '<p class="note">No metric was computed.</p>'
    return (f'<table class="metrics" id="{table_id}"><thead><tr><th>metric</th><th>baseline (base model)</th>'
            f'<th>final (fine-tuned)</th><th>change</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _metrics(summary: EvalSummary) -> str:
    parts = ["<h2>Metrics</h2>"]
    if summary.task is not None:
        parts += [f"<h3>Task set ({summary.task.prompts} prompts)</h3>",
                  _metrics_table(summary.task, set(), "task-metrics")]
    reg = summary.regression
    if reg is not None:
        parts += [f"<h3>Regression set ({reg.prompts} prompts, largest drop allowed {escape(reg.max_regression)})</h3>",
                  _metrics_table(reg, regressed_names(summary), "regression-metrics")]
        parts.append(f'<p class="verdict">Regressed: {escape("; ".join(reg.regressed))}</p>' if reg.regressed
                     else '<p class="note">No metric of the regression set dropped beyond the bound.</p>')
    if summary.task is None and reg is None:
        parts.append('<p class="note">No metric was computed.</p>')
    if summary.seconds is not None:
        parts.append(f'<p class="note">Generation and scoring took {summary.seconds:.1f} s (both models).</p>')
    return "".join(parts)


def _curve(png: bytes | None) -> str:
    if not png:
        return '<h2>Loss curve</h2><p class="note">No loss curve was published.</p>'
    data = base64.b64encode(png).decode("ascii")
    return f'<h2>Loss curve</h2><img class="curve" alt="loss curve" src="data:image/png;base64,{data}">'


def _scores(sample: EvalSample) -> str:
    names = list(dict.fromkeys([*sample.base_scores, *sample.finetuned_scores]))
    if not names:
        return '<span class="note">-</span>'
    rows = "".join(f"<tr><td>{escape(n)}</td><td>{fmt(sample.base_scores.get(n))}</td>"
                   f"<td>{fmt(sample.finetuned_scores.get(n))}</td></tr>" for n in names)
    return f'<table class="scores"><tr><th></th><th>base</th><th>fine-tuned</th></tr>{rows}</table>'


def _cut_note(total: int, what: str) -> str:
    return (f'<p class="note">The first {MAX_SAMPLES} of {total} samples; all of them are in {escape(what)}.</p>'
            if total > MAX_SAMPLES else "")


def _samples(samples: Sequence[EvalSample], heading: str, table_id: str, where: str) -> str:
    rows = "".join(
        f'<tr class="sample"><td class="id">{s.id}</td><td class="prompt">{_text(s.prompt)}</td>'
        f'<td class="reference">{_text(s.reference)}</td><td class="base">{_text(s.base)}</td>'
        f'<td class="finetuned">{_text(s.finetuned)}</td><td class="scores">{_scores(s)}</td></tr>'
        for s in samples[:MAX_SAMPLES])
    head = ('<tr><th class="id">#</th><th>prompt</th><th>reference</th><th>base model</th><th>fine-tuned model</th>'
            '<th>scores</th></tr>')
    body = (f'<table class="samples" id="{table_id}"><thead>{head}</thead><tbody>{rows}</tbody></table>' if samples
            else '<p class="note">No sample was evaluated.</p>')
    return f"<h2>{heading}</h2>{_cut_note(len(samples), where)}{body}"


def blind_section(blind: Sequence[BlindSample]) -> str:
    """The blind view: prompt, reference and answers A and B; nothing that tells which model wrote which (nor the
    seed: with it, the order could be drawn again)."""
    rows = "".join(
        f'<tr class="pair"><td class="id">{s.id}</td><td class="prompt">{_text(s.prompt)}</td>'
        f'<td class="reference">{_text(s.reference)}</td><td class="a">{_text(s.a)}</td><td class="b">{_text(s.b)}</td></tr>'
        for s in blind[:MAX_SAMPLES])
    head = '<tr><th class="id">#</th><th>prompt</th><th>reference</th><th>answer A</th><th>answer B</th></tr>'
    body = (f'<table class="samples" id="blind-pairs"><thead>{head}</thead><tbody>{rows}</tbody></table>' if blind
            else '<p class="note">No sample was evaluated.</p>')
    return (f'<h2>Blind A/B</h2><p class="note">For each prompt the two answers were put in a random order and '
            f'labelled A and B. Rate them without knowing which model wrote which; the key is {BLIND_KEY_FILE} (kept out '
            f'of this page).</p>{_cut_note(len(blind), BLIND_FILE)}{body}')


def _details(details: Mapping[str, str] | None) -> str:
    items = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in (details or {}).items() if v)
    return f'<dl class="job">{items}</dl>' if items else ""


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n")


def render_report(summary: EvalSummary, samples: Sequence[EvalSample], loss_curve_png: bytes | None, *, title: str,
                  details: Mapping[str, str] | None = None, seed: int = 0,
                  blind: Sequence[BlindSample] | None = None, regression_samples: Sequence[EvalSample] = ()) -> str:
    """The whole report page. `samples`: the task set's; `regression_samples`: the regression set's (shown side by
    side too, not in the blind view); `blind`: the shuffled pairs (default: blind_pairs(samples, seed))."""
    if blind is None:
        blind = blind_pairs(samples, seed)[0]
    header = (f"<header><h1>{escape(title)}</h1>{_details(details)}"
              '<nav class="views"><label for="view-side">Side by side</label>'
              '<label for="view-blind">Blind A/B</label></nav></header>')
    side = [_metrics(summary), _curve(loss_curve_png),
            _samples(samples, "Samples side by side", "side-by-side", SAMPLES_FILE)]
    if regression_samples:
        side.append(_samples(regression_samples, "Regression set side by side", "regression-side-by-side",
                             REGRESSION_SAMPLES_FILE))
    body = ('<input type="radio" class="view" name="view" id="view-side" checked>'
            '<input type="radio" class="view" name="view" id="view-blind">'
            f'{header}<main id="side">{"".join(side)}</main><main id="blind">{blind_section(blind)}</main>')
    return _page(title, body)


def render_blind_report(blind: Sequence[BlindSample], *, title: str) -> str:
    """The blind view alone: a page to give raters (no model names, no scores, no metrics, no key)."""
    return _page(title, f"<header><h1>{escape(title)}</h1></header><main>{blind_section(blind)}</main>")


def write_report_files(eval_dir: Path, summary: EvalSummary, samples: Sequence[EvalSample],
                       loss_curve_png: bytes | None, seed: int, *, title: str,
                       details: Mapping[str, str] | None = None,
                       regression_samples: Sequence[EvalSample] = ()) -> list[Path]:
    """Write report.html, blind.jsonl and blind-key.json into `eval_dir` (the staged eval/ folder). Returns them."""
    blind, key = blind_pairs(samples, seed)
    eval_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: eval_dir / PurePosixPath(name).relative_to(EVAL_DIR).as_posix()
             for name in (REPORT_FILE, BLIND_FILE, BLIND_KEY_FILE)}
    paths[REPORT_FILE].write_text(render_report(summary, samples, loss_curve_png, title=title, details=details,
                                                seed=seed, blind=blind, regression_samples=regression_samples),
                                 encoding="utf-8")
    paths[BLIND_FILE].write_text("".join(json.dumps(b.to_dict(), ensure_ascii=False) + "\n" for b in blind),
                                 encoding="utf-8")
    paths[BLIND_KEY_FILE].write_text(json.dumps(key.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return list(paths.values())


def stage_report(dest: Path, config: TrainerConfig, outcome: EvalOutcome, loss_curve_png: bytes | None,
                 weights: str | None = None) -> None:
    """At publish, with spec.evaluation.report: the report files into the staged folder `dest` (before the manifest
    lists them), and `outcome.summary.report_uri` set to where report.html is published (summary.json and
    status.evaluation carry it). The blind order is drawn from a fresh random seed (kept in the key), not from the
    job's seed: with the job's spec, a reviewer could otherwise draw the order again."""
    spec, job = config.spec, config.job
    if spec.evaluation is None or not spec.evaluation.report:
        return
    outcome.summary.report_uri = join_uri(config.output_prefix, REPORT_FILE)
    details = {"published": config.output_prefix, "base model": spec.base_model.uri, "method": spec.method.type,
               "adapter": spec.adapter.type, "training data": spec.dataset.train, "weights": weights,
               "evaluation prompts": spec.evaluation.prompts or "the held-out split",
               "regression set": spec.evaluation.regression_set}
    write_report_files(dest / EVAL_DIR, outcome.summary, outcome.samples, loss_curve_png, secrets.randbits(63),
                       title=f"{job.namespace}/{job.name}: evaluation", details=details,
                       regression_samples=outcome.regression_samples)
