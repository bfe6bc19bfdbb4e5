"""Atomic publish (manifest last), manifest content (no training: a staged result). The loss curve's
own tests: test_losscurve.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from kubetune.api.manifest import AdapterManifest
from kubetune.api.trainer_config import TrainerConfig
from kubetune_storage import open_store
from kubetune_storage.local import FileStore
from kubetune_trainer import publish as publish_module
from kubetune_trainer.errors import TransientError
from kubetune_trainer.publish import Result, publish
from tests.trainer.helpers import make_config


def _config(tmp_path: Path, **spec) -> TrainerConfig:
    path = make_config(tmp_path / "config.json", job="pub", model="hf://org/base", train="s3://d/train.jsonl",
                       output=f"file://{tmp_path}/out", spec=spec)
    return TrainerConfig.model_validate_json(path.read_text())


HISTORY = [{"step": 0, "eval_loss": 7.0}, {"step": 1, "loss": 7.1}, {"step": 10, "loss": 0.5},
           {"step": 10, "eval_loss": 0.6}, {"step": 20, "loss": 0.01}]


def _result(tmp_path: Path, name: str = "model") -> Result:
    model = tmp_path / name
    model.mkdir()
    (model / "adapter_model.safetensors").write_bytes(b"\x01" * 1000)
    (model / "adapter_config.json").write_text('{"r": 16}')
    return Result(model_dir=model, merged_dir=None, target_modules=["k_proj", "q_proj"], log_history=list(HISTORY),
                  evaluation={"baseline": {"evalLoss": 7.0, "perplexity": 1096.6},
                              "final": {"evalLoss": 0.6, "perplexity": 1.8221}},
                  summary={"learningRate": "2e-4", "trainer": "sft", "lora": {"rank": 16}})


def test_publish_layout_manifest_and_report(tmp_path: Path):
    config = _config(tmp_path)
    out = open_store(config.output_prefix)
    report = publish(config, _result(tmp_path), out, tmp_path / "work")
    root = tmp_path / "out/team-a/pub"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "README.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "loss_curve.png",
        "manifest.json", "metrics.jsonl", "training_config.json"]
    raw = (root / "manifest.json").read_bytes()
    assert report == {"adapter": {"uri": f"file://{tmp_path}/out/team-a/pub",
                                  "manifestSha256": hashlib.sha256(raw).hexdigest(), "type": "lora", "rank": 16},
                      "evaluation": {"baseline": {"evalLoss": 7.0, "perplexity": 1096.6},
                                     "final": {"evalLoss": 0.6, "perplexity": 1.8221}}}
    assert len(json.dumps(report)) < 4096
    manifest = AdapterManifest.model_validate_json(raw)
    assert {f.path: f.sha256 for f in manifest.files} == {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert manifest.model_dump(include={"job", "base_model", "method", "adapter", "evaluation"}, mode="json") == {
        "job": {"namespace": "team-a", "name": "pub", "uid": "0000-1111"},
        "base_model": {"uri": "hf://org/base", "revision": None},
        "method": "sft",
        "adapter": {"type": "lora", "path": "adapter", "rank": 16, "alpha": 32, "target_modules": ["k_proj", "q_proj"],
                    "modules_to_save": None, "added_tokens": 0, "merged_path": None, "step": None, "reason": None},
        "evaluation": {"baseline": {"eval_loss": 7.0, "perplexity": 1096.6}, "final": {"eval_loss": 0.6, "perplexity": 1.8221}},
    }
    assert [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()] == HISTORY
    resolved = json.loads((root / "training_config.json").read_text())
    assert resolved["trainerConfig"]["spec"]["baseModel"] == {"uri": "hf://org/base", "trustRemoteCode": False}
    assert resolved["effective"]["learningRate"] == "2e-4"
    card = (root / "README.md").read_text()
    assert card.startswith("---\nbase_model: org/base\nlibrary_name: peft\n")
    assert "| baseline | 7.0 | 1096.6 |" in card and "| final | 0.6 | 1.8221 |" in card
    with Image.open(root / "loss_curve.png") as curve:
        assert (curve.format, curve.size) == ("PNG", (1280, 720))


class _FailingStore(FileStore):
    """Storage that breaks after `ok` uploads (the server went away mid-publish)."""

    def __init__(self, root: Path, uri: str, ok: int):
        super().__init__(root, uri)
        self.ok = ok

    def upload(self, src: Path, rel: str) -> None:
        if self.ok <= 0:
            raise TransientError(f"cannot upload to {self.uri_of(rel)}: connection refused")
        self.ok -= 1
        super().upload(src, rel)


def test_failed_publish_leaves_no_manifest_and_rerun_publishes(tmp_path: Path):
    config = _config(tmp_path)
    root = tmp_path / "out/team-a/pub"
    publish(config, _result(tmp_path), open_store(config.output_prefix), tmp_path / "w1")  # an earlier success
    (root / "adapter/old-extra.bin").write_bytes(b"stale")  # a file the new publish does not have
    broken = _FailingStore(root, config.output_prefix, ok=2)
    with pytest.raises(TransientError):
        publish(config, _result(tmp_path, "model2"), broken, tmp_path / "w2")
    assert not (root / "manifest.json").exists()  # the old adapter stopped existing before files changed
    report = publish(config, _result(tmp_path, "model3"), open_store(config.output_prefix), tmp_path / "w3")
    raw = (root / "manifest.json").read_bytes()
    assert report["adapter"]["manifestSha256"] == hashlib.sha256(raw).hexdigest()
    assert not (root / "adapter/old-extra.bin").exists()  # stale files are removed before the manifest


def test_checkpoints_survive_publish(tmp_path: Path):
    config = _config(tmp_path)
    ckpt = tmp_path / "out/team-a/pub/checkpoints/00000010/COMPLETE"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text("{}")
    publish(config, _result(tmp_path), open_store(config.output_prefix), tmp_path / "w")
    assert ckpt.exists()


def test_the_loss_curve_gets_train_and_eval_points_the_baseline_and_the_job(tmp_path: Path, monkeypatch):
    calls = []
    monkeypatch.setattr(publish_module, "loss_curve_png", lambda *args, **kwargs: calls.append((args, kwargs)) or b"")
    config = _config(tmp_path)
    publish(config, _result(tmp_path), open_store(config.output_prefix), tmp_path / "w")
    assert calls == [(([(1, 7.1), (10, 0.5), (20, 0.01)], [(0, 7.0), (10, 0.6)]),
                      {"baseline": 7.0, "title": "team-a/pub"})]
