"""`python -m kubetune_trainer --config PATH`: config in, published adapter out, exit code per contract.

0 success (JSON report in the termination log) | 1 user error | 143 stopped by SIGTERM after a
checkpoint | 203 internal error. The reason is one paragraph in the termination log
(KUBETUNE_TERMINATION_LOG, default /dev/termination-log). Secrets are never logged: they only live
in env vars that boto3 / huggingface_hub read themselves.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from kubetune.api import exit_codes
from kubetune.api.constants import ENV_CONFIG_PATH, ENV_WORK_DIR, TRAINER_CONFIG_PATH
from kubetune.api.trainer_config import TrainerConfig
from kubetune.api.validation import SpecError, parse
from kubetune_storage import StorageError

from . import distributed
from .errors import Preempted, StopFlag, TransientError, UserError, write_termination

log = logging.getLogger("kubetune_trainer")


def load_config(path: Path) -> TrainerConfig:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"trainer config {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"trainer config {path} is not readable JSON: {exc}") from None
    try:
        return parse(TrainerConfig, raw, prefix="config")
    except SpecError as exc:
        raise UserError(f"invalid trainer config {path}: {exc}") from None


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _install_signals(stop: StopFlag) -> None:
    def handler(signum, frame):
        stop.request()
        if stop.forward is not None:  # a distributed launcher: the training processes save and stop
            stop.forward(signum)
        elif not stop.in_training:  # nothing new to save: stop right away
            raise Preempted(f"Stopped by signal {signal.Signals(signum).name} before training started or after it ended.")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _job(config_path: Path, work: Path, stop: StopFlag) -> tuple[int, str | dict]:
    config = load_config(config_path)
    rank = distributed.current_rank()
    if rank.is_main:
        log.info("job %s/%s: %s %s on %s", config.job.namespace, config.job.name, config.spec.method.type,
                 config.spec.adapter.type, config.spec.base_model.uri)
    _quiet_libraries()
    from .run import Inputs, launch, run  # torch, transformers, TRL: after the config is known to be good

    if distributed.is_worker():
        inputs = Inputs.load(Path(os.environ[distributed.ENV_INPUTS]))
        return exit_codes.SUCCESS, run(config, work, stop, rank, inputs)
    topo = distributed.topology(config.spec, os.environ, _visible_gpus())
    if topo.distributed:
        return launch(config, config_path, work, stop, topo)
    return exit_codes.SUCCESS, run(config, work, stop)


def _outcome(job) -> tuple[int, str | dict]:
    """Run the job; map every way it can end to (exit code, termination message)."""
    try:
        code, report = job()
        text = json.dumps(report) if isinstance(report, dict) else report
        if code == exit_codes.SUCCESS:
            log.info("done: %s", text)
        else:  # the ranks of a distributed run ended this way (their own lines are above)
            log.error("exit %d: %s", code, text)
        return code, report
    except Preempted as exc:
        log.warning("%s", exc)
        return exit_codes.PREEMPTED, str(exc) or "Stopped by SIGTERM."
    except (UserError, TransientError, StorageError) as exc:
        # kubetune_storage errors say whose they are: NotFound, Denied, InvalidUri, ReadOnly are the user's to fix
        if isinstance(exc, TransientError) or (isinstance(exc, StorageError) and not exc.user_fault):
            log.error("internal error (may succeed on retry): %s", exc)
            return exit_codes.INTERNAL_ERROR, f"Internal error (retried): {exc}"
        log.error("user error: %s", exc)
        for problem in getattr(exc, "problems", [])[10:]:
            log.error("  %s", problem)
        return exit_codes.USER_ERROR, str(exc)
    except Exception as exc:  # noqa: BLE001 - the contract: any other failure is an internal error
        if _is_out_of_memory(exc):
            message = (f"Out of GPU memory ({type(exc).__name__}). Lower hyperparameters.batchSize or maxLength, "
                       "raise gradientAccumulationSteps, use adapter type qlora, or request a larger GPU.")
            log.error("%s", message)
            return exit_codes.USER_ERROR, message
        log.exception("internal error")
        return exit_codes.INTERNAL_ERROR, f"Internal error: {type(exc).__name__}: {exc}"


def execute(config_path: Path, stop: StopFlag | None = None, work_dir: Path | None = None) -> int:
    """Run one job and return the exit code (also used in-process by tests).

    A single process, the launcher of a distributed run (then the ranks' outcomes are folded into
    one), or one rank of it (then the outcome goes to the rank's report for the launcher)."""
    stop = stop or StopFlag()
    owned = work_dir is None and not os.environ.get(ENV_WORK_DIR)
    work = work_dir or Path(os.environ.get(ENV_WORK_DIR) or tempfile.mkdtemp(prefix="kubetune-"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        code, message = _outcome(lambda: _job(config_path, work, stop))
        if distributed.is_worker():
            distributed.write_rank_report(work, distributed.current_rank().rank, code, message)
        else:
            write_termination(message)
        return code
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune_trainer", description="Run one kubetune FineTuneJob.")
    parser.add_argument("--config", type=Path, default=None,
                        help=f"trainer config JSON (default: ${ENV_CONFIG_PATH} or {TRAINER_CONFIG_PATH})")
    parser.add_argument("--preflight", action="store_true",
                        help="check only, on a CPU: data, tokens, steps, GPU memory estimate (docs/trainer.md)")
    args = parser.parse_args(argv)
    rank = distributed.current_rank()
    # ranks other than 0 log warnings and errors only, each line marked with its rank
    logging.basicConfig(level=logging.INFO if rank.is_main else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s " + (f"[rank {rank.rank}] " if rank.distributed else "")
                        + "%(name)s: %(message)s")
    stop = StopFlag()
    _install_signals(stop)
    path = args.config or Path(os.environ.get(ENV_CONFIG_PATH) or TRAINER_CONFIG_PATH)
    if args.preflight:
        from .preflight import execute as preflight

        return preflight(path)
    return execute(path, stop)
