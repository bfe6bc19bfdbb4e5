"""Storage URIs that must work on a cluster: pvc:// claims are mounted where the trainer and the sidecar
look for them (read-only where only read); file:// is refused unless the operator runs under `kubetune local`."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api import constants as c
from kubetune.api.common import pvc_mount_path
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.validation import SpecError, parse
from kubetune.builders import finetunejob as ftj_builders
from kubetune.builders import modeldeployment as md_builders
from kubetune.builders.modeldeployment import desired_set
from kubetune.config import OperatorSettings

SETTINGS = OperatorSettings(default_output_uri="s3://adapters/prod")
LOCAL = OperatorSettings(default_output_uri="s3://adapters/prod", allow_file_uris=True)
FTJ = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bot", "namespace": "ml", "uid": "u1"}}
MD = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "chat", "namespace": "ml", "uid": "u2"}}
BASE_MOUNTS = ["config", "work", "tmp", "dshm", "kube-api-access"]


def _job(spec: dict, settings: OperatorSettings = SETTINGS) -> dict:
    resolved = ftj_builders.resolve_spec(parse(FineTuneJobSpec, spec), settings)
    return ftj_builders.build_children({**FTJ, "spec": spec}, resolved, settings)[-1]


def _deployment(spec: dict, adapter_uris: tuple[str, ...] = ()) -> dict:
    resolved = md_builders.resolve_spec(parse(ModelDeploymentSpec, spec), SETTINGS)
    desired = desired_set(1, [{"name": f"a{i}", "uri": u, "manifestSha256": "0" * 64} for i, u in enumerate(adapter_uris)])
    return md_builders.build_children({**MD, "spec": spec}, resolved, SETTINGS, desired)[-1]


def test_the_mount_path_is_where_trainer_and_sidecar_resolve_pvc_uris(monkeypatch):
    from kubetune_storage import Storage, open_store  # the trainer's and the sidecar's storage layer

    monkeypatch.delenv(c.ENV_PVC_ROOT, raising=False)
    assert str(open_store("pvc://team-data/chat/train.jsonl").local_path) == f"{pvc_mount_path('team-data')}/chat/train.jsonl"
    assert str(Storage({}).local_path("pvc://adapters/ml/bot")) == f"{pvc_mount_path('adapters')}/ml/bot"


def test_training_job_mounts_data_and_model_claims_read_only_and_the_output_claim_read_write():
    job = _job({"baseModel": {"uri": "pvc://models/qwen"}, "dataset": {"train": "pvc://team-data/chat.jsonl",
                                                                         "validation": "pvc://team-data/eval.jsonl"},
                "output": {"uri": "pvc://adapters/out"}})
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"][len(BASE_MOUNTS):] == [
        {"name": "pvc-adapters", "persistentVolumeClaim": {"claimName": "adapters"}},
        {"name": "pvc-models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
        {"name": "pvc-team-data", "persistentVolumeClaim": {"claimName": "team-data", "readOnly": True}},
    ]
    mounts = pod["containers"][0]["volumeMounts"]
    assert [m["name"] for m in mounts[:len(BASE_MOUNTS)]] == BASE_MOUNTS
    assert mounts[len(BASE_MOUNTS):] == [
        {"name": "pvc-adapters", "mountPath": "/mnt/pvc/adapters"},
        {"name": "pvc-models", "mountPath": "/mnt/pvc/models", "readOnly": True},
        {"name": "pvc-team-data", "mountPath": "/mnt/pvc/team-data", "readOnly": True},
    ]


def test_one_claim_read_and_written_is_mounted_once_read_write_and_s3_mounts_nothing():
    job = _job({"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B"}, "dataset": {"train": "pvc://shared.v1/data/chat.jsonl"},
                "output": {"uri": "pvc://shared.v1/adapters"}})
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"][-1] == {"name": "pvc-shared-v1-" + pod["volumes"][-1]["name"][-10:],
                                  "persistentVolumeClaim": {"claimName": "shared.v1"}}
    assert pod["containers"][0]["volumeMounts"][-1] == {"name": pod["volumes"][-1]["name"], "mountPath": "/mnt/pvc/shared.v1"}
    plain = _job({"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B"}, "dataset": {"train": "s3://data/chat.jsonl"}})
    assert [v["name"] for v in plain["spec"]["template"]["spec"]["volumes"]] == BASE_MOUNTS


def test_serving_mounts_the_model_claim_in_vllm_and_adapter_claims_in_the_sidecar_read_only():
    dep = _deployment({"baseModel": {"uri": "pvc://models/qwen"}, "adapters": [{"name": "a", "uri": "pvc://adapters/ml/a"}]},
                      adapter_uris=("pvc://adapters/ml/a", "pvc://more-adapters/ml/b", "s3://bucket/c"))
    pod = dep["spec"]["template"]["spec"]
    assert [v for v in pod["volumes"] if "persistentVolumeClaim" in v] == [
        {"name": "pvc-models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
        {"name": "pvc-adapters", "persistentVolumeClaim": {"claimName": "adapters", "readOnly": True}},
        {"name": "pvc-more-adapters", "persistentVolumeClaim": {"claimName": "more-adapters", "readOnly": True}},
    ]
    vllm, sync = pod["containers"]
    assert [m for m in vllm["volumeMounts"] if m["name"].startswith("pvc-")] == [
        {"name": "pvc-models", "mountPath": "/mnt/pvc/models", "readOnly": True}]
    assert [m for m in sync["volumeMounts"] if m["name"].startswith("pvc-")] == [
        {"name": "pvc-adapters", "mountPath": "/mnt/pvc/adapters", "readOnly": True},
        {"name": "pvc-more-adapters", "mountPath": "/mnt/pvc/more-adapters", "readOnly": True}]
    # a claim not mounted yet changes the template (the pods must roll to mount it); one already mounted does not
    key = "kubetune.io/template-hash"
    hashes = {uris: _deployment({"baseModel": {"uri": "pvc://models/qwen"}}, uris)["spec"]["template"]["metadata"]["annotations"][key]
              for uris in [("pvc://adapters/ml/a",), ("pvc://adapters/ml/b",), ("pvc://other/ml/a",)]}
    assert len(set(hashes.values())) == 2


@pytest.mark.parametrize(("spec", "field"), [
    ({"baseModel": {"uri": "file:///models/qwen"}, "dataset": {"train": "s3://data/chat.jsonl"}}, "spec.baseModel.uri"),
    ({"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B"}, "dataset": {"train": "file:///data/chat.jsonl"}}, "spec.dataset.train"),
    ({"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B"}, "dataset": {"train": "s3://d/x", "validation": "file:///d/e"}}, "spec.dataset.validation"),
    ({"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B"}, "dataset": {"train": "s3://d/x"}, "output": {"uri": "file:///out"}}, "spec.output.uri"),
])
def test_file_uris_are_refused_naming_the_field_unless_under_kubetune_local(spec, field):
    with pytest.raises(SpecError) as exc:
        ftj_builders.resolve_spec(parse(FineTuneJobSpec, spec), SETTINGS)
    assert exc.value.problems == [f"{field}: {_uri(spec, field)!r}: file:// URIs are for `kubetune local` only: on a cluster a "
                                  "file:// path is a folder inside one pod and vanishes with it. Use s3:// or pvc://claim/path."]
    assert ftj_builders.resolve_spec(parse(FineTuneJobSpec, spec), LOCAL)


def test_file_uris_in_a_model_deployment_are_refused_naming_the_field():
    spec = {"baseModel": {"uri": "file:///models/qwen"}, "adapters": [{"name": "a", "uri": "s3://b/a"}, {"name": "b", "uri": "file:///b"}]}
    with pytest.raises(SpecError) as exc:
        md_builders.resolve_spec(parse(ModelDeploymentSpec, spec), SETTINGS)
    assert [p.split(":")[0] for p in exc.value.problems] == ["spec.baseModel.uri", "spec.adapters[1].uri"]
    assert md_builders.resolve_spec(parse(ModelDeploymentSpec, spec), LOCAL)


def test_the_setting_comes_from_the_environment_and_is_off_by_default():
    assert OperatorSettings.from_env({}).allow_file_uris is False
    assert OperatorSettings.from_env({"KUBETUNE_ALLOW_FILE_URIS": "true"}).allow_file_uris is True


def _uri(spec: dict, field: str) -> str:
    node = spec
    for part in field.split(".")[1:]:
        node = node[part]
    return node


def test_kubetune_local_run_takes_a_folder_per_claim(monkeypatch, tmp_path):
    from kubetune import cli
    from kubetune_local import cli as local_cli

    seen = {}
    monkeypatch.setattr(local_cli, "run", lambda *args, **kwargs: seen.update(kwargs) or 0)
    assert cli.main(["local", "run", "-f", "ftj.yaml", "--pvc", f"team-data={tmp_path}", "--pvc", "adapters=out"]) == 0
    assert seen["pvc_map"] == {"team-data": tmp_path, "adapters": Path("out")}
