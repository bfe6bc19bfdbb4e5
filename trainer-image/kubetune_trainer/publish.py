"""Atomic publish of the result to <output>/<namespace>/<job>/ with manifest.json written LAST.

Order: stage everything locally -> delete the old manifest.json (the old adapter stops existing) ->
upload every file -> delete stale files of an earlier publish -> write manifest.json (sha256 of each
file). A failure anywhere before the last step leaves no manifest: the adapter does not exist, and a
rerun publishes again from scratch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.common import parse_hf_uri
from kubetune.api.finetunejob import Evaluation, PublishedAdapter
from kubetune.api.manifest import AdapterManifest, ManifestAdapter, ManifestBaseModel, ManifestEval, ManifestFile
from kubetune.api.storage_layout import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    LOSS_CURVE,
    MANIFEST,
    MERGED_DIR,
    METRICS_FILE,
    MODEL_CARD,
    RESOLVED_CONFIG,
)
from kubetune.api.termination import TerminationReport
from kubetune.api.trainer_config import TrainerConfig
from kubetune_storage import Store

from .evaluate import EvalOutcome, model_card_section, with_task_figures, write_eval_files
from .losscurve import loss_curve_png
from .report import stage_report

if TYPE_CHECKING:  # early_stopping imports transformers: publishing needs only the type
    from .early_stopping import Selection

log = logging.getLogger(__name__)


@dataclass
class Result:
    """What training produced, for the publish step."""

    model_dir: Path  # adapter (or full model) + tokenizer, saved locally
    merged_dir: Path | None
    target_modules: list[str] | None
    log_history: list[dict[str, Any]]
    evaluation: dict[str, dict[str, float | None]]  # baseline/final -> {"evalLoss", "perplexity"}
    summary: dict[str, Any]  # effective training settings (plan.summary + data facts)
    extra_dirs: dict[str, Path] = field(default_factory=dict)  # published as <name>/ as they are (e.g. tensorboard)
    selection: Selection | None = None  # the step of the published weights, and why (early_stopping.selection)
    task: EvalOutcome | None = None  # spec.evaluation's figures and samples (kubetune_trainer.evaluate)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_reference(uri: str) -> str:
    """What adapter_config.json names as the base model: the Hub repo id for hf://, else the URI."""
    return parse_hf_uri(uri).repo_id if uri.startswith("hf://") else uri


def model_card(config: TrainerConfig, result: Result) -> str:
    spec = config.spec
    adapter = spec.adapter
    base = hub_reference(spec.base_model.uri)
    rows = "\n".join(f"| {name} | {fig.get('evalLoss', '-')} | {fig.get('perplexity', '-')} |"
                     for name, fig in result.evaluation.items() if fig)
    settings = "\n".join(f"- {k}: {v}" for k, v in result.summary.items() if v is not None and not isinstance(v, dict))
    library = "transformers" if adapter.type == "full" else "peft"
    if adapter.type == "full":
        loader = 'from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained("adapter")'
    else:
        loader = (f'from peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n'
                  f'base = AutoModelForCausalLM.from_pretrained("{base}")\nmodel = PeftModel.from_pretrained(base, "adapter")')
    revision = f" (revision `{spec.base_model.revision}`)" if spec.base_model.revision else ""
    weights = f"\nPublished weights: {result.selection.reason}." if result.selection else ""
    shape = (f" (rank {adapter.rank}, alpha {adapter.alpha or 2 * adapter.rank}, "
             f"modules {', '.join(result.target_modules or [])})" if adapter.type != "full" else "")
    return f"""---
base_model: {base}
library_name: {library}
tags: [kubetune, {spec.method.type}, {adapter.type}]
---

# {config.job.namespace}/{config.job.name}

Fine-tuned by kubetune from `{spec.base_model.uri}`{revision}
with method **{spec.method.type}** and adapter **{adapter.type}**{shape}.
Training data: `{spec.dataset.train}`.{weights}

## Evaluation (held-out data)

| model | eval loss | perplexity |
|---|---|---|
{rows or "| - | - | - |"}

{model_card_section(result.task.summary if result.task else None)}## Training settings

{settings}

## Use

```python
{loader}
```

Files and their sha256 are listed in `manifest.json`; the loss curve is `{LOSS_CURVE}`, the metrics history `{METRICS_FILE}`.
"""


