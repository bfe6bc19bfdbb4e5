"""spec.tracking: the run in MLflow, TensorBoard and Weights & Biases (docs/tracking.md).

Per-step metrics go through transformers' own integrations (MLflowCallback, TensorBoardCallback, WandbCallback:
the Trainer's logs at each logging step: loss, learning_rate, grad_norm, tokens seen, eval_loss, plus the
tokens/s this module adds to those logs). This module opens the runs itself, before those callbacks would, so
that it chooses the run (a retried or resumed pod logs into the same one) and can link it in status; and it logs
what they do not: the job's effective parameters, the evaluation before/after, the loss curve image, and the
published adapter's URI and manifest sha256.

Only the reporting process (rank 0) tracks. A tracker is never worth the training: any failure of one (the server
went away, a rejected value) is logged as a warning once, that tracker is dropped for the rest of the run, and
status.tracking.<tracker>.message says so. One case fails the job instead, at start, before any training: a
server that refuses the credentials (HTTP 401/403, W&B's AuthenticationError) is a user error that a retry
cannot fix. An unreachable server at start is dropped like any failure. Secrets: the clients read their
credentials from the env (secretKeyRefs, builders.tracking); nothing here reads or logs them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune.api.tracking import RUN_TAG_JOB_UID, TENSORBOARD_DIR, WANDB_DIR, RunLink, TensorBoardLink, TrackingStatus
from kubetune.api.trainer_config import TrainerConfig

from .errors import Preempted, UserError
from .publish import Result, loss_curve
from .reporting import Reporter, Tracker

log = logging.getLogger(__name__)

# A tracking server that does not answer must not hold training for minutes (MLflow's defaults: 7 retries with
# exponential backoff, 120 s per request). Defaults only: the pod's env wins.
MLFLOW_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
WANDB_INIT_TIMEOUT = 60  # seconds


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts (and lists of {"name": ...} dicts) as "a/b/c" keys."""
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}/{key}" if prefix else str(key), item, out)
    elif isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        for item in value:
            _flat(f"{prefix}/{item['name']}", {k: v for k, v in item.items() if k != "name"}, out)
    elif value is not None:
        out[prefix] = value
    return out


def run_params(config: TrainerConfig, summary: dict[str, Any]) -> dict[str, str]:
    """What the run was: method, adapter, base model, data, and the effective hyperparameters (plan.summary)."""
    spec = config.spec
    params: dict[str, Any] = {
        "job": f"{config.job.namespace}/{config.job.name}", "method": spec.method.type, "adapter": spec.adapter.type,
        "baseModel.uri": spec.base_model.uri, "baseModel.revision": spec.base_model.revision,
        "dataset.train": spec.dataset.train, "dataset.validation": spec.dataset.validation,
        "dataset.format": spec.dataset.format,
    }
    params |= {key.replace("/", "."): value for key, value in _flat("", summary, {}).items()}
    return {key: str(value) for key, value in params.items() if value is not None}


