#!/usr/bin/env python3
"""The README's two fresh-machine commands, read from its first ```sh block (comments dropped):
command 1 runs the main job, command 2 the test suite. `.ci/run` and tests/quickstart take them from
here, so what CI runs is what the README tells a newcomer to type, and the two cannot drift apart.

Usage: readme_commands.py N   prints command N (1 or 2). Standard library only: it runs before any
venv exists."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def commands(text: str | None = None) -> list[str]:
    text = README.read_text() if text is None else text
    block = re.search(r"^```sh\n(.*?)^```", text, re.S | re.M)
    if block is None:
        raise SystemExit("README.md has no ```sh block with its fresh-machine commands")
    lines = [re.split(r"\s#", line, maxsplit=1)[0].strip() for line in block.group(1).splitlines()]
    found = [line for line in lines if line and not line.startswith("#")]
    if len(found) != 2:
        raise SystemExit(f"README.md's first ```sh block must hold exactly two commands (main job, tests); found {found}")
    return found


if __name__ == "__main__":
    print(commands()[int(sys.argv[1]) - 1])
