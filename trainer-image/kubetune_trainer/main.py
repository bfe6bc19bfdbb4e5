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
from kubetune.api.constants import ENV_CONFIG_PATH, TRAINER_CONFIG_PATH
from kubetune.api.trainer_config import TrainerConfig
from kubetune.api.validation import SpecError, parse

from .errors import Preempted, StopFlag, TransientError, UserError, write_termination

log = logging.getLogger("kubetune_trainer")

ENV_WORK_DIR = "KUBETUNE_WORK_DIR"


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
        if not stop.in_training:  # nothing new to save: stop right away
            raise Preempted(f"Stopped by signal {signal.Signals(signum).name} before training started or after it ended.")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def execute(config_path: Path, stop: StopFlag | None = None, work_dir: Path | None = None) -> int:
    """Run one job and return the exit code (also used in-process by tests)."""
    stop = stop or StopFlag()
    owned = work_dir is None and not os.environ.get(ENV_WORK_DIR)
    work = work_dir or Path(os.environ.get(ENV_WORK_DIR) or tempfile.mkdtemp(prefix="kubetune-"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        config = load_config(config_path)
        log.info("job %s/%s: %s %s on %s", config.job.namespace, config.job.name, config.spec.method.type,
                 config.spec.adapter.type, config.spec.base_model.uri)
        _quiet_libraries()
        from .run import run  # torch, transformers, TRL: after the config is known to be good

        report = run(config, work, stop)
        write_termination(report)
        log.info("done: %s", json.dumps(report))
        return exit_codes.SUCCESS
    except Preempted as exc:
        log.warning("%s", exc)
        write_termination(str(exc) or "Stopped by SIGTERM.")
        return exit_codes.PREEMPTED
    except UserError as exc:
        log.error("user error: %s", exc)
        for problem in getattr(exc, "problems", [])[10:]:
            log.error("  %s", problem)
        write_termination(str(exc))
        return exit_codes.USER_ERROR
    except TransientError as exc:
        log.error("internal error (may succeed on retry): %s", exc)
        write_termination(f"Internal error (retried): {exc}")
        return exit_codes.INTERNAL_ERROR
    except Exception as exc:  # noqa: BLE001 - the contract: any other failure is an internal error
        if _is_out_of_memory(exc):
            message = (f"Out of GPU memory ({type(exc).__name__}). Lower hyperparameters.batchSize or maxLength, "
                       "raise gradientAccumulationSteps, use adapter type qlora, or request a larger GPU.")
            log.error("%s", message)
            write_termination(message)
            return exit_codes.USER_ERROR
        log.exception("internal error")
        write_termination(f"Internal error: {type(exc).__name__}: {exc}")
        return exit_codes.INTERNAL_ERROR
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = StopFlag()
    _install_signals(stop)
    path = args.config or Path(os.environ.get(ENV_CONFIG_PATH) or TRAINER_CONFIG_PATH)
    return execute(path, stop)
