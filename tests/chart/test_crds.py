"""The chart's CRDs are the generated crds/*.yaml, byte for byte, and upgrade with the chart."""

from __future__ import annotations

import subprocess
import sys

import yaml

from .helm import CHART, LOADER, ROOT, find, objects, render

SOURCE = sorted((ROOT / "crds").glob("*.yaml"))
KEEP_LINES = "  annotations:\n    helm.sh/resource-policy: keep\n    argocd.argoproj.io/sync-options: Delete=false\n"


def rendered_crd_documents(values=None):
    text = render(values)["kubetune/templates/crds.yaml"]
    return [doc for doc in text.split("\n---\n") if doc.strip()]


def test_chart_copies_are_byte_identical_to_crds():
    copies = sorted((CHART / "files" / "crds").glob("*.yaml"))
    assert [p.name for p in copies] == [p.name for p in SOURCE] == [
        "kubetune.io_finetunejobs.yaml", "kubetune.io_finetunetemplates.yaml", "kubetune.io_modeldeployments.yaml"]
    for source, copy in zip(SOURCE, copies):
        assert copy.read_bytes() == source.read_bytes(), f"{copy} drifted from {source}: run python charts/sync_crds.py"


def test_sync_script_check_agrees():
    """`charts/sync_crds.py --check` (standard library only) is what CI and humans run."""
    result = subprocess.run([sys.executable, str(ROOT / "charts" / "sync_crds.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_rendered_crds_are_the_files_plus_the_keep_annotation():
    """What Helm installs is the file's text with exactly three annotation lines inserted after `metadata:`."""
    docs = rendered_crd_documents()
    assert len(docs) == len(SOURCE)
    for doc, source in zip(docs, SOURCE):
        assert doc.count(KEEP_LINES) == 1
        assert doc.replace(KEEP_LINES, "", 1).rstrip("\n") == source.read_text().rstrip("\n")
        meta = yaml.load(doc, Loader=LOADER)["metadata"]
        assert meta["annotations"] == {"helm.sh/resource-policy": "keep", "argocd.argoproj.io/sync-options": "Delete=false"}


def test_without_keep_the_rendered_crds_are_the_files_verbatim():
    docs = rendered_crd_documents({"crds": {"keep": False}})
    assert [d.rstrip("\n") for d in docs] == [s.read_text().rstrip("\n") for s in SOURCE]


def test_rendered_crds_parse_to_the_generated_objects():
    rendered = find(objects(), "CustomResourceDefinition")
    for crd, source in zip(rendered, SOURCE):
        expected = yaml.load(source.read_text(), Loader=LOADER)
        crd["metadata"].pop("annotations")
        assert crd == expected


def test_crds_are_templates_so_upgrades_update_them():
    """Helm never upgrades files in a chart's crds/ folder; this chart has none."""
    assert not (CHART / "crds").exists()
    assert (CHART / "templates" / "crds.yaml").exists()


def test_crds_can_be_left_to_someone_else():
    assert find(objects({"crds": {"install": False}}), "CustomResourceDefinition") == []
