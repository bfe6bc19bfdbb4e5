"""Every method of the registry (kubetune.api.methods) is validated the same three ways: by the pydantic
models (the operator), by the CRD's CEL rules (the API server, here cel-python and the emulator), and they
agree. The cases are generated from the table, so a new row is covered without a new test."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api import FineTuneJobSpec
from kubetune.api.methods import FORMATS, METHODS
from kubetune.api.validation import SpecError, parse
from kubetune_emulator import Emulator
from kubetune_emulator.pytest_plugin import emulator  # noqa: F401  (fixture)
from tests.examples.test_examples import cel_failures, crd_schema

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {"baseModel": {"uri": "hf://org/model"}, "dataset": {"train": "s3://data/x.jsonl"}}
WRONG = [(name, next(f for f in FORMATS if f not in m.formats)) for name, m in METHODS.items()
         if set(m.formats) != set(FORMATS)]
OPTIONS = [name for name, m in METHODS.items() if m.options is not None]


def _cel(spec: dict) -> list[str]:
    """The CRD's CEL rules that a FineTuneJob with this spec breaks (cel-python)."""
    return cel_failures(crd_schema("FineTuneJob"), {"spec": spec})


def _spec(method: str, fmt: str, **method_extra) -> dict:
    return {**MINIMAL, "method": {"type": method, **method_extra}, "dataset": {"train": "s3://data/x.jsonl", "format": fmt}}


@pytest.mark.parametrize(("method", "fmt"), WRONG)
def test_a_format_the_method_cannot_train_on_is_rejected_naming_the_fields(method, fmt):
    allowed = ", ".join(METHODS[method].formats)
    message = f"method.type {method} needs dataset.format {allowed} or auto"
    with pytest.raises(SpecError) as err:
        parse(FineTuneJobSpec, _spec(method, fmt))
    assert f"spec: {message}, got {fmt}" in str(err.value)
    assert _cel(_spec(method, fmt)) == [f".spec: {message}"]


@pytest.mark.parametrize("method", METHODS)
def test_every_format_the_method_accepts_and_auto_pass_both_checks(method):
    for fmt in ("auto", *METHODS[method].formats):
        assert parse(FineTuneJobSpec, _spec(method, fmt)).method.type == method
        assert _cel(_spec(method, fmt)) == []


@pytest.mark.parametrize("owner", OPTIONS)
def test_method_options_only_with_their_method(owner):
    other = next(name for name in METHODS if name != owner)
    bad = _spec(other, "auto", **{owner: {}})
    with pytest.raises(SpecError) as err:
        parse(FineTuneJobSpec, bad)
    assert f"spec.method: method.{owner} is only valid with method.type {owner}" in str(err.value)
    assert _cel(bad) == [f".spec.method: method.{owner} is only valid with method.type {owner}"]
    assert parse(FineTuneJobSpec, _spec(owner, "auto", **{owner: {}})).to_dict()["method"]["type"] == owner


def test_the_api_server_rejects_a_wrong_format_for_each_method(emulator: Emulator):  # noqa: F811
    """Through the emulator's admission (the checked-in CRD's CEL rules), as `kubectl apply` would see it."""
    emulator.apply_file(ROOT / "crds" / "kubetune.io_finetunejobs.yaml")
    url = "/apis/kubetune.io/v1alpha1/namespaces/default/finetunejobs"
    for i, (method, fmt) in enumerate(WRONG):
        body = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": f"bad-{i}"},
                "spec": _spec(method, fmt)}
        status, error = emulator.http("POST", url, body)
        assert status == 422, error
        assert [(c["field"], c["message"]) for c in error["details"]["causes"]] == [
            ("spec", f'Invalid value: "object": method.type {method} needs dataset.format '
                     f'{", ".join(METHODS[method].formats)} or auto')], error
        body["spec"] = _spec(method, METHODS[method].formats[0])
        assert emulator.http("POST", url, body)[0] == 201
