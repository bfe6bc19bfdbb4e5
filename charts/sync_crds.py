#!/usr/bin/env python3
"""Copy the generated CRDs (crds/*.yaml) into the chart (charts/kubetune/files/crds/), byte for byte.

    python charts/sync_crds.py          # copy
    python charts/sync_crds.py --check  # exit 1 if the chart's copies differ (what tests/chart checks)

Standard library only: it does not need kubetune installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "crds"
TARGET = ROOT / "charts" / "kubetune" / "files" / "crds"


def drift() -> list[str]:
    """Files that are missing, extra or different in the chart's copy."""
    source = {p.name: p.read_bytes() for p in sorted(SOURCE.glob("*.yaml"))}
    target = {p.name: p.read_bytes() for p in sorted(TARGET.glob("*.yaml"))}
    return sorted(name for name in source.keys() | target.keys() if source.get(name) != target.get(name))


def sync() -> list[str]:
    TARGET.mkdir(parents=True, exist_ok=True)
    changed = drift()
    for name in changed:
        src, dst = SOURCE / name, TARGET / name
        if src.exists():
            dst.write_bytes(src.read_bytes())
        else:
            dst.unlink()
    return changed


def main(argv: list[str]) -> int:
    if "--check" in argv:
        changed = drift()
        if changed:
            print(f"chart CRDs differ from crds/: {', '.join(changed)} (run: python charts/sync_crds.py)", file=sys.stderr)
            return 1
        return 0
    for name in sync():
        print(f"synced {TARGET.relative_to(ROOT) / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
