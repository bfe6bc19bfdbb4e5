"""Early stopping and the best checkpoint (hyperparameters.earlyStopping), on real TRL training of the tiny model
with file:// storage, the trainer in-process (`execute`).

The data is built to overfit: the held-out answers contradict the trained ones (tiny_data.WRONG), so the eval
loss falls while the model learns the words both share, then rises once it is sure of the trained answers.
Nothing plays a cluster part, except `SigtermAfter` in the resume test: it plays the kubelet's SIGTERM (the
trainer's handler does nothing but StopFlag.request()) at a fixed point, right after a given checkpoint is
complete in object storage, so the stop lands on the same step in every run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kubetune.api import exit_codes
from kubetune.api.termination import TerminationReport
from kubetune.status import finetunejob as ftj_status
from kubetune.status.finetunejob import Observed
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune_trainer.errors import StopFlag, UserError
from kubetune_trainer.main import execute
from kubetune_trainer.plan import Facts, plan_training, trl_args
from tests.fixtures.tiny_data import FACTS, WRONG, chat_records, write_jsonl
from tests.trainer.helpers import make_config, manifest_problems
from tests.unit.test_status_finetunejob import job, pod, terminated

INTERVAL, PATIENCE, MAX_STEPS = 2, 3, 40


def _config(tmp: Path, model: Path, name: str, metric: str = "eval_loss") -> Path:
    train = write_jsonl(tmp / "train.jsonl", chat_records(64))
    held_out = write_jsonl(tmp / "validation.jsonl", [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": WRONG[q]}]} for q, _ in FACTS])
    return make_config(tmp / f"{name}.json", job=name, model=f"file://{model}", train=f"file://{train}",
                       output=f"file://{tmp}/out", hyperparameters={"maxSteps": MAX_STEPS, "earlyStopping": {"patience": PATIENCE, "metric": metric}},
                       spec={"dataset": {"validation": f"file://{held_out}"},
                             "checkpointing": {"intervalSteps": INTERVAL, "keep": 1}})


def _run(config: Path, work: Path, termination: Path, stop: StopFlag | None = None) -> tuple[int, str]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KUBETUNE_TERMINATION_LOG", str(termination))
        env.setenv("KUBETUNE_METRICS_PORT", "0")
        env.setenv("HF_HUB_OFFLINE", "1")
        code = execute(config, stop=stop, work_dir=work)
    return code, termination.read_text()


def _evaluations(root: Path, metric: str = "eval_loss") -> list[tuple[int, float]]:
    """(step, metric) of the evaluations during training (metrics.jsonl; the final evaluation comes after the
    train summary)."""
    history = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    end = next(i for i, entry in enumerate(history) if "train_loss" in entry)
    return [(entry["step"], entry[metric]) for entry in history[:end] if "eval_loss" in entry]


def _stored_steps(root: Path) -> list[int]:
    return sorted(int(p.parent.name) for p in (root / "checkpoints").glob("*/COMPLETE"))


def _adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def stopped_early(tmp_path_factory, tiny_model_dir):
    """One uninterrupted run: (published folder, termination report text)."""
    tmp = tmp_path_factory.mktemp("early")
    code, text = _run(_config(tmp, tiny_model_dir, "overfit"), tmp / "work", tmp / "termination-log")
    assert code == exit_codes.SUCCESS, text
    return tmp / "out/team-a/overfit", text


@pytest.mark.slow
def test_training_stops_early_and_the_best_checkpoint_is_published(stopped_early):
    root, text = stopped_early
    evaluations = _evaluations(root)
    best_step, best_loss = min(evaluations, key=lambda e: e[1])
    last = evaluations[-1][0]
    # stopped PATIENCE evaluations after the best one, long before maxSteps; the best is not the last step
    assert [step for step, _ in evaluations] == list(range(INTERVAL, last + 1, INTERVAL))
    assert last == best_step + PATIENCE * INTERVAL < MAX_STEPS
    assert all(loss > best_loss for step, loss in evaluations if step > best_step)
    reason = (f"best eval_loss {best_loss:.4g} at step {best_step} of {last}; stopped early after {PATIENCE} "
              f"evaluations without improvement ({MAX_STEPS} steps planned)")
    report = TerminationReport.parse(text)
    assert (report.adapter.step, report.adapter.reason) == (best_step, reason)
    # the final evaluation ran on the published (best) weights
    assert report.evaluation.final.eval_loss == pytest.approx(best_loss, abs=1e-5)
    manifest = json.loads((root / "manifest.json").read_text())
    assert (manifest["adapter"]["step"], manifest["adapter"]["reason"]) == (best_step, reason)
    assert manifest_problems(root) == []
    assert f"Published weights: {reason}." in (root / "README.md").read_text()
    # the published adapter is the best checkpoint's, not the last one's; retention (keep 1) kept the best
    assert _stored_steps(root) == [best_step, last]
    published = _adapter_tensors(root / "adapter")
    best, newest = (_adapter_tensors(root / f"checkpoints/{s:08d}") for s in (best_step, last))
    assert published.keys() == best.keys()
    assert all(published[k].equal(best[k]) for k in best) and not all(published[k].equal(newest[k]) for k in newest)
    # the operator's status says the same (the termination message as kubelet keeps it on the pod)
    done = pod("p1", "Succeeded", state=terminated(0, text, "Completed"))
    status = ftj_status.derive_status(Observed(1, job([("Complete", "")], succeeded=1), [done],
                                               output_prefix=report.adapter.uri), None)
    assert (status.adapter.step, status.adapter.reason) == (best_step, reason)


@pytest.mark.slow
def test_early_stopping_on_token_accuracy_publishes_the_most_accurate_checkpoint(tmp_path, tiny_model_dir):
    """metric eval_mean_token_accuracy, which SFT's trainer measures at every evaluation: higher is better (the
    method registry's direction), so the published step is the first with the highest accuracy on the held-out
    answers, and training stops PATIENCE evaluations after it."""
    metric = "eval_mean_token_accuracy"
    code, text = _run(_config(tmp_path, tiny_model_dir, "accurate", metric), tmp_path / "work", tmp_path / "termination-log")
    assert code == exit_codes.SUCCESS, text
    root = tmp_path / "out/team-a/accurate"
    evaluations = _evaluations(root, metric)
    best_step, best = max(evaluations, key=lambda e: (e[1], -e[0]))  # the first of the highest: later ties are no gain
    last = evaluations[-1][0]
    assert last == best_step + PATIENCE * INTERVAL < MAX_STEPS, evaluations
    assert all(value <= best for step, value in evaluations if step > best_step)
    reason = (f"best {metric} {best:.4g} at step {best_step} of {last}; stopped early after {PATIENCE} evaluations "
              f"without improvement ({MAX_STEPS} steps planned)")
    report = TerminationReport.parse(text)
    assert (report.adapter.step, report.adapter.reason) == (best_step, reason)
    assert json.loads((root / "training_config.json").read_text())["effective"]["earlyStopping"]["metric"] == metric
    best_weights = _adapter_tensors(root / f"checkpoints/{best_step:08d}")
    published = _adapter_tensors(root / "adapter")
    assert all(published[k].equal(best_weights[k]) for k in best_weights)


class SigtermAfter(StopFlag):
    """The kubelet's SIGTERM, arriving right after checkpoint `step` is complete in object storage."""

    def __init__(self, marker: Path):
        super().__init__()
        self.marker = marker

    @property
    def requested(self) -> bool:
        if self.marker.exists():
            self.request()
        return self.event.is_set()


