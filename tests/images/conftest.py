"""Whether the tests marked `images` (tests/images/test_images.py, tests/local/test_container_mode.py)
run: when `make images` has run on this machine (it leaves .kubetune/images/built.json) or when
KUBETUNE_TEST_IMAGES=1 (then a missing image fails); otherwise tests/conftest.py deselects them, which
pytest's summary counts (deselected, never skipped: CI fails skips). KUBETUNE_TEST_IMAGES=0 deselects them."""

from __future__ import annotations

import os
from pathlib import Path

STAMP = Path(__file__).resolve().parents[2] / ".kubetune" / "images" / "built.json"


def images_selected() -> bool:
    wanted = os.environ.get("KUBETUNE_TEST_IMAGES", "").strip()
    return wanted == "1" or (wanted != "0" and STAMP.exists())
