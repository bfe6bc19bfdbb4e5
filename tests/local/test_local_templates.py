"""`kubetune local run -f` with FineTuneTemplates in the files: they are validated with the jobs before anything
runs (a job the template refuses is refused there, with the bound), applied to the emulator cluster-wide before
the jobs, and the real operator (its local RBAC: the chart's) resolves a job with them."""

from __future__ import annotations

import pytest
import yaml

from kubetune.api.validation import SpecError
from kubetune_local import cli
from kubetune_local.run import LocalRun

TEMPLATE = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneTemplate", "metadata": {"name": "tiny"},
            "spec": {"baseModel": {"uri": "file:///models/tiny"}, "adapterTypes": ["lora"],
                     "defaults": {"adapter": {"rank": 4}, "resources": {"gpus": 0},
                                  "hyperparameters": {"maxLength": 128, "learningRate": "3e-3"}},
                     "fixed": ["resources.gpus"], "bounds": {"maxRank": 8, "maxLength": 256}}}


def job(name: str, **spec: object) -> dict:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
            "spec": {"baseModel": {"uri": "file:///models/tiny"}, "dataset": {"train": "file:///data/train.jsonl"},
                     "output": {"uri": "file:///out"}, **spec}}


def test_a_job_its_template_refuses_is_refused_before_anything_runs(tmp_path):
    files = tmp_path / "all.yaml"
    files.write_text(yaml.safe_dump_all([TEMPLATE, job("big", adapter={"rank": 64}), job("gpu", resources={"gpus": 2})]))
    with pytest.raises(SpecError) as err:
        LocalRun(workdir=tmp_path / "w").load([files])
    assert err.value.problems == ["FineTuneJob/big: spec.adapter.rank: 64 exceeds the maximum 8 of FineTuneTemplate tiny",
                                  "FineTuneJob/gpu: spec.resources.gpus: fixed to 0 by FineTuneTemplate tiny"]
    files.write_text(yaml.safe_dump_all([{**TEMPLATE, "spec": {**TEMPLATE["spec"], "bounds": {"maxRank": "x"}}}, job("ok")]))
    with pytest.raises(SpecError, match=r"FineTuneTemplate/tiny: spec.bounds.maxRank: "):
        LocalRun(workdir=tmp_path / "w").load([files])


def test_run_applies_the_templates_first_and_the_operator_uses_them(tmp_path, monkeypatch):
    """The real `run` (emulator, operator process with the chart's RBAC, local kubelet); only the training wait is
    replaced: the stand-in applies the job, as `train` does, and returns once the operator has resolved it."""
    files = tmp_path / "all.yaml"
    files.write_text(yaml.safe_dump_all([job("tiny", adapter={"rank": 8}), TEMPLATE]))  # the job first in the file
    seen: dict = {}

    def drive(lr, docs, results, question, started, timeout):
        seen["template"] = lr.emu.get("kubetune.io", "v1alpha1", "finetunetemplates", None, "tiny")
        assert [d["kind"] for d in docs if d["kind"] != "Secret"] == ["FineTuneJob", "FineTuneTemplate"]
        lr.apply(next(d for d in docs if d["kind"] == "FineTuneJob"))
        seen["status"] = lr.wait("FineTuneJob", "tiny", lambda o: (o.get("status") or {}).get("effectiveSpec") and o["status"],
                                 lambda _: None, timeout=30)
        return 0

    monkeypatch.setattr(cli, "_drive", drive)
    assert cli.run([files], tmp_path / "work", {}, None, timeout=30) == 0
    assert seen["template"]["metadata"]["name"] == "tiny" and "namespace" not in seen["template"]["metadata"]
    effective = seen["status"]["effectiveSpec"]
    assert (effective["adapter"]["rank"], effective["hyperparameters"]["maxLength"], effective["resources"]["gpus"]) == (8, 128, 0)
    assert seen["status"]["template"]["name"] == "tiny"
