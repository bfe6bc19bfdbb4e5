"""Experiment tracking: what a FineTuneJob asks for (spec.tracking) and where status links the run
(status.tracking). Pure: pydantic only. docs/tracking.md.

The trainer (kubetune_trainer.tracking) logs to MLflow, TensorBoard and Weights & Biases through transformers'
own integrations plus what they do not log (baseline evaluation, loss curve, the published adapter).
Credentials reach the training pod only as secretKeyRef env vars (builders.tracking), under the names the
clients read themselves; the spec and the trainer config carry only the references.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .common import DNS_SUBDOMAIN, SECRET_KEY, KubeModel, SecretKeyRef, cel, with_rules

HTTP_URL = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"  # no user:password@ (credentials come from a Secret)

# The env vars each client reads its credentials from (MLflow's REST client, the wandb SDK).
ENV_MLFLOW_USERNAME = "MLFLOW_TRACKING_USERNAME"
ENV_MLFLOW_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
ENV_MLFLOW_TOKEN = "MLFLOW_TRACKING_TOKEN"
ENV_WANDB_API_KEY = "WANDB_API_KEY"
SECRET_ENV = (ENV_MLFLOW_USERNAME, ENV_MLFLOW_PASSWORD, ENV_MLFLOW_TOKEN, ENV_WANDB_API_KEY)

TENSORBOARD_DIR = "tensorboard"  # <output>/<namespace>/<job>/tensorboard/: event files, listed in manifest.json
WANDB_DIR = "wandb"  # <output>/<namespace>/<job>/wandb/: the offline W&B run (mode offline), for `wandb sync`
RUN_TAG_JOB_UID = "kubetune.job.uid"  # MLflow tag naming the FineTuneJob: a retried or resumed pod finds its run


def _key(description: str) -> object:
    return Field(default=None, description=description, min_length=1, max_length=253, pattern=SECRET_KEY)


class MlflowCredentials(KubeModel):
    """A Secret in the job's namespace with MLflow's HTTP credentials: basic auth (usernameKey and passwordKey)
    or a bearer token (tokenKey). They reach the trainer as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD /
    MLFLOW_TRACKING_TOKEN, read by the MLflow client itself."""

    model_config = with_rules(
        cel("has(self.tokenKey) != (has(self.usernameKey) || has(self.passwordKey))",
            "set tokenKey, or usernameKey and passwordKey"),
        cel("has(self.usernameKey) == has(self.passwordKey)", "usernameKey and passwordKey go together"))

    name: str = Field(description="Name of the Secret.", min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    username_key: str | None = _key("Key holding the user name (basic auth).")  # type: ignore[assignment]
    password_key: str | None = _key("Key holding the password (basic auth).")  # type: ignore[assignment]
    token_key: str | None = _key("Key holding a bearer token.")  # type: ignore[assignment]

    @model_validator(mode="after")
    def _one_scheme(self) -> MlflowCredentials:
        basic = (self.username_key is not None, self.password_key is not None)
        if basic[0] != basic[1]:
            raise ValueError("usernameKey and passwordKey go together")
        if (self.token_key is not None) == basic[0]:
            raise ValueError("set tokenKey, or usernameKey and passwordKey")
        return self


class MlflowTracking(KubeModel):
    """An MLflow tracking server (the platform runs it: docs/tracking.md)."""

    tracking_uri: str = Field(description="The tracking server's URL, e.g. http://mlflow.mlflow.svc:5000.",
                              min_length=8, max_length=1024, pattern=HTTP_URL)
    experiment: str | None = Field(default=None, min_length=1, max_length=256,
                                   description="Experiment name (created if missing). Empty: the job's namespace.")
    credentials_secret_ref: MlflowCredentials | None = Field(
        default=None, description="The server's credentials, if it wants any.")


class TensorBoardTracking(KubeModel):
    """TensorBoard event files, published next to the adapter under tensorboard/ (listed in manifest.json)."""

    enabled: bool = Field(default=True, description="Write and publish TensorBoard event files.")


class WandbTracking(KubeModel):
    """Weights & Biases."""

    model_config = with_rules(cel("self.mode == 'offline' || has(self.apiKeySecretRef)",
                                  "apiKeySecretRef is required when mode is online"))

    project: str = Field(description="W&B project.", min_length=1, max_length=128, pattern=r"^[^\s/\\#?%:]+$")
    entity: str | None = Field(default=None, description="W&B entity (user or team). Empty: the API key's default.",
                               min_length=1, max_length=128, pattern=r"^[^\s/\\#?%:]+$")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the W&B API key (reaches the trainer as WANDB_API_KEY). "
        "Required when mode is online.")
    host: str | None = Field(default=None, max_length=1024, pattern=HTTP_URL,
                             description="A self-hosted W&B server's URL. Empty: W&B's cloud.")
    mode: Literal["online", "offline"] = Field(
        default="online", description="online: log to the server; offline: write the run to files, published "
        "next to the adapter under wandb/ for `wandb sync` (no network, no key needed).")

    @model_validator(mode="after")
    def _key_online(self) -> WandbTracking:
        if self.mode == "online" and self.api_key_secret_ref is None:
            raise ValueError("apiKeySecretRef is required when mode is online")
        return self


class TrackingSpec(KubeModel):
    """Where the run's parameters, per-step metrics, evaluation, loss curve and published adapter are logged
    (docs/tracking.md). A tracker that fails during training is dropped with a Warning in the trainer's log and a
    message in status.tracking; training goes on. At start, a server that refuses the credentials fails the job
    (a user error); one that cannot be reached is dropped the same way."""

    mlflow: MlflowTracking | None = Field(default=None, description="Log to an MLflow tracking server.")
    tensorboard: TensorBoardTracking | None = Field(default=None, description="Publish TensorBoard event files.")
    wandb: WandbTracking | None = Field(default=None, description="Log to Weights & Biases.")


# ----------------------------------------------------------------------------------------- status


class RunLink(KubeModel):
    """The run of one tracker."""

    run_id: str | None = Field(default=None, description="The tracker's run id.", max_length=256)
    url: str | None = Field(default=None, description="The run's page (absent for an offline run).", max_length=2048)
    message: str | None = Field(default=None, max_length=1024,
                                description="Why the tracker stopped receiving this run (training went on without it).")


class TensorBoardLink(KubeModel):
    """Where the event files are published."""

    uri: str = Field(description="Folder of the event files (written when the adapter is published).", max_length=2048)
    message: str | None = Field(default=None, max_length=1024, description="Why no event files were written.")


class TrackingStatus(KubeModel):
    """Links to the tracked run, reported by the trainer as soon as each tracker has its run."""

    mlflow: RunLink | None = Field(default=None, description="The MLflow run.")
    wandb: RunLink | None = Field(default=None, description="The W&B run.")
    tensorboard: TensorBoardLink | None = Field(default=None, description="The TensorBoard event files.")
