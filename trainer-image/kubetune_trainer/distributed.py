"""Data-parallel training over every GPU of the pod and over several pods (resources.gpus, resources.nodes).

One training process per GPU, started by torch.distributed.run (torchrun) from the pod's main process:

- The main process (PID 1 of the container) works out the topology, fetches and validates the inputs
  once for the pod (dataset, base model, newest checkpoint: bad data fails before any GPU process
  starts), starts torchrun in its own session, forwards SIGTERM/SIGINT to it once (torchrun passes it
  on to every rank and waits `KUBETUNE_STOP_GRACE_SECONDS` before killing), and folds the ranks'
  outcomes into the pod's one exit code and termination message (the exit-code contract).
- Every rank writes its outcome to `<work>/ranks/rank-<N>.json`; a rank that dies without one
  (killed, crashed) is an internal error.
- Pod 0's main process reports progress while it fetches and until global rank 0 takes over
  (reporting.ReportingHandover: one writer at a time, no gap between them). Global rank 0 alone then
  reports progress, serves metrics, uploads checkpoints and publishes; its
  publish outcome is broadcast so that every rank of every pod ends the same way (otherwise a
  finished non-zero pod would leave a retried rank-0 pod waiting for peers that never come).
- Ranks agree on stopping after SIGTERM at the same optimizer step (one all-reduce of a flag per
  step), and wait for rank 0's checkpoint upload before they exit.

Multi-node: the operator runs an Indexed Job; node rank = completion index; MASTER_ADDR is pod 0's
name in the job's headless Service. The rendezvous is static: a lost pod fails the attempt and the
Job's retry resumes every pod from the newest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api import exit_codes
from kubetune.api.constants import ENV_NODE_RANK, ENV_STOP_GRACE, ENV_WORK_DIR, RENDEZVOUS_PORT
from kubetune.api.finetunejob import FineTuneJobSpec

from .errors import Preempted, TransientError, UserError

log = logging.getLogger(__name__)

ENV_PROCESSES_PER_NODE = "KUBETUNE_PROCESSES_PER_NODE"  # override: CPU test runs, debugging
ENV_WORKER = "KUBETUNE_DISTRIBUTED_WORKER"  # set by the launcher for the processes torchrun starts
ENV_INPUTS = "KUBETUNE_INPUTS"  # the launcher's fetched inputs (JSON file) for the workers
DEFAULT_MASTER_PORT = RENDEZVOUS_PORT
DEFAULT_STOP_GRACE = 300
RENDEZVOUS_TIMEOUT = 1800  # seconds the pods of a multi-node run wait for each other


@dataclass(frozen=True)
class Topology:
    nnodes: int
    nproc_per_node: int
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = DEFAULT_MASTER_PORT

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int_env(env: Mapping[str, str], name: str, low: int, high: int, default: int | None = None) -> int:
    raw = env.get(name, "")
    if not raw and default is not None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} must be an integer") from None
    if not low <= value <= high:
        raise UserError(f"environment variable {name}={value} must be between {low} and {high}")
    return value


def topology(spec: FineTuneJobSpec, env: Mapping[str, str], visible_gpus: int) -> Topology:
    """How many processes on how many pods, and where rank 0 is. Pure: env and GPU count are inputs.

    One process per requested GPU the pod can see (never more than it sees); one on CPU.
    """
    nodes = spec.resources.nodes
    if env.get(ENV_PROCESSES_PER_NODE):
        nproc = _int_env(env, ENV_PROCESSES_PER_NODE, 1, 64)
    elif visible_gpus > 0 and spec.resources.gpus > 0:
        nproc = min(spec.resources.gpus, visible_gpus)
        if visible_gpus < spec.resources.gpus:
            log.warning("distributed: resources.gpus is %d but this pod sees %d GPU(s): one process per visible GPU",
                        spec.resources.gpus, visible_gpus)
    else:
        nproc = 1
    if nodes == 1:
        return Topology(nnodes=1, nproc_per_node=nproc)
    missing = [name for name in (ENV_NODE_RANK, "MASTER_ADDR") if not env.get(name)]
    if missing:
        raise UserError(f"resources.nodes is {nodes} but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                        "not set: multi-node runs need the "
                        "Indexed Job the kubetune operator creates (or these variables set by hand)")
    port = _int_env(env, "MASTER_PORT", 1, 65535, DEFAULT_MASTER_PORT)
    return Topology(nnodes=nodes, nproc_per_node=nproc, node_rank=_int_env(env, ENV_NODE_RANK, 0, nodes - 1),
                    master_addr=env["MASTER_ADDR"], master_port=port)


def torchrun_command(topo: Topology, config_path: Path, stop_grace: int) -> list[str]:
    """The torchrun command line of this pod's ranks."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={topo.nproc_per_node}",
           "--max-restarts=0", f"--shutdown-timeout={stop_grace}"]
    if topo.nnodes == 1:
        cmd.append("--standalone")  # a free local port, no rendezvous host
    else:
        # pods start minutes apart (scheduling, image pulls, each fetches the model): wait up to 30 min
        # for the others instead of torchrun's 10, before the attempt fails
        cmd += [f"--nnodes={topo.nnodes}", f"--node-rank={topo.node_rank}", f"--master-addr={topo.master_addr}",
                f"--master-port={topo.master_port}", f"--rdzv-conf=timeout={RENDEZVOUS_TIMEOUT}"]
    return cmd + ["-m", "kubetune_trainer", "--config", str(config_path)]