@pytest.mark.slow
def test_resume_keeps_the_patience_counter_and_the_best_checkpoint(stopped_early, tmp_path, tiny_model_dir, caplog):
    reference, reference_text = stopped_early
    expected = TerminationReport.parse(reference_text).adapter
    best_step = expected.step
    config = _config(tmp_path, tiny_model_dir, "resumed")
    root = tmp_path / "out/team-a/resumed"
    # preempted one step after the first evaluation without improvement: counter 1, best checkpoint not the newest
    first_worse = best_step + INTERVAL
    stop = SigtermAfter(root / f"checkpoints/{first_worse:08d}/COMPLETE")
    code, text = _run(config, tmp_path / "work", tmp_path / "termination-log", stop)
    assert code == exit_codes.PREEMPTED, text
    stopped = first_worse + 1
    assert text.startswith(f"Stopped by SIGTERM at step {stopped};")
    assert _stored_steps(root) == [best_step, stopped]  # keep 1: the best stays while it is best
    state = json.loads((root / f"checkpoints/{stopped:08d}/trainer_state.json").read_text())
    assert state["best_global_step"] == best_step
    assert state["stateful_callbacks"]["KubetuneEarlyStopping"]["attributes"] == {"early_stopping_patience_counter": 1}

    caplog.set_level(logging.INFO, logger="kubetune_trainer")
    code, text = _run(config, tmp_path / "rerun", tmp_path / "termination-log")  # a new pod: empty work dir
    assert code == exit_codes.SUCCESS, text
    assert f"resume: from checkpoint step {stopped} " in caplog.text
    # the counter went on from 1: the run stops where the uninterrupted one stopped (a reset counter stops
    # PATIENCE evaluations after the resume instead), and publishes the same best step
    adapter = TerminationReport.parse(text).adapter
    assert adapter.step == best_step
    assert (tmp_path / f"rerun/trainer/checkpoint-{best_step}").is_dir()  # brought back beside the newest
    assert adapter.reason.split(" at step")[1] == expected.reason.split(" at step")[1]
    assert _evaluations(root)[-1][0] == best_step + PATIENCE * INTERVAL
    best = _adapter_tensors(root / f"checkpoints/{best_step:08d}")
    published = _adapter_tensors(root / "adapter")
    assert all(published[k].equal(best[k]) for k in best)


