"""Shared by the A/B benches (trainer_overhead.py, packing.py): pinned threads, an interleaved run
order, a per-step timer for the Trainer, and the ratio / spread / verdict lines.

How a bench uses it: `pin_threads()` first (before torch is imported); one discarded warm-up run of
each setting; then `rounds` rounds in `interleaved()` order (ABBA: A B, B A, A B, ...), each run timed
by a `StepTimer` whose first steps are discarded; then `report()` compares each setting with the
baseline round by round. The spread is the RANGE (max - min) of the per-run ratios, the most cautious
choice for the few runs a bench can afford. A result is flagged NOISY when that spread exceeds the gap
between the median ratio and the goal: the runs then disagree about which side of the goal it is on.
With no stated goal it is flagged when the spread exceeds 10% of the median ratio.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

NO_GOAL_TOLERANCE = 0.10  # spread allowed, relative to the median ratio, for a ratio without a goal


def pin_threads(threads: int, cpus: str) -> str:
    """The same threads for every run of the process: OMP/MKL environment (read when torch loads),
    torch intra-op and inter-op threads, and the process's CPU affinity. Call before importing torch.

    cpus: "auto" = the last `threads` CPUs this process may use (CPU 0 takes most interrupts),
    "none" = no affinity, or a comma list such as "1" or "2,3". Returns a line saying what was set."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the trainer sets it; the plain side must match
    affinity = "not pinned"
    if cpus != "none" and hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        chosen = allowed[-threads:] if cpus == "auto" else [int(c) for c in cpus.split(",")]
        os.sched_setaffinity(0, chosen)  # threads started from now on (torch's pools) inherit it
        affinity = f"CPU {','.join(map(str, chosen))} of {len(allowed)}"
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only possible before any inter-op work
        torch.set_num_interop_threads(1)
    return f"torch threads {torch.get_num_threads()}, affinity {affinity}"


def trainer_bench(threads: int, cpus: str, prefix: str, metrics_port: str = "0") -> tuple[str, "Path", "Path"]:
    """The set-up every trainer bench shares: threads pinned (pin_threads), a scratch folder, the trainer's
    termination log and metrics port there, the libraries quiet, and the tiny model built in it.
    Returns (what pin_threads set, the scratch folder, the tiny model's folder)."""
    import tempfile
    from pathlib import Path

    pinned = pin_threads(threads, cpus)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.setdefault("KUBETUNE_TERMINATION_LOG", str(tmp / "termination-log"))
    os.environ.setdefault("KUBETUNE_METRICS_PORT", metrics_port)
    quiet_libraries()
    from tests.fixtures.tiny_model import build_tiny_model

    return pinned, tmp, build_tiny_model(tmp / "model")