# ---- inside a rank ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = Rank()


def is_worker(env: Mapping[str, str] = os.environ) -> bool:
    return env.get(ENV_WORKER) == "1" and "RANK" in env


def current_rank(env: Mapping[str, str] = os.environ) -> Rank:
    if not is_worker(env):
        return SINGLE
    return Rank(rank=int(env["RANK"]), local_rank=int(env.get("LOCAL_RANK", "0")), world_size=int(env["WORLD_SIZE"]))


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _device():
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def agree(flag: bool) -> bool:
    """True on every rank if it is True on any rank (a collective: every rank must call it)."""
    dist = _dist()
    if dist is None:
        return flag
    import torch

    value = torch.tensor([1 if flag else 0], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier()


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's value on every rank (a collective)."""
    dist = _dist()
    if dist is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's value, in rank order, on every rank (a collective)."""
    dist = _dist()
    if dist is None:
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def close() -> None:
    dist = _dist()
    if dist is not None:
        dist.destroy_process_group()


def rank_report_path(work_dir: Path, rank: int) -> Path:
    return work_dir / "ranks" / f"rank-{rank}.json"


def write_rank_report(work_dir: Path, rank: int, code: int, message: str | dict) -> None:
    path = rank_report_path(work_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"code": code, "message": message}))
    tmp.replace(path)


# ---- the pod's main process ---------------------------------------------------------------------

# Which outcome speaks for the pod when ranks disagree: a user error is the same on every rank and
# retrying cannot help; a stop by signal explains the errors of ranks whose peers went away.
_PRIORITY = {exit_codes.USER_ERROR: 0, exit_codes.PREEMPTED: 1, exit_codes.INTERNAL_ERROR: 2}


def combine(outcomes: Mapping[int, dict[str, Any] | None], *, signalled: bool, launcher_rc: int,
            log_tail: str = "") -> tuple[int, str | dict]:
    """Fold the ranks' reports (rank -> {"code", "message"} or None if it left none) into one
    (exit code, termination message) for the pod. Pure."""
    if outcomes and all(o is not None and o["code"] == exit_codes.SUCCESS for o in outcomes.values()):
        return exit_codes.SUCCESS, outcomes[min(outcomes)]["message"]
    failed = {r: o for r, o in outcomes.items() if o is not None and o["code"] != exit_codes.SUCCESS}
    users = sorted(r for r, o in failed.items() if o["code"] == exit_codes.USER_ERROR)
    if users:  # the same on every rank, and retrying cannot help
        return exit_codes.USER_ERROR, _text(failed[users[0]]["message"])
    if signalled:
        stopped = [o for _, o in sorted(failed.items()) if o["code"] == exit_codes.PREEMPTED]
        return exit_codes.PREEMPTED, (_text(stopped[0]["message"]) if stopped
                                      else "Stopped by SIGTERM before the training processes reported.")
    silent = sorted(r for r, o in outcomes.items() if o is None)
    if silent:  # the first cause: the others' errors are usually their peers going away
        others = "; ".join(f"rank {r}: {_text(o['message'])}" for r, o in sorted(failed.items())[:2])
        tail = " ".join(log_tail.split())[-1200:]
        return exit_codes.INTERNAL_ERROR, (
            f"Internal error: training rank(s) {', '.join(map(str, silent))} exited without a report (killed, out of "
            f"host memory, or a crash in native code); torchrun exited {launcher_rc}."
            + (f" Then {others}" if others else "") + (f" Last output: {tail}" if tail else ""))
    rank, outcome = min(failed.items(), key=lambda item: (_PRIORITY.get(item[1]["code"], 3), item[0]))
    code = outcome["code"] if outcome["code"] in _PRIORITY else exit_codes.INTERNAL_ERROR
    message = _text(outcome["message"])
    return code, (f"rank {rank}: {message}" if code == exit_codes.INTERNAL_ERROR and len(outcomes) > 1 else message)


