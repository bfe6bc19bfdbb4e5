"""Against a real S3 server (SeaweedFS): model and data from s3://, adapter published to s3://,
manifest hashes verified on the downloaded objects; storage outage during publish; no secret leaks."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from kubetune.api import exit_codes
from kubetune_trainer import run as run_module
from kubetune_trainer.main import execute
from tests.fixtures.tiny_data import FACTS, chat_records, write_jsonl
from tests.fixtures.s3 import bucket_name
from tests.fixtures.tiny_model import greedy_answer
from tests.trainer.helpers import make_config, manifest_problems

pytestmark = pytest.mark.slow


def _download(server, bucket: str, prefix: str, dest: Path) -> Path:
    client = server.client()
    for key in server.keys(bucket, prefix + "/"):
        target = dest / key[len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))
    return dest


def _s3_job(tmp_path: Path, server, bucket: str, model_dir: Path, job: str) -> Path:
    model_uri = server.upload_dir(model_dir, bucket, "models/tiny")
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(64))
    server.client().upload_file(str(train), bucket, "data/train.jsonl")
    return make_config(tmp_path / "config.json", job=job, model=model_uri, train=f"s3://{bucket}/data/train.jsonl",
                       output=f"s3://{bucket}/adapters")


def test_s3_fetch_train_publish_and_load(tmp_path, tiny_model_dir, s3_server, s3_env, s3_bucket, trainer_env,
                                         monkeypatch, caplog, capfd):
    caplog.set_level(logging.INFO)
    hub_secret = "hf_secret_token_value_never_logged"
    monkeypatch.setenv("HF_TOKEN", hub_secret)
    config = _s3_job(tmp_path, s3_server, s3_bucket, tiny_model_dir, "s3-job")
    assert execute(config, work_dir=tmp_path / "work") == exit_codes.SUCCESS, trainer_env.read_text()
    report = json.loads(trainer_env.read_text())

    prefix = "adapters/team-a/s3-job"
    keys = s3_server.keys(s3_bucket, prefix + "/")
    assert f"{prefix}/manifest.json" in keys and f"{prefix}/adapter/adapter_model.safetensors" in keys
    assert sorted({k.split("/")[4] for k in keys if "/checkpoints/" in k}) == ["00000020", "00000030"]
    local = _download(s3_server, s3_bucket, prefix, tmp_path / "downloaded")
    assert manifest_problems(local) == []
    assert report["adapter"] == {"uri": f"s3://{s3_bucket}/{prefix}", "type": "lora", "rank": 16, "step": 30,
                                 "reason": "last step 30 (hyperparameters.earlyStopping not set)",
                                 "manifestSha256": hashlib.sha256((local / "manifest.json").read_bytes()).hexdigest()}
    manifest = json.loads((local / "manifest.json").read_text())
    assert manifest["baseModel"] == {"uri": f"s3://{s3_bucket}/models/tiny"}

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(local / "adapter"))
    tokenizer = AutoTokenizer.from_pretrained(local / "adapter")
    assert greedy_answer(model, tokenizer, FACTS[0][0]) == FACTS[0][1]

    # no secret anywhere: logs, termination message, published files
    out, err = capfd.readouterr()
    published = b"".join(p.read_bytes() for p in local.rglob("*") if p.is_file())
    for secret in (hub_secret, s3_env["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in caplog.text + out + err + trainer_env.read_text()
        assert secret.encode() not in published


def test_storage_outage_during_publish_then_rerun_publishes(tmp_path, tiny_model_dir, s3_server_factory, trainer_env,
                                                            monkeypatch, caplog):
    server = s3_server_factory()  # our own server: this test stops it
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    bucket = server.create_bucket(bucket_name("outage"))
    config = _s3_job(tmp_path, server, bucket, tiny_model_dir, "outage")
    real_publish = run_module.publish

    def publish_then_outage(config, result, out, work_dir):
        upload, done = out.upload, []

        def flaky(src, rel):
            if len(done) == 2:
                server.stop()  # the storage goes away after two files
            done.append(rel)
            return upload(src, rel)

        out.upload = flaky
        return real_publish(config, result, out, work_dir)

    monkeypatch.setattr(run_module, "publish", publish_then_outage)
    assert execute(config, work_dir=tmp_path / "w1") == exit_codes.INTERNAL_ERROR
    assert trainer_env.read_text().startswith("Internal error (retried): cannot upload to s3://")

    server.start()
    prefix = "adapters/team-a/outage"
    keys = server.keys(bucket, prefix + "/")
    assert f"{prefix}/manifest.json" not in keys  # no manifest: the adapter does not exist
    assert len([k for k in keys if "/checkpoints/" not in k]) == 2  # the two files uploaded before the outage

    monkeypatch.setattr(run_module, "publish", real_publish)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="kubetune_trainer")
    assert execute(config, work_dir=tmp_path / "w2") == exit_codes.SUCCESS
    assert "resume: from checkpoint step 30" in caplog.text  # nothing retrained
    local = _download(server, bucket, prefix, tmp_path / "downloaded")
    assert manifest_problems(local) == []
    assert json.loads(trainer_env.read_text())["adapter"]["manifestSha256"] == hashlib.sha256(
        (local / "manifest.json").read_bytes()).hexdigest()
    assert os.environ["KUBETUNE_S3_ENDPOINT"] == server.endpoint
