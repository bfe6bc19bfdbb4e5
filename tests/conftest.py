"""Shared fixtures and the CI skip guard (tests/ci_guard.py): the Kubernetes API emulator (kubetune.emulator) and, where present, the tiny
model and S3 server fixtures (tests/fixtures)."""

from pathlib import Path

pytest_plugins = ["kubetune.emulator.pytest_plugin", "tests.ci_guard"]
for _name in ("tiny_model", "s3"):
    if (Path(__file__).parent / "fixtures" / f"{_name}.py").exists():
        pytest_plugins.append(f"tests.fixtures.{_name}")
