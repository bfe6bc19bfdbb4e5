"""Data-parallel training: topology, the launcher's outcome folding, and real multi-process runs.

The process tests run the real entry point (`python -m kubetune_trainer`), which starts the real
torchrun with gloo on CPU. The one thing faked is the GPU count: `KUBETUNE_PROCESSES_PER_NODE` stands
in for one process per GPU (NCCL and CUDA cannot run here; the DDP code path is the same), and two
"pods" of a multi-node run are two launcher processes on 127.0.0.1 with their own work folders.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubetune.api import exit_codes
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.validation import parse
from kubetune.api.constants import ENV_NNODES, ENV_NODE_RANK
from kubetune_trainer.distributed import (
    ENV_PROCESSES_PER_NODE,
    Topology,
    combine,
    topology,
    torchrun_command,
)
from kubetune_trainer.errors import UserError
from kubetune_trainer.main import execute
from tests.fixtures.tiny_data import FACTS, chat_records, write_jsonl
from tests.trainer.helpers import make_config, manifest_problems, progress_lines

START_TIMEOUT = 300  # two ranks importing torch + transformers + trl on a busy 2-core machine


def _spec(gpus: int = 1, nodes: int = 1) -> FineTuneJobSpec:
    return parse(FineTuneJobSpec, {"baseModel": {"uri": "hf://org/m"}, "dataset": {"train": "s3://b/d.jsonl"},
                                   "output": {"uri": "s3://b/out"}, "resources": {"gpus": gpus, "nodes": nodes}})


# ---- topology (pure) ----------------------------------------------------------------------------


@pytest.mark.parametrize(("gpus", "visible", "env", "expected"), [
    (1, 1, {}, Topology(nnodes=1, nproc_per_node=1)),
    (8, 8, {}, Topology(nnodes=1, nproc_per_node=8)),
    (4, 2, {}, Topology(nnodes=1, nproc_per_node=2)),  # never more processes than GPUs the pod sees
    (0, 0, {}, Topology(nnodes=1, nproc_per_node=1)),  # CPU
    (2, 0, {}, Topology(nnodes=1, nproc_per_node=1)),  # requested GPUs but none visible: one CPU process
    (0, 0, {ENV_PROCESSES_PER_NODE: "3"}, Topology(nnodes=1, nproc_per_node=3)),
])
def test_one_process_per_visible_requested_gpu(gpus, visible, env, expected):
    topo = topology(_spec(gpus=gpus), env, visible)
    assert topo == expected
    assert topo.distributed == (topo.world_size > 1)


def test_multi_node_topology_comes_from_the_indexed_job_env():
    env = {ENV_NNODES: "3", ENV_NODE_RANK: "2", "MASTER_ADDR": "ftj-a-trainer-0.ftj-a-nodes", "MASTER_PORT": "29500"}
    topo = topology(_spec(gpus=4, nodes=3), env, 4)
    assert topo == Topology(nnodes=3, nproc_per_node=4, node_rank=2, master_addr="ftj-a-trainer-0.ftj-a-nodes",
                            master_port=29500)
    assert topo.world_size == 12
    cmd = torchrun_command(topo, Path("/etc/kubetune/config.json"), 120)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=4", "--max-restarts=0", "--shutdown-timeout=120",
                       "--nnodes=3", "--node-rank=2", "--master-addr=ftj-a-trainer-0.ftj-a-nodes", "--master-port=29500",
                       "--rdzv-conf=timeout=1800", "-m", "kubetune_trainer", "--config", "/etc/kubetune/config.json"]
    single = torchrun_command(Topology(nnodes=1, nproc_per_node=2), Path("c.json"), 30)
    assert "--standalone" in single and not any(a.startswith("--master-addr") for a in single)


@pytest.mark.parametrize(("env", "message"), [
    ({}, "resources.nodes is 2 but KUBETUNE_NODE_RANK and MASTER_ADDR are not set"),
    ({ENV_NODE_RANK: "0"}, "resources.nodes is 2 but MASTER_ADDR is not set"),
    ({ENV_NODE_RANK: "2", "MASTER_ADDR": "h"}, "KUBETUNE_NODE_RANK=2 must be between 0 and 1"),
    ({ENV_NODE_RANK: "x", "MASTER_ADDR": "h"}, "KUBETUNE_NODE_RANK='x' must be an integer"),
    ({ENV_NODE_RANK: "0", "MASTER_ADDR": "h", "MASTER_PORT": "0"}, "MASTER_PORT=0 must be between 1 and 65535"),
])
def test_bad_multi_node_env_is_a_user_error_naming_the_variable(env, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        topology(_spec(gpus=1, nodes=2), env, 1)


# ---- folding the ranks' outcomes (pure) ---------------------------------------------------------

REPORT = {"adapter": {"uri": "s3://b/out/ns/j", "manifestSha256": "ab" * 32, "type": "lora"}}


def _o(code: int, message) -> dict:
    return {"code": code, "message": message}


def test_success_needs_every_rank_and_speaks_with_the_lowest_rank():
    assert combine({0: _o(0, REPORT), 1: _o(0, REPORT)}, signalled=False, launcher_rc=0) == (0, REPORT)
    assert combine({2: _o(0, REPORT), 3: _o(0, REPORT)}, signalled=False, launcher_rc=0) == (0, REPORT)
    code, message = combine({0: _o(0, REPORT), 1: None}, signalled=False, launcher_rc=1, log_tail="Killed\n")
    assert code == exit_codes.INTERNAL_ERROR
    assert message.startswith("Internal error: training rank(s) 1 exited without a report")
    assert "torchrun exited 1" in message and message.endswith("Last output: Killed")
    # a silent rank is the first cause; its peers' errors come after it
    code, message = combine({0: _o(203, "Internal error: RuntimeError: Connection closed by peer"), 1: None},
                            signalled=False, launcher_rc=1)
    assert code == exit_codes.INTERNAL_ERROR
    assert message == ("Internal error: training rank(s) 1 exited without a report (killed, out of host memory, or a "
                       "crash in native code); torchrun exited 1. Then rank 0: Internal error: RuntimeError: Connection "
                       "closed by peer")


def test_a_user_error_wins_over_the_errors_it_causes_on_other_ranks():
    outcomes = {0: _o(203, "Internal error: RuntimeError: Connection closed by peer"),
                1: _o(1, "train.jsonl:17: messages[2].role must be one of system,user,assistant"), 2: None}
    assert combine(outcomes, signalled=False, launcher_rc=1) == (
        1, "train.jsonl:17: messages[2].role must be one of system,user,assistant")
    code, message = combine({0: _o(0, REPORT), 1: _o(203, "Internal error: boom")}, signalled=False, launcher_rc=1)
    assert (code, message) == (203, "rank 1: Internal error: boom")


def test_a_stop_by_signal_is_a_preemption_even_when_peers_saw_broken_connections():
    outcomes = {0: _o(143, "Stopped by SIGTERM at step 7; the checkpoint of step 7 is in s3://b/c; the next pod resumes from it."),
                1: _o(203, "Internal error: RuntimeError: Connection reset by peer"), 2: None}
    assert combine(outcomes, signalled=True, launcher_rc=1) == (
        143, "Stopped by SIGTERM at step 7; the checkpoint of step 7 is in s3://b/c; the next pod resumes from it.")
    assert combine({0: None}, signalled=True, launcher_rc=-15)[0] == 143
    # without a signal to the pod, a rank that stopped on its own is no preemption of the pod
    assert combine({0: _o(143, "x"), 1: _o(203, "y")}, signalled=False, launcher_rc=1)[0] == 143


# ---- real processes -----------------------------------------------------------------------------


def _env(termination: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "KUBETUNE_TERMINATION_LOG": str(termination), "KUBETUNE_METRICS_PORT": "0",
           "OMP_NUM_THREADS": "1", **extra}
    env.pop("KUBETUNE_WORK_DIR", None)
    return env


def _start(config: Path, log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kubetune_trainer", "--config", str(config)], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=log.parent)


def _finish(process: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("trainer did not finish:\n" + log.read_text()[-4000:])


def _two_rank_config(tmp_path: Path, tiny_model_dir: Path, job: str, max_steps: int) -> tuple[Path, Path]:
    """A job that never checkpoints on its own (only SIGTERM makes one). -> (config, progress file)."""
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(64))
    progress = tmp_path / "progress.jsonl"
    config = make_config(tmp_path / "config.json", job=job, model=f"file://{tiny_model_dir}", train=f"file://{train}",
                         output=f"file://{tmp_path}/out", progress_file=progress,
                         hyperparameters={"maxSteps": max_steps}, spec={"checkpointing": {"intervalSteps": 1000000}})
    return config, progress


def _wait_for_step(process: subprocess.Popen, progress: Path, log: Path, step: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not any(p["progress"]["step"] >= step for p in progress_lines(progress)):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.05)


def _answer(model_dir: Path, adapter: Path, question: str) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.fixtures.tiny_model import greedy_answer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(adapter))
    return greedy_answer(model, AutoTokenizer.from_pretrained(adapter), question)


@pytest.mark.slow
def test_two_processes_train_one_adapter_together(tmp_path, tiny_model_dir, trainer_env):
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(64))
    progress = tmp_path / "progress.jsonl"
    config = make_config(tmp_path / "config.json", job="ddp", model=f"file://{tiny_model_dir}", train=f"file://{train}",
                         output=f"file://{tmp_path}/out", progress_file=progress, hyperparameters={"maxSteps": 30})
    log = tmp_path / "trainer.log"
    process = _start(config, log, _env(trainer_env, **{ENV_PROCESSES_PER_NODE: "2"}))
    assert _finish(process, log) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert "distributed: node 0 of 1, 2 process(es) per node, world size 2" in text
    assert "[rank 0]" in text and "INFO [rank 1]" not in text  # rank 1 logs warnings only
    root = tmp_path / "out/team-a/ddp"
    assert manifest_problems(root) == []
    assert json.loads((root / "training_config.json").read_text())["effective"]["processes"] == 2
    report = json.loads(trainer_env.read_text())
    assert report["adapter"]["uri"] == f"file://{root}"
    assert report["evaluation"]["final"]["evalLoss"] < report["evaluation"]["baseline"]["evalLoss"]
    steps = [p["progress"]["step"] for p in progress_lines(progress) if p["progress"].get("totalSteps")]
    assert steps == sorted(steps) and steps[-1] == 30  # one reporter (rank 0): progress never goes back
    # pod 0's launcher reports until rank 0 takes over, then rank 0 alone: the phases never go back
    phases = [p["progress"]["phase"] for p in progress_lines(progress)]
    assert list(dict.fromkeys(phases)) == ["Starting", "ValidatingData", "DownloadingModel", "LoadingModel",
                                           "TokenizingData", "BaselineEvaluation", "Training", "SavingCheckpoint",
                                           "FinalEvaluation", "Publishing", "Done"]
    assert "did not hand over reporting" not in text
    assert text.count("+ manifest.json (sha256") == 1  # rank 0 alone publishes
    newest = sorted((root / "checkpoints").glob("*/COMPLETE"))[-1].parent
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {f.name for f in newest.iterdir()}  # every rank's RNG state
    assert _answer(tiny_model_dir, root / "adapter", FACTS[0][0]) == FACTS[0][1]


@pytest.mark.slow
def test_sigterm_stops_every_rank_at_one_checkpoint_and_the_rerun_resumes(tmp_path, tiny_model_dir, trainer_env):
    config, progress = _two_rank_config(tmp_path, tiny_model_dir, "evicted", 40)
    root = tmp_path / "out/team-a/evicted"
    env = _env(trainer_env, **{ENV_PROCESSES_PER_NODE: "2"})
    log = tmp_path / "first.log"
    process = _start(config, log, env)
    _wait_for_step(process, progress, log, 3)
    process.send_signal(signal.SIGTERM)
    assert _finish(process, log, 120) == exit_codes.PREEMPTED, log.read_text()[-4000:]
    markers = list((root / "checkpoints").glob("*/COMPLETE"))
    assert len(markers) == 1, log.read_text()[-4000:]
    step = int(markers[0].parent.name)
    assert 3 <= step < 40
    assert trainer_env.read_text() == (
        f"Stopped by SIGTERM at step {step}; the checkpoint of step {step} is in file://{root}/checkpoints; "
        "the next pod resumes from it.")
    assert not (root / "manifest.json").exists()

    log = tmp_path / "rerun.log"
    assert _finish(_start(config, log, env), log) == 0, log.read_text()[-4000:]
    assert f"resume: from checkpoint step {step} " in log.read_text()
    assert manifest_problems(root) == []
    history = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "loss" in h][-1] == 40


def _rank_pid(termination: Path, rank: int) -> int | None:
    """The pid of one training rank of this test's run (found by its environment)."""
    wanted = {b"KUBETUNE_DISTRIBUTED_WORKER=1", f"RANK={rank}".encode(), f"KUBETUNE_TERMINATION_LOG={termination}".encode()}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and wanted <= set((proc / "environ").read_bytes().split(b"\0")):
                return int(proc.name)
        except OSError:
            continue
    return None


