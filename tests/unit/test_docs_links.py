"""Every docs/ page that the API descriptions (hence the CRDs and `kubectl explain`), the README or
another page points to exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [*sorted((ROOT / "crds").glob("*.yaml")), ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
           *sorted((ROOT / "operator" / "kubetune" / "api").glob("*.py"))]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_pages_referenced_exist(source: Path):
    missing = sorted({ref for ref in re.findall(r"docs/[\w.-]+\.md", source.read_text()) if not (ROOT / ref).exists()})
    assert not missing, f"{source.relative_to(ROOT)} points to missing pages: {missing}"
