"""Under CI (`$CI` set and not "0"/"false"), a skipped test or test module fails the run.

A missing binary or a broken install (no vLLM venv, no weed, no hadolint) would otherwise pass CI with
half the suite skipped. Loaded by tests/conftest.py; exercised by tests/unit/test_ci_guard.py."""

from __future__ import annotations

import os

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _fail(report, what: str) -> None:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    report.outcome = "failed"
    report.longrepr = f"{what} was skipped, and CI={os.environ.get('CI')} forbids skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if under_ci() and report.skipped and not hasattr(report, "wasxfail"):
        _fail(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if under_ci() and report.skipped:
        _fail(report, collector.nodeid or "a test module")
