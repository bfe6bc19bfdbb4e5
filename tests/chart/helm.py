"""The chart rendered and linted by Helm's own Go SDK (PyPI helm-python-sdk, Helm v4; no helm CLI),
and built-in objects validated offline by kubernetes-validate. Shared by tests/chart, tests/examples
and tests/security."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (the dev extra)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the dev extra)")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
RELEASE = "kubetune"
NAMESPACE = "kubetune-system"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schema known here.
KUBE_VERSIONS = ("1.30.0", "1.37.0")
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=1)
def chart() -> Any:
    return helm.Chart.load(str(CHART))


@functools.lru_cache(maxsize=64)
def _render(values_json: str, namespace: str) -> dict[str, str]:
    return chart().render(json.loads(values_json), name=RELEASE, namespace=namespace, is_install=True)


def render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text (like `helm template`), NOTES.txt included."""
    return dict(_render(json.dumps(values or {}, sort_keys=True), namespace))


@functools.lru_cache(maxsize=64)
def _objects(values_json: str, namespace: str) -> list[dict[str, Any]]:
    out = []
    for path, text in sorted(_render(values_json, namespace).items()):
        if not path.endswith("NOTES.txt"):
            out += [doc for doc in yaml.load_all(text, Loader=LOADER) if doc]
    return out


def objects(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every rendered Kubernetes object, in template order (a fresh copy: tests may change it)."""
    return copy.deepcopy(_objects(json.dumps(values or {}, sort_keys=True), namespace))


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def lint(values: dict[str, Any] | None = None) -> list[str]:
    """`helm lint --strict` findings worse than info, as text (empty: clean)."""
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    return report["errors"] + [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]


def kube_validate(obj: dict[str, Any]) -> None:
    """Raise kubernetes_validate.ValidationError unless `obj` is a valid built-in object (strict:
    unknown fields are errors) for every Kubernetes version the chart supports."""
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def load_values_file(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=LOADER) or {}
