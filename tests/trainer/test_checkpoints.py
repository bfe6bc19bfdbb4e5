"""Checkpoint storage: COMPLETE marker last, keep K, resume from the newest complete, spec fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune_trainer.checkpoints import Checkpoints, fingerprint
from kubetune_storage import open_store

SPEC = {"baseModel": {"uri": "hf://org/m"}, "dataset": {"train": "s3://d/t.jsonl"}}


def _local_checkpoint(root: Path, step: int) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"w" * step)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_fingerprint_ignores_non_training_fields():
    base = FineTuneJobSpec.model_validate(SPEC)
    same = FineTuneJobSpec.model_validate({**SPEC, "resources": {"gpus": 4}, "suspend": True,
                                           "checkpointing": {"keep": 5}})
    other = FineTuneJobSpec.model_validate({**SPEC, "hyperparameters": {"learningRate": "1e-3"}})
    assert fingerprint(base) == fingerprint(same) != fingerprint(other)


def test_save_keeps_newest_k_and_restores_newest(tmp_path: Path):
    out = open_store(f"file://{tmp_path}/out/ns/job")
    ckpts = Checkpoints(out, keep=2, spec_fingerprint="fp1")
    for step in (10, 20, 30):
        uri = ckpts.save(step, _local_checkpoint(tmp_path / "local", step), {"baseline": {"evalLoss": 9.0}})
        assert uri == f"file://{tmp_path}/out/ns/job/checkpoints/{step:08d}"
    assert ckpts.complete() == [20, 30]
    assert ckpts.listing() == [(20, f"file://{tmp_path}/out/ns/job/checkpoints/00000020"),
                               (30, f"file://{tmp_path}/out/ns/job/checkpoints/00000030")]
    assert sorted(p.name for p in (tmp_path / "out/ns/job/checkpoints").iterdir()) == ["00000020", "00000030"]
    marker = json.loads((tmp_path / "out/ns/job/checkpoints/00000030/COMPLETE").read_text())
    assert marker == {"step": 30, "fingerprint": "fp1",
                      "files": {"adapter_model.safetensors": 30, "kubetune_state.json": marker["files"]["kubetune_state.json"],
                                "trainer_state.json": len(json.dumps({"global_step": 30}))}}
    step, folder, state = ckpts.restore_newest(tmp_path / "restore")
    assert (step, folder) == (30, tmp_path / "restore/checkpoint-30")
    assert state == {"baseline": {"evalLoss": 9.0}, "fingerprint": "fp1", "step": 30}
    assert (folder / "adapter_model.safetensors").read_bytes() == b"w" * 30
    assert not (folder / "COMPLETE").exists()


def test_incomplete_and_corrupt_checkpoints_are_skipped(tmp_path: Path):
    out = open_store(f"file://{tmp_path}/out")
    ckpts = Checkpoints(out, keep=3, spec_fingerprint="fp")
    ckpts.save(10, _local_checkpoint(tmp_path / "l", 10), {})
    ckpts.save(20, _local_checkpoint(tmp_path / "l", 20), {})
    # step 30: killed during upload (files but no marker)
    (tmp_path / "out/checkpoints/00000030").mkdir(parents=True)
    (tmp_path / "out/checkpoints/00000030/optimizer.pt").write_bytes(b"half")
    # step 20: a file lost after the marker was written
    (tmp_path / "out/checkpoints/00000020/adapter_model.safetensors").write_bytes(b"short")
    assert ckpts.complete() == [10, 20]
    step, _, _ = ckpts.restore_newest(tmp_path / "restore")
    assert step == 10
    assert sorted(p.name for p in (tmp_path / "restore").iterdir()) == ["checkpoint-10"]  # the corrupt one is gone
    ckpts.prune()  # the incomplete newer folder may still be uploading: kept
    assert (tmp_path / "out/checkpoints/00000030/optimizer.pt").exists()
    ckpts.save(40, _local_checkpoint(tmp_path / "l", 40), {})  # now it is older than the newest complete one
    assert not (tmp_path / "out/checkpoints/00000030").exists()


def test_checkpoints_of_another_spec_are_discarded(tmp_path: Path):
    out = open_store(f"file://{tmp_path}/out")
    Checkpoints(out, keep=2, spec_fingerprint="old").save(50, _local_checkpoint(tmp_path / "a", 50), {})
    mine = Checkpoints(out, keep=2, spec_fingerprint="new")
    assert mine.complete() == [] and mine.restore_newest(tmp_path / "r") is None
    mine.discard_foreign()
    assert not (tmp_path / "out/checkpoints").exists() or not any((tmp_path / "out/checkpoints").iterdir())


def test_resaving_a_step_replaces_it(tmp_path: Path):
    out = open_store(f"file://{tmp_path}/out")
    ckpts = Checkpoints(out, keep=2, spec_fingerprint="fp")
    ckpts.save(10, _local_checkpoint(tmp_path / "a", 10), {"n": 1})
    folder = _local_checkpoint(tmp_path / "b", 10)
    (folder / "adapter_model.safetensors").write_bytes(b"new")
    ckpts.save(10, folder, {"n": 2})
    _, restored, state = ckpts.restore_newest(tmp_path / "r")
    assert (restored / "adapter_model.safetensors").read_bytes() == b"new" and state["n"] == 2
