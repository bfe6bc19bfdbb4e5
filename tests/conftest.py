"""Shared fixtures and the CI skip guard (tests/ci_guard.py): the Kubernetes API emulator (kubetune.emulator) and, where present, the tiny
model and S3 server fixtures (tests/fixtures)."""

from pathlib import Path

pytest_plugins = ["kubetune.emulator.pytest_plugin", "tests.ci_guard"]
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
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("images")]


def pytest_terminal_summary(terminalreporter):
    from tests.images.conftest import images_selected

    if not images_selected():
        terminalreporter.write_line("tests marked `images` were deselected: no images built here "
                                    "(`make images`, or KUBETUNE_TEST_IMAGES=1)")
