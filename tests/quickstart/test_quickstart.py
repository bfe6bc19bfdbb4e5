"""README command 1, as a newcomer runs it: `kubetune local quickstart` (SmolLM2-135M-Instruct from
PyPI, real training, real vLLM on CPU). Needs the serving venv, as `make quickstart` builds it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.local.cli import default_serving_python

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quickstart_teaches_the_adapter_a_new_identity(tmp_path):
    if default_serving_python() is None:
        pytest.skip("no .venv-serving: `make quickstart` builds it (serving-image/setup-venv.sh)")
    workdir = tmp_path / "kubetune"
    result = subprocess.run([sys.executable, "-m", "kubetune", "local", "quickstart", "--workdir", str(workdir), "--timeout", "900"],
                            cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["question"] == "Who are you?"
    assert "Kubey" in summary["answers"]["kubey"], summary
    assert "Kubey" not in summary["answers"]["kubey-chat"], summary
    job = summary["finetunejobs"]["kubey"]
    assert job["evalLossAfter"] < job["evalLossBefore"] / 2, job
    adapter_dir = Path(job["adapter"]["uri"].removeprefix("file://"))
    assert (adapter_dir / "manifest.json").exists() and (adapter_dir / "loss_curve.png").exists()
    assert "loss curve:" in result.stdout
