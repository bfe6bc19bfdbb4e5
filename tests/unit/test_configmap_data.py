"""Small data without object storage: dataset.train/validation = configmap://name/key.

The API accepts the URI, the operator's builder mounts the named keys (optional, read-only) where the trainer
reads them, the trainer's storage layer reports a missing or oversized key by name, and `kubetune local`'s
kubelet projects the keys as a kubelet does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.validation import SpecError, parse
from kubetune.builders.finetunejob import build_children, resolve_spec
from kubetune.config import OperatorSettings
from kubetune_storage import InvalidUri, NotFound, ReadOnly, Storage

SETTINGS = OperatorSettings(trainer_image="registry.example/kubetune/trainer:1.0", default_output_uri="s3://adapters/prod")


def _body(dataset: dict) -> dict:
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "tiny", "namespace": "ml", "uid": "u-1", "generation": 1},
            "spec": {"baseModel": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "dataset": dataset}}


def _pod(dataset: dict) -> dict:
    body = _body(dataset)
    return build_children(body, resolve_spec(parse(FineTuneJobSpec, body["spec"]), SETTINGS), SETTINGS)[-1][
        "spec"]["template"]["spec"]


def test_the_api_takes_a_configmap_key_and_says_what_a_data_uri_may_be():
    spec = parse(FineTuneJobSpec, {"baseModel": {"uri": "hf://org/m"},
                                   "dataset": {"train": "configmap://chat-data/train.jsonl",
                                               "validation": "configmap://chat-data/eval.jsonl"}})
    assert spec.dataset.train == "configmap://chat-data/train.jsonl"
    for bad in ("configmap://Chat/train.jsonl", "configmap://chat-data/", "configmap://chat/a/b.jsonl"):
        with pytest.raises(SpecError) as caught:
            parse(FineTuneJobSpec, {"baseModel": {"uri": "hf://org/m"}, "dataset": {"train": bad}})
        assert caught.value.problems == [f"spec.dataset.train: {bad!r} is not a valid data URI. Allowed schemes: hf://, "
                                         "s3://, pvc://, https://, configmap://name/key (a key of a ConfigMap in the job's "
                                         "namespace, at most 1 MiB), file:// (file:// only for `kubetune local`)."]


def test_the_training_pod_mounts_the_named_keys_optionally_and_read_only():
    pod = _pod({"train": "configmap://chat-data/train.jsonl", "validation": "configmap://chat-data/eval.jsonl"})
    assert [v for v in pod["volumes"] if v["name"].startswith("cm-")] == [
        {"name": "cm-chat-data", "configMap": {"name": "chat-data", "optional": True, "items": [
            {"key": "eval.jsonl", "path": "eval.jsonl"}, {"key": "train.jsonl", "path": "train.jsonl"}]}}]
    assert [m for m in pod["containers"][0]["volumeMounts"] if m["name"].startswith("cm-")] == [
        {"name": "cm-chat-data", "mountPath": "/mnt/configmap/chat-data", "readOnly": True}]
    # other schemes mount nothing of the kind
    plain = _pod({"train": "s3://data/x.jsonl"})
    assert not [v for v in plain["volumes"] if "configMap" in v and v["name"] != "config"]


def test_the_trainer_reads_the_mounted_key_and_names_a_missing_or_oversized_one(tmp_path: Path):
    """The folder plays kubelet's projection of the optional ConfigMap volume: a key is a file, a missing
    ConfigMap or key is no file."""
    storage = Storage({"KUBETUNE_CONFIGMAP_ROOT": str(tmp_path)})
    store = storage.open("configmap://chat-data/train.jsonl")
    with pytest.raises(NotFound, match=r"configmap://chat-data/train.jsonl: no key 'train.jsonl' in ConfigMap "
                                       r"'chat-data', or no ConfigMap 'chat-data' in the job's namespace"):
        store.local_folder(tmp_path / "dest")
    (tmp_path / "chat-data").mkdir()
    (tmp_path / "chat-data/train.jsonl").write_text('{"text": "hi"}\n')
    assert store.local_folder(tmp_path / "dest") == tmp_path / "chat-data/train.jsonl"
    with pytest.raises(ReadOnly):
        store.write_bytes("", b"x")
    (tmp_path / "chat-data/train.jsonl").write_bytes(b"x" * (1024 * 1024 + 1))  # only a stand-in API server allows it
    with pytest.raises(InvalidUri, match=r"holds 1048577 bytes: a ConfigMap holds at most 1048576 bytes \(1 MiB\); "
                                         r"put larger data in object storage \(s3://\) or a volume \(pvc://\)"):
        store.local_folder(tmp_path / "dest")


def test_kubetune_local_projects_the_configmap_items_like_kubelet(tmp_path: Path):
    """A stub plays the API server's ConfigMap store (get by namespace and name); the real LocalKubelet method
    projects the mounted items into the pod's ConfigMap root."""
    from kubetune_local.kubelet import LocalKubelet

    class Api:
        def get(self, group, version, plural, ns, name):
            assert (plural, ns) == ("configmaps", "ml")
            return {"data": {"train.jsonl": "{}\n", "other": "not mounted"}} if name == "chat-data" else None

    kubelet = LocalKubelet.__new__(LocalKubelet)
    kubelet.emu = Api()
    pod = _pod({"train": "configmap://chat-data/train.jsonl", "validation": "configmap://gone/x.jsonl"})
    env: dict[str, str] = {}
    kubelet._mount_config_maps("ml", pod["containers"][0], pod["volumes"], tmp_path, env)
    root = Path(env["KUBETUNE_CONFIGMAP_ROOT"])
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == ["chat-data/train.jsonl"]
    with pytest.raises(NotFound, match="no ConfigMap 'gone'"):
        Storage({"KUBETUNE_CONFIGMAP_ROOT": str(root)}).open("configmap://gone/x.jsonl").local_folder(tmp_path)
