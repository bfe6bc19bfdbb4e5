"""spec.tracking -> the training container's credential env: secretKeyRefs only, under the names the MLflow client
and the wandb SDK read themselves. Pure. Everything else about tracking (URIs, experiment, project, mode) travels
in the trainer config, which never holds a secret."""

from __future__ import annotations

from typing import Any

from ..api.tracking import (
    ENV_MLFLOW_PASSWORD,
    ENV_MLFLOW_TOKEN,
    ENV_MLFLOW_USERNAME,
    ENV_WANDB_API_KEY,
    TrackingSpec,
)
from .common import secret_env


def tracking_env(tracking: TrackingSpec | None) -> list[dict[str, Any]]:
    """The secretKeyRef env vars of spec.tracking's credentials (empty without any)."""
    env: list[dict[str, Any]] = []
    creds = tracking.mlflow.credentials_secret_ref if tracking and tracking.mlflow else None
    if creds is not None:
        for name, key in ((ENV_MLFLOW_USERNAME, creds.username_key), (ENV_MLFLOW_PASSWORD, creds.password_key),
                          (ENV_MLFLOW_TOKEN, creds.token_key)):
            if key is not None:
                env.append(secret_env(name, creds.name, key))
    ref = tracking.wandb.api_key_secret_ref if tracking and tracking.wandb else None
    if ref is not None:
        env.append(secret_env(ENV_WANDB_API_KEY, ref.name, ref.key))
    return env