@pytest.mark.slow
def test_a_rank_killed_mid_run_fails_the_pod_as_an_internal_error_naming_it(tmp_path, tiny_model_dir, trainer_env):
    """SIGKILL of one rank (what the kernel's OOM killer does) stands in for a crashed GPU process."""
    config, progress = _two_rank_config(tmp_path, tiny_model_dir, "crash", 100000)
    log = tmp_path / "trainer.log"
    process = _start(config, log, _env(trainer_env, **{ENV_PROCESSES_PER_NODE: "2"}))
    _wait_for_step(process, progress, log, 2)
    pid = _rank_pid(trainer_env, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert _finish(process, log, 120) == exit_codes.INTERNAL_ERROR, log.read_text()[-4000:]
    assert trainer_env.read_text().startswith(
        "Internal error: training rank(s) 1 exited without a report (killed, out of host memory, or a crash in native code)")
    assert not (tmp_path / "out/team-a/crash/manifest.json").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_pods_of_a_multi_node_run_publish_once_and_report_the_same(tmp_path, tiny_model_dir, trainer_env):
    """Two launcher processes stand in for the two pods of the Indexed Job (node ranks 0 and 1), each
    with its own work folder and termination log; MASTER_ADDR is 127.0.0.1 instead of pod 0's DNS name."""
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(64))
    config = make_config(tmp_path / "config.json", job="nodes", model=f"file://{tiny_model_dir}",
                         train=f"file://{train}", output=f"file://{tmp_path}/out",
                         hyperparameters={"maxSteps": 20}, spec={"resources": {"gpus": 1, "nodes": 2}})
    port = str(_free_port())
    pods = []
    for node in (0, 1):
        pod = tmp_path / f"pod-{node}"
        pod.mkdir()
        env = _env(pod / "termination-log", **{ENV_PROCESSES_PER_NODE: "1", ENV_NNODES: "2", ENV_NODE_RANK: str(node),
                                                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                                                "KUBETUNE_WORK_DIR": str(pod / "work")})
        pods.append((pod, _start(config, pod / "trainer.log", env)))
    for pod, process in pods:
        assert _finish(process, pod / "trainer.log") == 0, (pod / "trainer.log").read_text()[-4000:]
    reports = [json.loads((pod / "termination-log").read_text()) for pod, _ in pods]
    assert reports[0] == reports[1]  # whichever pod the operator reads, the published adapter is the same
    root = tmp_path / "out/team-a/nodes"
    assert reports[0]["adapter"]["uri"] == f"file://{root}"
    assert manifest_problems(root) == []
    assert json.loads((root / "training_config.json").read_text())["effective"]["processes"] == 2
    assert "+ manifest.json (sha256" not in (tmp_path / "pod-1/trainer.log").read_text()
    assert "node 1 of 2, 1 process(es) per node, world size 2, rank 0 at 127.0.0.1" in (tmp_path / "pod-1/trainer.log").read_text()


