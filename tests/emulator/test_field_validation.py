"""The emulator's OpenAPI v3 and server-side field validation: plain `kubectl apply` (default
--validate=strict) works and rejects unknown fields the way kube-apiserver does."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_emulator import Emulator
from kubetune_emulator.pytest_plugin import emulator, kubectl  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
FTJS = "/apis/kubetune.io/v1alpha1/namespaces/default/finetunejobs"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
TYPO = 'unknown field "spec.hyperparameter"'
TYPO_WARNING = '299 - "unknown field \\"spec.hyperparameter\\""'  # the Warning header, Go-quoted


@pytest.fixture
def crds(emulator: Emulator) -> Emulator:
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        emulator.apply_file(path)
    return emulator


def finetunejob(name: str, **spec_changes: Any) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "sft-lora.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"].update(spec_changes)
    return doc


def with_typo(name: str) -> dict[str, Any]:
    """spec.hyperparameters misspelled: a field the CRD does not declare."""
    doc = finetunejob(name)
    doc["spec"]["hyperparameter"] = doc["spec"].pop("hyperparameters")
    return doc


def request(emu: Emulator, method: str, path: str, body: Any,
            content_type: str = "application/json") -> tuple[int, Any, list[str]]:
    """(status, decoded body, Warning headers)."""
    req = urllib.request.Request(emu.url + path, data=json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": content_type, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers.get_all("Warning") or []
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers.get_all("Warning") or []


def write(tmp_path: Path, doc: dict[str, Any]) -> str:
    path = tmp_path / f"{doc['metadata']['name']}.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML; PyYAML would write "2e-4" unquoted, which kubectl reads as a float
    return str(path)


# kubectl, with its default validation ------------------------------------------------------------

def test_plain_kubectl_apply_creates_and_updates_a_finetunejob(crds: Emulator, kubectl: Any, tmp_path: Path) -> None:
    manifest = tmp_path / "ftj.yaml"
    manifest.write_text((ROOT / "examples" / "sft-lora.yaml").read_text())
    assert kubectl("apply", "-f", str(manifest)).stdout.strip() == "finetunejob.kubetune.io/support-bot created"
    # validation needed no OpenAPI v2 (the patch of an update probes it; a 404 there is fine)
    openapi = [r.path for r in crds.requests if r.path.startswith("/openapi")]
    assert openapi == ["/openapi/v3", "/openapi/v3/apis/kubetune.io/v1alpha1"]
    manifest.write_text(manifest.read_text().replace("epochs: 2", "epochs: 3"))
    assert kubectl("apply", "-f", str(manifest)).stdout.strip() == "finetunejob.kubetune.io/support-bot configured"
    stored = crds.get("kubetune.io", "v1alpha1", "finetunejobs", "default", "support-bot")
    assert stored is not None and stored["spec"]["hyperparameters"]["epochs"] == 3
    # kubectl deferred to the server: it sent fieldValidation=Strict
    writes = [r for r in crds.requests if r.resource == "finetunejobs.kubetune.io" and r.method in ("POST", "PATCH")]
    assert [(r.method, r.query.get("fieldValidation")) for r in writes] == [("POST", "Strict"), ("PATCH", "Strict")]


def test_plain_kubectl_apply_rejects_a_misspelled_field(crds: Emulator, kubectl: Any, tmp_path: Path) -> None:
    result = kubectl("apply", "-f", write(tmp_path, with_typo("typo")), check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == (
        'Error from server (BadRequest): error when creating "' + str(tmp_path / "typo.yaml") + '": FineTuneJob in '
        f'version "v1alpha1" cannot be handled as a FineTuneJob: strict decoding error: {TYPO}')
    assert crds.get("kubetune.io", "v1alpha1", "finetunejobs", "default", "typo") is None


def test_plain_kubectl_apply_rejects_a_misspelled_field_in_an_update(crds: Emulator, kubectl: Any,
                                                                      tmp_path: Path) -> None:
    kubectl("apply", "-f", write(tmp_path, finetunejob("j")))
    changed = finetunejob("j")
    changed["spec"]["hyperparameters"]["epoch"] = 3
    result = kubectl("apply", "-f", write(tmp_path, changed), check=False)
    assert result.returncode != 0
    assert result.stderr.startswith("The request is invalid: patch: Invalid value: ")
    assert result.stderr.strip().endswith('strict decoding error: unknown field "spec.hyperparameters.epoch"')


def test_kubectl_validate_warn_stores_the_pruned_object_and_prints_the_warning(crds: Emulator, kubectl: Any,
                                                                                tmp_path: Path) -> None:
    result = kubectl("apply", "--validate=warn", "-f", write(tmp_path, with_typo("typo")))
    assert result.stdout.strip() == "finetunejob.kubetune.io/typo created"
    assert result.stderr.strip() == f"Warning: {TYPO}"
    stored = crds.get("kubetune.io", "v1alpha1", "finetunejobs", "default", "typo")
    assert stored is not None and "hyperparameter" not in stored["spec"]


def test_kubectl_server_side_apply_rejects_a_misspelled_field(crds: Emulator, kubectl: Any, tmp_path: Path) -> None:
    result = kubectl("apply", "--server-side", "-f", write(tmp_path, with_typo("typo")), check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == ("Error from server: failed to create typed patch object (default/typo; "
                                     "kubetune.io/v1alpha1, Kind=FineTuneJob): .spec.hyperparameter: field not "
                                     "declared in schema")


def test_plain_kubectl_apply_of_builtin_kinds_creates_and_patches(emulator: Emulator, kubectl: Any,
                                                                   tmp_path: Path) -> None:
    """Built-in kinds have permissive schemas: kubectl builds its strategic merge patch from its own types,
    so a container removed from the manifest is removed from the Deployment."""
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {
        "selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}}, "spec": {
            "containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}]}}}}
    assert kubectl("apply", "-f", write(tmp_path, deployment)).stdout.strip() == "deployment.apps/d created"
    deployment["spec"]["template"]["spec"]["containers"].pop()
    assert kubectl("apply", "-f", write(tmp_path, deployment)).stdout.strip() == "deployment.apps/d configured"
    stored = emulator.get("apps", "v1", "deployments", "default", "d")
    assert stored is not None and [c["name"] for c in stored["spec"]["template"]["spec"]["containers"]] == ["a"]


def test_kubectl_explain_reads_the_crd_schema(crds: Emulator, kubectl: Any) -> None:
    out = kubectl("explain", "finetunejob.spec.hyperparameters.learningRate").stdout
    assert "KIND:       FineTuneJob" in out and "FIELD: learningRate <string>" in out
    assert "Peak learning rate" in out
    top = kubectl("explain", "ftj").stdout
    assert "metadata\t<ObjectMeta>" in top and "spec\t<Object> -required-" in top


# The HTTP API directly ---------------------------------------------------------------------------

def test_openapi_v3_index_and_documents(crds: Emulator) -> None:
    status, index = crds.http("GET", "/openapi/v3")
    assert status == 200
    url = index["paths"]["apis/kubetune.io/v1alpha1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/apis/kubetune.io/v1alpha1?hash=")
    assert {"api/v1", "apis/apps/v1", "apis/batch/v1", "apis/apiextensions.k8s.io/v1"} <= set(index["paths"])
    status, doc = crds.http("GET", url)
    assert status == 200
    patch = doc["paths"]["/apis/kubetune.io/v1alpha1/namespaces/{namespace}/finetunejobs/{name}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": "kubetune.io", "kind": "FineTuneJob",
                                                        "version": "v1alpha1"}
    assert [p["in"] for p in patch["parameters"] if p["name"] == "fieldValidation"] == ["query"]
    assert "application/strategic-merge-patch+json" not in patch["requestBody"]["content"]
    schema = doc["components"]["schemas"]["io.kubetune.v1alpha1.FineTuneJob"]
    assert "hyperparameters" in schema["properties"]["spec"]["properties"]
    assert crds.http("GET", "/openapi/v3/apis/nothing.example.com/v1")[0] == 404


@pytest.mark.parametrize(("directive", "status", "warnings"), [
    ("Strict", 400, []), ("Warn", 201, [TYPO_WARNING]), ("Ignore", 201, []), (None, 201, [TYPO_WARNING])])
def test_create_honours_field_validation(crds: Emulator, directive: str | None, status: int,
                                         warnings: list[str]) -> None:
    query = f"?fieldValidation={directive}" if directive else ""  # absent: Warn, as the API server defaults
    got, body, headers = request(crds, "POST", FTJS + query, with_typo("typo"))
    assert (got, headers) == (status, warnings)
    if status == 400:
        assert body["reason"] == "BadRequest"
        assert body["message"] == ('FineTuneJob in version "v1alpha1" cannot be handled as a FineTuneJob: '
                                   f"strict decoding error: {TYPO}")
    else:
        assert "hyperparameter" not in body["spec"]  # pruned, as before


def test_update_and_patches_honour_field_validation(crds: Emulator) -> None:
    assert request(crds, "POST", FTJS, finetunejob("j"))[0] == 201
    stored = crds.get("kubetune.io", "v1alpha1", "finetunejobs", "default", "j")
    assert stored is not None
    put = dict(stored, spec=dict(stored["spec"], hyperparameter={}))
    status, body, _ = request(crds, "PUT", f"{FTJS}/j?fieldValidation=Strict", put)
    assert (status, body["message"]) == (400, 'FineTuneJob in version "v1alpha1" cannot be handled as a '
                                              f"FineTuneJob: strict decoding error: {TYPO}")
    for content_type, patch in [("application/merge-patch+json", {"spec": {"hyperparameter": {}}}),
                                ("application/json-patch+json", [{"op": "add", "path": "/spec/hyperparameter",
                                                                  "value": {}}])]:
        status, body, _ = request(crds, "PATCH", f"{FTJS}/j?fieldValidation=Strict", patch, content_type)
        assert (status, body["reason"], body["details"]["causes"][0]["field"]) == (422, "Invalid", "patch")
        assert body["message"].startswith(' "" is invalid: patch: Invalid value: "{')
        assert body["message"].endswith(f"strict decoding error: {TYPO}")
        status, body, headers = request(crds, "PATCH", f"{FTJS}/j?fieldValidation=Warn", patch, content_type)
        assert (status, "hyperparameter" in body["spec"], headers) == (200, False, [TYPO_WARNING])
    status, body, _ = request(crds, "PATCH", f"{FTJS}/j?fieldValidation=Ignore", {"spec": {"hyperparameter": {}}},
                              "application/merge-patch+json")
    assert (status, "hyperparameter" in body["spec"]) == (200, False)
    status, body, _ = request(crds, "PATCH", f"{FTJS}/j?fieldValidation=Bogus", {}, "application/merge-patch+json")
    assert (status, body["message"]) == (422, 'PatchOptions.meta.k8s.io "" is invalid: fieldValidation: Unsupported '
                                              'value: "Bogus": supported values: "Ignore", "Strict", "Warn"')


def test_server_side_apply_rejects_unknown_fields_whatever_the_directive(crds: Emulator) -> None:
    doc = with_typo("typo")
    status, body, _ = request(crds, "PATCH", f"{FTJS}/typo?fieldManager=t&fieldValidation=Ignore", doc,
                              "application/apply-patch+yaml")
    assert (status, "reason" in body) == (500, False)
    assert body["message"] == ("failed to create typed patch object (default/typo; kubetune.io/v1alpha1, "
                               "Kind=FineTuneJob): .spec.hyperparameter: field not declared in schema")
    assert request(crds, "PATCH", f"{FTJS}/j?fieldManager=t", finetunejob("j"), "application/apply-patch+yaml")[0] \
        == 201


def test_unknown_metadata_fields_are_checked_and_dropped_for_every_kind(emulator: Emulator) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labelz": {"a": "b"}}}
    status, body, _ = request(emulator, "POST", CONFIGMAPS + "?fieldValidation=Strict", cm)
    assert (status, body["message"]) == (400, 'ConfigMap in version "v1" cannot be handled as a ConfigMap: '
                                              'strict decoding error: unknown field "metadata.labelz"')
    status, body, headers = request(emulator, "POST", CONFIGMAPS, cm)
    assert (status, "labelz" in body["metadata"], headers) == (201, False,
                                                               ['299 - "unknown field \\"metadata.labelz\\""'])
    assert body["metadata"]["name"] == "c" and body["metadata"]["uid"]
    owned = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": body["metadata"]["uid"], "blockOwner": True}]}}
    status, body, _ = request(emulator, "POST", CONFIGMAPS + "?fieldValidation=Strict", owned)
    assert status == 400
    assert body["message"].endswith('strict decoding error: unknown field "metadata.ownerReferences[0].blockOwner"')
    status, body, _ = request(emulator, "POST", CONFIGMAPS + "?fieldValidation=Ignore", owned)
    assert (status, body["metadata"]["ownerReferences"][0].keys()) == (201, {"apiVersion", "kind", "name", "uid"})


def test_in_process_writes_stay_lenient(crds: Emulator) -> None:
    """Helpers that bypass HTTP (emu.create/apply) prune silently, as before: no directive to honour."""
    created = crds.create(with_typo("typo"))
    assert "hyperparameter" not in created["spec"]
    assert "hyperparameter" not in crds.apply(with_typo("typo"))["spec"]


def test_unknown_fields_inside_lists_are_named_as_each_path_names_them(crds: Emulator) -> None:
    """Pruning names list items by index; structured-merge-diff (server-side apply) by their list-map keys."""
    doc = yaml.safe_load((ROOT / "examples" / "model-deployment.yaml").read_text())
    doc["spec"]["adapters"][1]["urll"] = doc["spec"]["adapters"][1].pop("uri")
    models = "/apis/kubetune.io/v1alpha1/namespaces/default/modeldeployments"
    status, body, _ = request(crds, "POST", models + "?fieldValidation=Strict", doc)
    assert (status, body["message"].rpartition(": ")[2]) == (400, 'unknown field "spec.adapters[1].urll"')
    status, body, _ = request(crds, "PATCH", f"{models}/{doc['metadata']['name']}?fieldManager=t", doc,
                              "application/apply-patch+yaml")
    assert (status, body["message"].rpartition("): ")[2]) == (
        500, '.spec.adapters[name="legal-summarizer"].urll: field not declared in schema')