def quiet_libraries() -> None:
    """Warnings, progress bars and INFO logs of the libraries off: only the bench's figures print."""
    import logging
    import warnings

    import datasets
    import transformers

    warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecation notices, once per run
    logging.basicConfig(level=logging.WARNING)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def interleaved(settings: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, setting) in ABBA order: forward in even rounds, reversed in odd ones, so every setting
    has the same mean position and a drift of the machine (heat, a neighbour's job) hits all alike."""
    for r in range(rounds):
        for setting in (settings if r % 2 == 0 else list(reversed(settings))):
            gc.collect()  # garbage of the previous run is not collected on this run's clock
            yield r, setting


@dataclass
class Steps:
    """What a StepTimer saw: the clock and counters at each optimizer step's end, and at train end."""

    times: list[float] = field(default_factory=list)  # wall clock (perf_counter)
    cpu: list[float] = field(default_factory=list)  # CPU time of the whole process, all its threads
    steps: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    end: float | None = None

    def window(self, skip: int) -> slice:
        if len(self.times) < skip + 2:
            raise SystemExit(f"only {len(self.times)} steps timed: run more steps than the {skip} warm-up steps + 2")
        return slice(skip, None)

    def median_step(self, skip: int, cpu: bool = False) -> float:
        """Median seconds (wall, or CPU time of the process) between consecutive step ends after
        `skip` warm-up steps: the steady step, without the steps that also evaluated or saved."""
        t = (self.cpu if cpu else self.times)[self.window(skip)]
        return statistics.median(b - a for a, b in zip(t, t[1:]))

    def mean_step(self, skip: int) -> float:
        """Seconds per step from the end of step `skip` to the end of training: the steady steps
        including the evaluations and checkpoints among them (and after the last step)."""
        self.window(skip)
        return ((self.end or self.times[-1]) - self.times[skip]) / (self.steps[-1] - self.steps[skip])

    def tokens_per_second(self, skip: int, cpu: bool = False) -> float:
        """Input tokens counted by the Trainer per second (wall, or CPU time of the process) between
        the end of step `skip` and the end of the last step."""
        self.window(skip)
        t = self.cpu if cpu else self.times
        return (self.tokens[-1] - self.tokens[skip]) / (t[-1] - t[skip])

    def cpu_share(self, skip: int) -> float:
        """CPU time of the process / wall time over the steady steps: ~1 when a single-threaded run had
        its core to itself, lower when other processes took it."""
        self.window(skip)
        return (self.cpu[-1] - self.cpu[skip]) / (self.times[-1] - self.times[skip])


def step_timer():
    """A transformers TrainerCallback recording a `Steps` (as `.record`). Built on call, so that
    importing this module does not import torch before `pin_threads`."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.record = Steps()

        def on_step_end(self, args, state, control, **kwargs):
            self.record.times.append(time.perf_counter())
            self.record.cpu.append(time.process_time())
            self.record.steps.append(state.global_step)
            self.record.tokens.append(int(state.num_input_tokens_seen or 0))

        def on_train_end(self, args, state, control, **kwargs):
            self.record.end = time.perf_counter()

    return StepTimer()


@contextlib.contextmanager
def timing_kubetune_trainer(timer) -> Iterator[None]:
    """Add `timer` to the Trainer that the kubetune trainer builds in this process (and nothing else)."""
    from kubetune_trainer import run as run_module

    build = run_module.build_trainer

    def build_and_time(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(timer)
        return trainer

    run_module.build_trainer = build_and_time
    try:
        yield
    finally:
        run_module.build_trainer = build


def report_cpu_share(shares: Sequence[float], threads: int) -> None:
    """One line on how busy the machine was during the timed steps of all runs."""
    low, median = min(shares), statistics.median(shares)
    busy = ("other processes took the CPU, so the wall-clock figures are inflated and the CPU-time ones are "
            "the better estimate" if threads == 1 and low < 0.95 else "")
    print(f"CPU share of the timed steps (process CPU time / wall time, {threads} thread(s)): min {low:.0%}, "
          f"median {median:.0%}{'; ' + busy if busy else ''}")


@dataclass(frozen=True)
class Goal:
    bound: float | None  # None: the ratio has no stated goal
    at_most: bool = True  # the goal is ratio <= bound (else ratio >= bound)

    def __str__(self) -> str:
        return "no goal" if self.bound is None else f"goal {'<=' if self.at_most else '>='} {self.bound:g}"

    def met(self, ratio: float) -> bool:
        return self.bound is None or (ratio <= self.bound if self.at_most else ratio >= self.bound)


def report(label: str, base: Sequence[float], other: Sequence[float], goal: Goal, fmt: str = ".3f") -> None:
    """Print the ratio other/base: the medians' ratio, min / median / max of the per-run (same round)
    ratios, and a verdict line: NOISY when the spread exceeds the gap to the goal, else OK."""
    ratios = sorted(o / b for o, b in zip(other, base, strict=True))
    median = statistics.median(ratios)
    spread = ratios[-1] - ratios[0]
    print(f"{label}: {statistics.median(other) / statistics.median(base):{fmt}} (ratio of medians); per-run ratios "
          f"min {ratios[0]:{fmt}} / median {median:{fmt}} / max {ratios[-1]:{fmt}}, spread (max-min) {spread:{fmt}} "
          f"over {len(ratios)} runs  ({goal})")
    where = f"median ratio {median:{fmt}}"
    if len(ratios) < 3:
        print(f"NOISY: {len(ratios)} run(s) cannot show a spread; use --runs 3 or more")
        return
    if goal.bound is None:
        allowed, why = NO_GOAL_TOLERANCE * median, f"{NO_GOAL_TOLERANCE:.0%} of the {where}"
    else:
        allowed, why = abs(median - goal.bound), f"the gap between the {where} and the {goal}"
    verdict = "" if goal.bound is None else f", so every run {'meets' if goal.met(median) else 'MISSES'} the goal"
    if spread > allowed:
        print(f"NOISY: spread {spread:{fmt}} exceeds {why} ({allowed:{fmt}}); rerun on a quiet machine")
    else:
        print(f"OK: spread {spread:{fmt}} is within {why} ({allowed:{fmt}}){verdict}")
