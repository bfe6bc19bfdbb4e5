"""Preemption: the trainer as a real process (`python -m kubetune_trainer --config PATH`).

SIGKILL mid-run -> a rerun resumes from the newest complete checkpoint and finishes;
SIGTERM -> a checkpoint of the current step is written before the process exits 143.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubetune.api import exit_codes
from kubetune_trainer.main import execute
from tests.fixtures.tiny_data import FACTS, chat_records, write_jsonl
from tests.trainer.helpers import make_config, manifest_problems, progress_lines

pytestmark = pytest.mark.slow
START_TIMEOUT = 240  # importing torch + transformers + trl on a busy 2-core machine


def _start(config: Path, tmp_path: Path, termination: Path) -> subprocess.Popen:
    env = {**os.environ, "KUBETUNE_TERMINATION_LOG": str(termination), "KUBETUNE_METRICS_PORT": "0",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    log = (tmp_path / "trainer.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "kubetune_trainer", "--config", str(config)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)


def _wait_for(predicate, process: subprocess.Popen, tmp_path: Path, what: str, timeout: float = START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"{what} did not happen (exit {process.poll()}):\n" + (tmp_path / "trainer.log").read_text()[-3000:])


def test_sigkill_mid_run_then_rerun_resumes(tmp_path, tiny_model_dir, trainer_env, caplog):
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(64))
    progress = tmp_path / "progress.jsonl"
    config = make_config(tmp_path / "config.json", job="killed", model=f"file://{tiny_model_dir}",
                         train=f"file://{train}", output=f"file://{tmp_path}/out", progress_file=progress,
                         hyperparameters={"maxSteps": 60}, spec={"checkpointing": {"intervalSteps": 10, "keep": 2}})
    root = tmp_path / "out/team-a/killed"
    process = _start(config, tmp_path, trainer_env)
    _wait_for(lambda: (root / "checkpoints/00000020/COMPLETE").exists(), process, tmp_path, "checkpoint 20")
    process.send_signal(signal.SIGKILL)
    assert process.wait(30) == -signal.SIGKILL
    assert not (root / "manifest.json").exists()
    complete = sorted(int(p.parent.name) for p in (root / "checkpoints").glob("*/COMPLETE"))
    newest = complete[-1]
    assert 20 <= newest < 60, complete
    killed_lines = len(progress_lines(progress))

    caplog.set_level(logging.INFO, logger="kubetune_trainer")
    assert execute(config, work_dir=tmp_path / "rerun") == exit_codes.SUCCESS, trainer_env.read_text()
    assert f"resume: from checkpoint step {newest} " in caplog.text
    rerun = progress_lines(progress)[killed_lines:]
    # the rerun starts at the checkpoint (work lost < one interval of 10 steps) and ends at step 60
    assert [p["progress"]["step"] for p in rerun if p["progress"].get("totalSteps")][0] == newest
    assert rerun[-1]["progress"]["step"] == 60
    phases = list(dict.fromkeys(p["progress"]["phase"] for p in rerun))
    assert "RestoringCheckpoint" in phases and "BaselineEvaluation" not in phases, phases  # resumed: no second baseline
    history = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    logged_steps = [h["step"] for h in history if "loss" in h]
    assert logged_steps[0] == 1 and logged_steps[-1] == 60  # one history across both processes
    assert manifest_problems(root) == []
    assert json.loads(trainer_env.read_text())["evaluation"]["final"]["evalLoss"] < 0.1
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["00000050", "00000060"]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.fixtures.tiny_model import greedy_answer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(root / "adapter"))
    assert greedy_answer(model, AutoTokenizer.from_pretrained(root / "adapter"), FACTS[2][0]) == FACTS[2][1]


def test_sigterm_writes_a_checkpoint_then_exits_143(tmp_path, tiny_model_dir, trainer_env):
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(64))
    progress = tmp_path / "progress.jsonl"
    # no periodic checkpoint would ever happen: only SIGTERM makes one
    config = make_config(tmp_path / "config.json", job="evicted", model=f"file://{tiny_model_dir}",
                         train=f"file://{train}", output=f"file://{tmp_path}/out", progress_file=progress,
                         hyperparameters={"maxSteps": 100000}, spec={"checkpointing": {"intervalSteps": 1000000}})
    root = tmp_path / "out/team-a/evicted"
    process = _start(config, tmp_path, trainer_env)
    _wait_for(lambda: any(p["progress"]["step"] >= 3 for p in progress_lines(progress)), process, tmp_path, "step 3")
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == exit_codes.PREEMPTED == 143
    assert time.monotonic() - sent < 30  # well inside the 120 s grace period
    markers = list((root / "checkpoints").glob("*/COMPLETE"))
    assert len(markers) == 1
    step = int(markers[0].parent.name)
    assert step >= 3
    state = json.loads((markers[0].parent / "trainer_state.json").read_text())
    assert state["global_step"] == step
    assert trainer_env.read_text() == (
        f"Stopped by SIGTERM at step {step}; the checkpoint of step {step} is in file://{root}/checkpoints; "
        "the next pod resumes from it.")
    assert not (root / "manifest.json").exists()
    assert progress_lines(progress)[-1]["checkpoints"] == [{"step": step, "uri": f"file://{root}/checkpoints/{step:08d}"}]