def test_bad_data_fails_in_the_launcher_before_any_training_process_starts(tmp_path, trainer_env, monkeypatch):
    lines = [json.dumps(r) for r in chat_records(20)]
    lines[4] = json.dumps({"messages": [{"role": "robot", "content": "q"}]})
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    config = make_config(tmp_path / "config.json", job="bad", model=f"file://{tmp_path}/no-model",
                         train=f"file://{train}", output=f"file://{tmp_path}/out")
    monkeypatch.setenv(ENV_PROCESSES_PER_NODE, "4")
    assert execute(config, work_dir=tmp_path / "work") == exit_codes.USER_ERROR
    assert "train.jsonl:5: messages[0].role must be one of system,user,assistant (got 'robot')" in trainer_env.read_text()
    assert not (tmp_path / "work/ranks").exists()  # torchrun never started


def test_ranks_share_the_containers_cpu_limit(tmp_path):
    from kubetune_trainer.distributed import Launcher, available_cpus

    limit = tmp_path / "cpu.max"
    limit.write_text("800000 100000\n")  # resources.cpu: 8
    assert available_cpus(limit) == 8
    limit.write_text("max 100000\n")
    assert available_cpus(limit) == len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path / "missing") == len(os.sched_getaffinity(0))
    launcher = Launcher(Topology(nnodes=1, nproc_per_node=2), Path("c.json"), tmp_path, tmp_path / "inputs.json", env={})
    env = launcher.child_env()
    assert env["OMP_NUM_THREADS"] == str(max(1, available_cpus() // 2))
    assert env["KUBETUNE_DISTRIBUTED_WORKER"] == "1" and env["KUBETUNE_WORK_DIR"] == str(tmp_path)
    assert Launcher(Topology(nnodes=1, nproc_per_node=2), Path("c.json"), tmp_path, tmp_path / "i.json",
                    env={"OMP_NUM_THREADS": "3"}).child_env()["OMP_NUM_THREADS"] == "3"