def test_preflight_refuses_early_stopping_that_could_never_stop(tmp_path, tiny_model_dir, trainer_env):
    """Without maxSteps the steps depend on the data: the pre-flight counts them and says what to change."""
    from kubetune.api.preflight import PreflightReport
    from kubetune_trainer.main import main as trainer_main

    train = write_jsonl(tmp_path / "train.jsonl", chat_records(64))
    config = make_config(tmp_path / "config.json", job="pf", model=f"file://{tiny_model_dir}", train=f"file://{train}",
                         output=f"file://{tmp_path}/out",
                         hyperparameters={"maxSteps": None, "epochs": 1, "packing": False, "earlyStopping": {}},
                         spec={"checkpointing": {"intervalSteps": 2}})
    assert trainer_main(["--config", str(config), "--preflight"]) == exit_codes.USER_ERROR
    report = PreflightReport.parse(trainer_env.read_text())
    assert not report.passed and report.planned_steps == 8  # 61 examples (3 held out), batch 8
    assert report.message == (
        "hyperparameters.earlyStopping: patience 3 needs at least 4 evaluations before the last step, but the 8 "
        "planned steps with an evaluation every checkpointing.intervalSteps=2 steps give 3: set "
        "checkpointing.intervalSteps to at most 1, lower the patience, or train longer")


def test_the_plan_evaluates_and_saves_at_the_same_steps_and_loads_the_best():
    spec = FineTuneJobSpec.model_validate({
        "baseModel": {"uri": "hf://org/model"}, "dataset": {"train": "s3://data/train.jsonl"},
        "hyperparameters": {"earlyStopping": {"patience": 2, "minDelta": "0.01"}}, "checkpointing": {"intervalSteps": 50}})
    plan = plan_training(spec, Facts(output_dir="/work/trainer", train_examples=1000))
    args = trl_args(plan)  # transformers checks that save and eval strategies match
    assert (args.eval_strategy, args.eval_steps, args.save_strategy, args.save_steps) == ("steps", 50, "steps", 50)
    assert (args.load_best_model_at_end, args.metric_for_best_model, args.greater_is_better) == (True, "eval_loss", False)
    assert args.restore_callback_states_from_checkpoint and not args.save_on_each_node
    assert plan.summary["earlyStopping"] == {"metric": "eval_loss", "higherIsBetter": False, "patience": 2, "minDelta": "0.01",
                                             "evaluationEverySteps": 50}
    with pytest.raises(UserError, match="^hyperparameters.earlyStopping needs held-out data"):
        plan_training(spec, Facts(output_dir="/work/trainer", train_examples=1000, has_eval=False))
    plain = trl_args(plan_training(spec.model_copy(update={"hyperparameters": spec.hyperparameters.model_copy(
        update={"early_stopping": None})}), Facts(output_dir="/work/trainer", train_examples=1000)))
    assert not plain.load_best_model_at_end and plain.metric_for_best_model is None