def numeric_metrics(prefix: str, figures: Any) -> dict[str, float]:
    """The numbers in an evaluation dict (evalLoss, perplexity, and task metrics if there are any), flat."""
    return {key: float(value) for key, value in _flat(prefix, figures, {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def wandb_run_id(config: TrainerConfig) -> str:
    """One W&B run per FineTuneJob: a retried or resumed pod resumes it (resume="allow")."""
    raw = f"{config.job.namespace}-{config.job.name}" + (f"-{config.job.uid[:8]}" if config.job.uid else "")
    return re.sub(r"[^A-Za-z0-9_-]", "-", raw)[:64]


def _refused(exc: BaseException) -> bool:
    """Whether a tracker refused the credentials (a user error), not merely failed to answer."""
    status = getattr(exc, "get_http_status_code", lambda: None)()
    if status in (401, 403) or type(exc).__name__ == "AuthenticationError":
        return True
    return bool(re.search(r"\b(401|403)\b|unauthori[sz]ed|forbidden", str(exc), re.IGNORECASE))


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Backend:
    """One tracker's health: the first failure drops it, with one warning and a message in status."""

    def __init__(self, name: str, on_failure: Callable[[str, str], None]):
        self.name, self.failed, self._on_failure = name, None, on_failure

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.failed is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a tracker never fails training
            self.fail(what, exc)
            return None

    def fail(self, what: str, exc: BaseException) -> None:
        self.failed = f"{what} failed ({type(exc).__name__}: {str(exc)[:300]}); training goes on without {self.name}"
        log.warning("tracking: %s", self.failed)
        self._on_failure(self.name, self.failed)


class Guarded(TrainerCallback):
    """A transformers integration callback whose every event goes through its Backend."""

    def __init__(self, inner: TrainerCallback, backend: Backend):
        self.inner, self.backend = inner, backend

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_") and hasattr(TrainerCallback, name):
            inner, backend = object.__getattribute__(self, "inner"), object.__getattribute__(self, "backend")
            return lambda *args, **kwargs: backend.call(f"{name[3:]} event", getattr(inner, name), *args, **kwargs)
        return object.__getattribute__(self, name)


class ThroughputToLogs(TrainerCallback):
    """Adds tokens/s (status.progress.tokensPerSecond, the same figure) to each training log, before the
    integration callbacks run: every tracker gets it at the same step as the loss."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs and self.tracker.tokens_per_second is not None:
            logs["tokens_per_second"] = self.tracker.tokens_per_second


class Tracking:
    """The trackers of one run. Inactive (every method a no-op) without spec.tracking or off rank 0."""

    def __init__(self, config: TrainerConfig, work_dir: Path, tracker: Tracker, reporter: Reporter, active: bool):
        self.config, self.tracker, self.reporter = config, tracker, reporter
        self.spec = config.spec.tracking if active else None
        self.dir = work_dir / "tracking"
        self.backends: dict[str, Backend] = {}
        self.status = TrackingStatus()
        self.mlflow_run: str | None = None
        self.wandb_run: Any = None
        self.wandb_done = False  # an offline run is finished before it is published
        self._finished = False
        self._env_set: list[str] = []

    # ---- start: open the runs, link them in status --------------------------------------------------

    def start(self) -> None:
        if self.spec is None:
            return
        if self.spec.mlflow is not None:
            self._open("mlflow", self._start_mlflow)
        if self.spec.tensorboard is not None and self.spec.tensorboard.enabled:
            self.backends["tensorboard"] = Backend("tensorboard", self._failed)
            (self.dir / TENSORBOARD_DIR).mkdir(parents=True, exist_ok=True)
            self.status.tensorboard = TensorBoardLink(uri=f"{self.config.output_prefix}/{TENSORBOARD_DIR}/")
        if self.spec.wandb is not None:
            self._open("wandb", self._start_wandb)
        self._report()

    def _open(self, name: str, start: Callable[[], RunLink]) -> None:
        backend = self.backends[name] = Backend(name, self._failed)
        try:
            setattr(self.status, name, start())
        except Exception as exc:  # noqa: BLE001 - sorted below: refused credentials vs anything else
            if _refused(exc):
                raise UserError(f"spec.tracking.{name}: the server refused the credentials ({type(exc).__name__}: "
                                f"{str(exc)[:300]}); check the Secret the spec names") from None
            backend.fail("start", exc)

    def _start_mlflow(self) -> RunLink:
        import mlflow

        self._env_set = [name for name in MLFLOW_CLIENT_ENV if name not in os.environ]
        os.environ.update({name: MLFLOW_CLIENT_ENV[name] for name in self._env_set})  # unset again by close()
        spec, job = self.spec.mlflow, self.config.job
        mlflow.set_tracking_uri(spec.tracking_uri)
        experiment = mlflow.set_experiment(spec.experiment or job.namespace)
        uid = job.uid or f"{job.namespace}/{job.name}"
        found = mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_TAG_JOB_UID}` = '{uid}'",
                                   max_results=1, output_format="list")
        if found:
            run = mlflow.start_run(run_id=found[0].info.run_id)
            log.info("tracking: mlflow resumes run %s", run.info.run_id)
        else:
            run = mlflow.start_run(experiment_id=experiment.experiment_id, run_name=job.name, tags={
                RUN_TAG_JOB_UID: uid, "kubetune.job.namespace": job.namespace, "kubetune.job.name": job.name})
        self.mlflow_run = run.info.run_id
        url = f"{spec.tracking_uri.rstrip('/')}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
        return RunLink(run_id=run.info.run_id, url=url)

    def _start_wandb(self) -> RunLink:
        import wandb

        spec = self.spec.wandb
        settings = wandb.Settings(console="off", silent=True, init_timeout=WANDB_INIT_TIMEOUT, **({"base_url": spec.host} if spec.host else {}))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.wandb_run = wandb.init(project=spec.project, entity=spec.entity, id=wandb_run_id(self.config),
                                    resume="allow", mode=spec.mode, dir=str(self.dir), name=self.config.job.name,
                                    settings=settings)
        return RunLink(run_id=self.wandb_run.id, url=self.wandb_run.url if spec.mode == "online" else None)

    def _failed(self, name: str, message: str) -> None:
        link = getattr(self.status, name)
        if isinstance(link, (RunLink, TensorBoardLink)):
            link.message = message[:1024]
        else:
            setattr(self.status, name, RunLink(message=message[:1024]))
        self._report()

    def _report(self) -> None:
        with self.tracker.lock:
            self.tracker.tracking = self.status.model_copy(deep=True)
        self.reporter.report(force=True)

    def _live(self, name: str) -> Backend | None:
        backend = self.backends.get(name)
        return backend if backend is not None and backend.failed is None else None

    # ---- training: params, then transformers' integrations log every logging step ------------------

    def attach(self, trainer, summary: dict[str, Any]) -> None:
        """Log the run's parameters and add the integration callbacks (before any evaluation, so the baseline's
        eval_loss is logged at its step too)."""
        if self.spec is None:
            return
        from transformers.integrations import MLflowCallback, TensorBoardCallback, WandbCallback

        params = run_params(self.config, summary)
        trainer.add_callback(ThroughputToLogs(self.tracker))
        if backend := self._live("mlflow"):
            import mlflow

            own = set(trainer.args.to_dict())  # MLflowCallback logs those: a param is written once
            backend.call("params", mlflow.log_params, {k: v for k, v in params.items() if k not in own})
            self._add(trainer, backend, MLflowCallback)
        if backend := self._live("tensorboard"):
            with _env(TENSORBOARD_LOGGING_DIR=str(self.dir / TENSORBOARD_DIR)):  # the callback reads it once
                self._add(trainer, backend, TensorBoardCallback)
            backend.call("params", self._tensorboard, lambda w: w.add_text("kubetune/params", _table(params)))
        if backend := self._live("wandb"):
            backend.call("params", self.wandb_run.config.update, params, allow_val_change=True)
            self._add(trainer, backend, WandbCallback)

    @staticmethod
    def _add(trainer, backend: Backend, integration: type[TrainerCallback]) -> None:
        callback = backend.call("setup", integration)
        if callback is not None:  # one class per integration: the Trainer warns about two callbacks of one class
            trainer.add_callback(type(f"Guarded{integration.__name__}", (Guarded,), {})(callback, backend))

    def _tensorboard(self, write: Callable[[Any], None], step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(self.dir / TENSORBOARD_DIR), filename_suffix=".kubetune")
        try:
            write(writer)
        finally:
            writer.close()

    # ---- after training: evaluation and loss curve (before publishing), adapter (after) --------------

    def before_publish(self, result: Result) -> Result:
        """Log the evaluation before/after and the loss curve; close what is published with the adapter
        (TensorBoard's event files, an offline W&B run). -> the result with those folders added."""
        if self.spec is None:
            return result
        step = int(result.summary.get("steps") or 0)
        figures = numeric_metrics("", result.evaluation)
        summary = getattr(getattr(result, "task", None), "summary", None)  # spec.evaluation's figures (EvalSummary)
        if summary is not None and hasattr(summary, "to_dict"):
            figures |= numeric_metrics("", summary.to_dict())  # task/metrics/<name>/baseline|final, regression/...
        png = self.dir / "loss_curve.png"
        self.dir.mkdir(parents=True, exist_ok=True)
        png.write_bytes(loss_curve(self.config, result))
        if backend := self._live("mlflow"):
            import mlflow

            backend.call("evaluation", mlflow.log_metrics, figures, step=step)
            backend.call("loss curve", mlflow.log_artifact, str(png))
        if backend := self._live("tensorboard"):
            backend.call("evaluation", self._tensorboard, lambda w: _tensorboard_final(w, figures, png, step))
        if backend := self._live("wandb"):
            backend.call("evaluation", self._wandb_final, figures, png)
        extra: dict[str, Path] = {}
        if self._live("tensorboard") and any((self.dir / TENSORBOARD_DIR).iterdir()):
            extra[TENSORBOARD_DIR] = self.dir / TENSORBOARD_DIR
        if self.spec.wandb is not None and self.spec.wandb.mode == "offline" and (backend := self._live("wandb")):
            backend.call("finish", self.wandb_run.finish)  # the run's files are complete before they are published
            self.wandb_done = True
            if (folder := self._offline_run()) is not None:
                extra[WANDB_DIR] = folder
        return replace(result, extra_dirs={**result.extra_dirs, **extra}) if extra else result

    def _wandb_final(self, figures: dict[str, float], png: Path) -> None:
        import wandb

        for key, value in figures.items():
            self.wandb_run.summary[key] = value
        self.wandb_run.log({"loss_curve": wandb.Image(str(png))})

    def _offline_run(self) -> Path | None:
        """The offline run's folder without its debug logs (for `wandb sync`)."""
        runs = sorted((self.dir / "wandb").glob(f"offline-run-*-{self.wandb_run.id}"))
        if not runs:
            return None
        dest = self.dir / "wandb-publish"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(runs[-1], dest / runs[-1].name, ignore=shutil.ignore_patterns("logs", "debug*.log"))
        return dest

    def after_publish(self, report: dict[str, Any]) -> None:
        """The published adapter's URI and manifest sha256 go to the runs, which then end (FINISHED)."""
        if self.spec is None:
            return
        adapter = report.get("adapter") or {}
        tags = {"kubetune.adapter.uri": adapter.get("uri"), "kubetune.adapter.manifestSha256": adapter.get("manifestSha256")}
        tags = {k: v for k, v in tags.items() if v}
        if backend := self._live("mlflow"):
            import mlflow

            backend.call("adapter", mlflow.set_tags, tags)
        if (backend := self._live("wandb")) and self.spec.wandb.mode == "online":
            backend.call("adapter", self.wandb_run.summary.update, tags)
        self.close(None)

    def close(self, error: BaseException | None) -> None:
        """End the runs: FINISHED, KILLED (stopped by SIGTERM: the next pod resumes them) or FAILED."""
        if self.spec is None or self._finished:
            return
        self._finished = True
        status = "FINISHED" if error is None else "KILLED" if isinstance(error, Preempted) else "FAILED"
        if self.mlflow_run:
            import mlflow

            if (backend := self._live("mlflow")) is not None:
                backend.call("end", mlflow.end_run, status)
            else:
                # The backend failed (the server is gone): end the run here all the same, with this run's short
                # client retries. end_run drops it from MLflow's active runs before it calls the server; left
                # there, MLflow's atexit handler would retry it with the default retries and hold the trainer's
                # exit for minutes.
                with contextlib.suppress(Exception):
                    mlflow.end_run(status)
        if (backend := self._live("wandb")) is not None and self.wandb_run is not None and not self.wandb_done:
            backend.call("end", self.wandb_run.finish, exit_code=0 if error is None else 1)
        for name in self._env_set:
            os.environ.pop(name, None)
        self._report()


def _table(params: dict[str, str]) -> str:
    return "| param | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in sorted(params.items()))


def _tensorboard_final(writer, figures: dict[str, float], png: Path, step: int) -> None:
    import numpy as np
    from PIL import Image

    for key, value in figures.items():
        writer.add_scalar(f"evaluation/{key}", value, step)
    with Image.open(png) as image:
        writer.add_image("loss_curve", np.asarray(image.convert("RGB")), step, dataformats="HWC")

