"""Trainer test environment: every test gets its own termination log, a free metrics port, a PVC
root, and no ambient S3/Kubernetes settings (a test opts in through the s3_env fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api.constants import ENV_PVC_ROOT, ENV_TERMINATION_LOG


@pytest.fixture(autouse=True)
def trainer_env(tmp_path: Path, monkeypatch) -> Path:
    """Returns the termination log path."""
    for name in ("KUBETUNE_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                 "KUBERNETES_SERVICE_HOST", "KUBETUNE_API_URL", "KUBETUNE_WORK_DIR", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    termination = tmp_path / "termination-log"
    monkeypatch.setenv(ENV_TERMINATION_LOG, str(termination))
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", "0")
    monkeypatch.setenv(ENV_PVC_ROOT, str(tmp_path / "pvc"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return termination