def _text(message: str | dict) -> str:
    return message if isinstance(message, str) else json.dumps(message)


class Launcher:
    """Runs this pod's ranks under torchrun and returns (exit code, termination message)."""

    def __init__(self, topo: Topology, config_path: Path, work_dir: Path, inputs_file: Path,
                 env: Mapping[str, str] = os.environ):
        self.topo = topo
        self.config_path = config_path
        self.work_dir = work_dir
        self.inputs_file = inputs_file
        self.env = env
        self.process: subprocess.Popen | None = None
        self.signalled = False
        self._forwarded = False
        self.tail: deque[str] = deque(maxlen=40)

    def ranks(self) -> list[int]:
        first = self.topo.node_rank * self.topo.nproc_per_node
        return list(range(first, first + self.topo.nproc_per_node))

    def child_env(self) -> dict[str, str]:
        env = {**self.env, ENV_WORKER: "1", ENV_INPUTS: str(self.inputs_file), ENV_WORK_DIR: str(self.work_dir)}
        if "OMP_NUM_THREADS" not in env:  # the ranks share the pod's CPUs instead of each taking the node's
            env["OMP_NUM_THREADS"] = str(max(1, available_cpus() // self.topo.nproc_per_node))
        return env

    def stop(self, signum: int) -> None:
        """The pod's stop signal (signal handlers run in the main thread, between run()'s statements)."""
        if not self.signalled:
            log.warning("distributed: %s: asking every rank to checkpoint and stop", signal.Signals(signum).name)
        self.signalled = True
        self._forward()

    def _forward(self) -> None:
        """Once: torchrun passes SIGTERM on to every rank and waits up to the stop grace before killing."""
        if self.signalled and not self._forwarded and self.process is not None and self.process.poll() is None:
            self._forwarded = True
            self.process.send_signal(signal.SIGTERM)

    def _pump(self, stream) -> None:
        """torchrun's and the ranks' stderr: passed through live (kubectl logs) and its tail kept."""
        for raw in iter(stream.readline, b""):
            sys.stderr.buffer.write(raw)
            sys.stderr.buffer.flush()
            self.tail.append(raw.decode(errors="replace"))
        stream.close()

    def run(self) -> tuple[int, str | dict]:
        for rank in self.ranks():
            rank_report_path(self.work_dir, rank).unlink(missing_ok=True)
        rank_report_path(self.work_dir, 0).parent.mkdir(parents=True, exist_ok=True)
        grace = _int_env(self.env, ENV_STOP_GRACE, 1, 86400, DEFAULT_STOP_GRACE)
        cmd = torchrun_command(self.topo, self.config_path, grace)
        log.info("distributed: node %d of %d, %d process(es) per node, world size %d%s", self.topo.node_rank,
                 self.topo.nnodes, self.topo.nproc_per_node, self.topo.world_size,
                 f", rank 0 at {self.topo.master_addr}:{self.topo.master_port}" if self.topo.master_addr else "")
        if self.signalled:
            raise Preempted("Stopped by SIGTERM before training started.")
        # own session: a terminal's Ctrl-C reaches this process only, which forwards it once
        self.process = subprocess.Popen(cmd, env=self.child_env(), stderr=subprocess.PIPE, start_new_session=True)
        self._forward()  # a signal that came while starting
        pump = threading.Thread(target=self._pump, args=(self.process.stderr,), name="torchrun-log", daemon=True)
        pump.start()
        rc = self.process.wait()
        pump.join(timeout=10)
        outcomes = {rank: _read_report(rank_report_path(self.work_dir, rank)) for rank in self.ranks()}
        return combine(outcomes, signalled=self.signalled, launcher_rc=rc, log_tail="".join(self.tail))


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this container may use: its CPU limit (cgroup v2 quota), else its affinity, else the host's."""
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            return max(1, int(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read_report(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("code"), int) else None


def check_same_checkpoint(step: int | None) -> None:
    """Every rank must resume from the same step (pods restore on their own): a collective."""
    dist = _dist()
    if dist is None:
        return
    steps: list[int | None] = [None] * dist.get_world_size()
    dist.all_gather_object(steps, step)
    if len(set(steps)) > 1:
        raise TransientError(f"the training processes restored different checkpoints (steps {steps}); retrying")
