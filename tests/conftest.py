"""Shared fixtures and the CI skip guard (tests/ci_guard.py): the Kubernetes API emulator (kubetune_emulator) and, where present, the tiny
model and S3 server fixtures (tests/fixtures)."""

import os
from pathlib import Path

import pytest

pytest_plugins = ["kubetune_emulator.pytest_plugin", "tests.ci_guard"]
for _name in ("tiny_model", "s3"):
    if (Path(__file__).parent / "fixtures" / f"{_name}.py").exists():
        pytest_plugins.append(f"tests.fixtures.{_name}")


def pytest_collection_modifyitems(config, items):
    """Tests marked `images` need `make images` (tests/images/conftest.py): without the images they are
    deselected, not skipped, and the summary says so."""
    from tests.images.conftest import images_selected

    if images_selected():
        return
    deselected = [item for item in items if item.get_closest_marker("images")]
    if deselected and os.environ.get("CI") and os.environ.get("KUBETUNE_TEST_IMAGES", "").strip() != "0":
        # CI installs podman and `make test` builds the images first: no stamp there means the images
        # were never built, which must fail the run rather than pass it with the container tests left out.
        raise pytest.UsageError(f"CI is set but no images were built ({len(deselected)} tests need them; "
                                ".kubetune/images/built.json is missing): `make test` builds them where podman "
                                "is installed (docs/images.md)")
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("images")]


def _where_it_failed(report, frames: int = 8) -> list[str]:
    """The innermost frames of a failed test's traceback, one `path:line` line each, then `-> ` and the exception's
    first line."""
    chain = getattr(report.longrepr, "chain", None)
    if not chain:
        return []
    traceback, crash, _ = chain[-1]
    lines = []
    for entry in getattr(traceback, "reprentries", [])[-frames:]:
        loc = getattr(entry, "reprfileloc", None)
        if loc is not None:
            lines.append(f"    {loc.path}:{loc.lineno}")
    if crash is not None:
        lines.append(f"    -> {crash.message.splitlines()[0][:300] if crash.message else ''}")
    return lines


def pytest_terminal_summary(terminalreporter):
    """Where each failure happened, compactly: a CI log keeps only its tail, which the full tracebacks
    printed above it would push out. Then the images note."""
    failed = terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", [])
    if failed:
        terminalreporter.section("where the failures happened (innermost frames)")
        for report in failed[:12]:
            terminalreporter.write_line(f"{report.nodeid} ({report.when})")
            for line in _where_it_failed(report):
                terminalreporter.write_line(line)
    from tests.images.conftest import images_selected

    if not images_selected():
        terminalreporter.write_line("tests marked `images` were deselected: no images built here "
                                    "(`make images`, or KUBETUNE_TEST_IMAGES=1)")
