"""tests/images/test_images.py checks the images `make images` built. It runs when `make images` has run
on this machine (it leaves .kubetune/images/built.json) or when KUBETUNE_TEST_IMAGES=1 (then a missing
image fails); otherwise its tests are deselected, which pytest's summary counts. KUBETUNE_TEST_IMAGES=0
deselects them."""

from __future__ import annotations

import os
from pathlib import Path

STAMP = Path(__file__).resolve().parents[2] / ".kubetune" / "images" / "built.json"


def images_selected() -> bool:
    wanted = os.environ.get("KUBETUNE_TEST_IMAGES", "").strip()
    return wanted == "1" or (wanted != "0" and STAMP.exists())


def pytest_collection_modifyitems(config, items):
    if images_selected():
        return
    deselected = [item for item in items if item.nodeid.startswith("tests/images/test_images.py")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]