def loss_curve(config: TrainerConfig, result: Result) -> bytes:
    """loss_curve.png: training and evaluation loss per step, the baseline's eval loss as a line."""
    train = [(int(e["step"]), float(e["loss"])) for e in result.log_history if "loss" in e and "step" in e]
    evals = [(int(e["step"]), float(e["eval_loss"])) for e in result.log_history if "eval_loss" in e and "step" in e]
    baseline = (result.evaluation.get("baseline") or {}).get("evalLoss")
    return loss_curve_png(train, evals, baseline=baseline, title=f"{config.job.namespace}/{config.job.name}")


def stage(config: TrainerConfig, result: Result, dest: Path) -> list[Path]:
    """Lay out every file to publish under dest (except the manifest). Returns them, sorted."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copytree(result.model_dir, dest / ADAPTER_DIR)
    for name, folder in result.extra_dirs.items():
        shutil.copytree(folder, dest / name)
    if result.merged_dir is not None:
        shutil.copytree(result.merged_dir, dest / MERGED_DIR)
    with (dest / METRICS_FILE).open("w") as handle:
        for entry in result.log_history:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
    curve = loss_curve(config, result)
    (dest / LOSS_CURVE).write_bytes(curve)
    resolved = {"trainerConfig": config.to_dict(), "effective": result.summary}
    (dest / RESOLVED_CONFIG).write_text(json.dumps(resolved, indent=2, sort_keys=True) + "\n")
    if result.task is not None and config.spec.evaluation is not None:  # eval/ before the manifest lists every file
        stage_report(dest, config, result.task, curve, result.selection.reason if result.selection else None)
        result.task.summary = write_eval_files(dest, result.task, config.spec.evaluation)
    (dest / MODEL_CARD).write_text(model_card(config, result))
    return sorted(p for p in dest.rglob("*") if p.is_file())


def build_manifest(config: TrainerConfig, result: Result, root: Path, files: list[Path]) -> AdapterManifest:
    spec = config.spec
    lora = spec.adapter.type != "full"
    job = {"namespace": config.job.namespace, "name": config.job.name}
    if config.job.uid:
        job["uid"] = config.job.uid
    return AdapterManifest(
        job=job,
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        base_model=ManifestBaseModel(uri=spec.base_model.uri, revision=spec.base_model.revision),
        method=spec.method.type,
        adapter=ManifestAdapter(
            type=spec.adapter.type,
            path=ADAPTER_DIR,
            rank=spec.adapter.rank if lora else None,
            alpha=(spec.adapter.alpha or 2 * spec.adapter.rank) if lora else None,
            target_modules=result.target_modules if lora else None,
            merged_path=MERGED_DIR if result.merged_dir is not None else None,
            step=result.selection.step if result.selection else None,
            reason=result.selection.reason if result.selection else None,
        ),
        evaluation={k: ManifestEval(eval_loss=v.get("evalLoss"), perplexity=v.get("perplexity"))
                    for k, v in result.evaluation.items() if v},
        files=[ManifestFile(path=p.relative_to(root).as_posix(), sha256=sha256_file(p), size=p.stat().st_size)
               for p in files],
    )


def publish(config: TrainerConfig, result: Result, out: Store, work_dir: Path) -> dict[str, Any]:
    """Stage, upload, manifest last. Returns the termination report for the operator
    (kubetune.api.termination.TerminationReport, in its wire form)."""
    root = work_dir / "publish"
    files = stage(config, result, root)
    manifest = build_manifest(config, result, root, files)
    manifest_bytes = (json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n").encode()
    names = {p.relative_to(root).as_posix() for p in files}

    out.delete([MANIFEST])
    stale = [n for n in out.list("") if n != MANIFEST and not n.startswith(CHECKPOINTS_DIR + "/") and n not in names]
    for path in files:
        out.upload(path, path.relative_to(root).as_posix())
    if stale:
        log.info("publish: removing %d file(s) of an earlier publish", len(stale))
        out.delete(stale)
    out.write_bytes(MANIFEST, manifest_bytes)
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    log.info("publish: %d files + %s (sha256 %s) at %s", len(files), MANIFEST, digest, out.uri)
    return TerminationReport(
        adapter=PublishedAdapter(uri=config.output_prefix, manifest_sha256=digest, type=manifest.adapter.type,
                                 rank=manifest.adapter.rank, step=manifest.adapter.step, reason=manifest.adapter.reason),
        evaluation=with_task_figures(Evaluation.model_validate({k: v for k, v in result.evaluation.items() if v}),
                                     result.task),
    ).to_dict()
