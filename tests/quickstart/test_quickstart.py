"""README command 1, verbatim: the command is read from README.md (.ci/readme_commands.py, the same
definition .ci/run takes command 2 from) and run from the checkout's root with the caller's
environment, minus what make and pytest add to it (a newcomer types it in a plain shell), no extra
flags. Its outcome is checked: the adapter answers with the learned identity and the eval loss drops.
Real SmolLM2-135M-Instruct from PyPI, real training, real vLLM on CPU (the serving venv, which
`make test` builds as `make quickstart` does)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def readme_command(n: int) -> str:
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.commands()[n - 1]


def newcomer_env() -> dict[str, str]:
    """The environment of a plain shell: no MAKEFLAGS/MAKELEVEL from the `make test` we run under, no PYTEST_*."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "PYTEST_"))}


@pytest.mark.slow
def test_readme_command_1_teaches_the_adapter_a_new_identity():
    command = readme_command(1)
    assert command == "make quickstart", "README command 1 changed: make sure this test still checks its outcome"
    workdir = ROOT / ".kubetune"  # the default --workdir, relative to where the command runs
    (workdir / "summary.json").unlink(missing_ok=True)
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=newcomer_env(), capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["question"] == "Who are you?"
    assert "Kubey" in summary["answers"]["kubey"], summary
    assert "Kubey" not in summary["answers"]["kubey-chat"], summary
    job = summary["finetunejobs"]["kubey"]
    assert job["evalLossAfter"] < job["evalLossBefore"] / 2, job
    adapter_dir = Path(job["adapter"]["uri"].removeprefix("file://"))
    assert adapter_dir.is_relative_to(workdir)
    assert (adapter_dir / "manifest.json").exists() and (adapter_dir / "loss_curve.png").exists()
    assert "loss curve:" in result.stdout
    # spec.evaluation: the held-out questions answered before and after, side by side in the report it links.
    report = Path(job["evaluationReport"].removeprefix("file://"))
    assert report == adapter_dir / "eval" / "report.html" and report.exists() and "evaluation report:" in result.stdout
    task = {m["name"]: m for m in json.loads((adapter_dir / "eval" / "summary.json").read_text())["task"]["metrics"]}
    assert task["rouge_l"]["final"] > task["rouge_l"]["baseline"], task
