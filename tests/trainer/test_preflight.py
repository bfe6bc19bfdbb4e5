"""The trainer's pre-flight mode (`python -m kubetune_trainer --preflight`) and `kubetune data validate`, on the
tiny model's real tokenizer and config, with file:// data (the storage layer's local store). Nothing plays a
cluster part: the termination log is a file (KUBETUNE_TERMINATION_LOG), as in every trainer test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.api import exit_codes
from kubetune.api.preflight import PREFLIGHT_DIR, REPORT_FILE, PreflightReport
from kubetune.api.storage_layout import job_prefix
from kubetune.cli import main as kubetune
from kubetune_trainer import data
from kubetune_trainer.errors import DataError, UserError
from kubetune_trainer.main import main as trainer_main
from kubetune_trainer.preflight import fetch_model_metadata
from tests.fixtures.tiny_data import chat_records, preference_records, write_jsonl
from tests.trainer.helpers import NAMESPACE, make_config


def _config(tmp_path: Path, model: Path, train: Path, **kwargs) -> Path:
    return make_config(tmp_path / "config.json", job="pf", model=f"file://{model}", train=f"file://{train}",
                       output=f"file://{tmp_path}/out", **kwargs)


def _run(config: Path, termination: Path) -> tuple[int, PreflightReport]:
    code = trainer_main(["--config", str(config), "--preflight"])
    return code, PreflightReport.parse(termination.read_text())


def test_preflight_passes_with_counts_tokens_steps_and_memory(tmp_path, trainer_env, tiny_model_dir, monkeypatch):
    from transformers import AutoTokenizer

    records = chat_records(200)
    train = write_jsonl(tmp_path / "train.jsonl", records)
    config = _config(tmp_path, tiny_model_dir, train, hyperparameters={"maxLength": 24, "maxSteps": None, "epochs": 2,
                                                                      "batchSize": 4},
                     spec={"resources": {"gpus": 1}})
    monkeypatch.setenv("KUBETUNE_GPU_MEMORY", "24Gi")
    code, report = _run(config, trainer_env)
    assert code == exit_codes.SUCCESS, report.message
    assert report.passed and report.fits and report.format == "chatml" and report.error_count == 0
    # the same split as the trainer's (data.split, seeded), token counts as the chat template renders them
    kept, held = data.split(list(range(200)), data.DEFAULT_VALIDATION_SPLIT, 42)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in records]
    train_lengths = sorted(lengths[i] for i in kept)
    assert (report.train.examples, report.validation.examples) == (len(kept), len(held))
    assert report.train.tokens == sum(train_lengths)
    assert report.train.token_stats.min == train_lengths[0] and report.train.token_stats.max == train_lengths[-1]
    assert report.train.truncated == sum(n > 24 for n in train_lengths) > 0
    # SFT packs: rows = trained tokens / maxLength; 2 epochs of ceil(rows / batch 4) steps
    trained = sum(min(n, 24) for n in train_lengths)
    assert report.planned_steps == 2 * -(-(-(-trained // 24)) // 4)
    assert report.estimated_training_tokens == 2 * trained
    assert report.memory.gradient_checkpointing and report.memory.tokens_per_micro_batch == 4 * 24
    assert report.memory.parameters == json.loads((tiny_model_dir / "KUBETUNE_TINY_MODEL.json").read_text())["params"]
    assert report.gpu_memory_bytes == 24 * 1024**3
    stored = Path(job_prefix(f"{tmp_path}/out", NAMESPACE, "pf")) / PREFLIGHT_DIR / REPORT_FILE
    assert PreflightReport.model_validate_json(stored.read_text()) == report


def test_bad_records_fail_with_file_line_field_like_the_trainer(tmp_path, trainer_env, tiny_model_dir):
    lines = [json.dumps(r) for r in chat_records(30)]
    lines[4] = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]})
    lines[9] = "{not json"
    lines[11] = json.dumps({"messages": [{"role": "user", "content": "only a question"}]})
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    code, report = _run(_config(tmp_path, tiny_model_dir, train), trainer_env)
    assert code == exit_codes.USER_ERROR and not report.passed
    assert [(e.file, e.line, e.field) for e in report.errors] == [
        ("train.jsonl", 5, "messages[1].role"), ("train.jsonl", 10, None), ("train.jsonl", 12, "messages")]
    assert report.error_count == 3 and report.train.invalid == 3 and report.train.records == 30
    with pytest.raises(DataError) as trainer_said:  # the training run's own validation finds the same problems
        data.load([train], fmt="auto", method="sft")
    assert sorted(e.text() for e in report.errors) == sorted(trainer_said.value.problems)
    assert "train.jsonl:5: messages[1].role must be one of" in report.message


def test_a_job_that_cannot_fit_fails_before_any_gpu_with_the_numbers(tmp_path, trainer_env, tiny_model_dir, monkeypatch):
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(64))
    config = _config(tmp_path, tiny_model_dir, train, spec={"resources": {"gpus": 1}, "adapter": {"type": "full"}})
    monkeypatch.setenv("KUBETUNE_GPU_MEMORY", "1Gi")  # the CUDA context alone takes that
    code, report = _run(config, trainer_env)
    assert code == exit_codes.USER_ERROR and report.fits is False and not report.passed
    assert report.message.startswith("full fine-tune of 555 k params needs ≈ 1.") and "> 1 GiB per GPU" in report.message
    assert report.train.examples > 0 and report.memory.peak_bytes > 1024**3  # the data figures are there too
    monkeypatch.setenv("KUBETUNE_GPU_MEMORY", "lots")
    code, report = _run(config, trainer_env)
    assert code == exit_codes.USER_ERROR and "KUBETUNE_GPU_MEMORY: 'lots' is not a memory quantity" in report.message


def test_cpu_job_is_not_checked_against_a_gpu(tmp_path, trainer_env, tiny_model_dir, monkeypatch):
    train = write_jsonl(tmp_path / "train.jsonl", preference_records(40))
    monkeypatch.setenv("KUBETUNE_GPU_MEMORY", "1Gi")
    code, report = _run(_config(tmp_path, tiny_model_dir, train, spec={"method": {"type": "dpo"}}), trainer_env)
    assert code == exit_codes.SUCCESS, report.message
    assert report.fits is None and report.gpu_memory_bytes is None and report.format == "preference"
    assert report.memory.tokens_per_micro_batch == 2 * 8 * report.train.token_stats.max  # chosen + rejected, no packing
    assert "fewer than 50" in report.warnings[0]


def test_missing_model_and_data_are_user_errors_in_the_report(tmp_path, trainer_env, tiny_model_dir):
    code, report = _run(_config(tmp_path, tmp_path / "nope", write_jsonl(tmp_path / "t.jsonl", chat_records(20))), trainer_env)
    assert code == exit_codes.USER_ERROR and "base model" in report.message and not report.passed
    code, report = _run(_config(tmp_path, tiny_model_dir, tmp_path / "missing.jsonl"), trainer_env)
    assert code == exit_codes.USER_ERROR and "missing.jsonl" in report.message


def test_only_config_and_tokenizer_are_fetched(tmp_path, tiny_model_dir, s3_env):
    """Through the real S3 server: the weights stay in the bucket."""
    from kubetune_storage import open_store

    store = open_store("s3://models/tiny")
    store.upload_tree(tiny_model_dir)
    assert any(name.endswith(".safetensors") for name in store.list(""))
    folder = fetch_model_metadata("s3://models/tiny", None, tmp_path / "meta")
    got = sorted(p.name for p in folder.iterdir())
    assert "config.json" in got and "tokenizer.json" in got
    assert not [name for name in got if name.endswith((".safetensors", ".bin"))]


def test_kubetune_data_validate(tmp_path, tiny_model_dir, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", chat_records(100))
    assert kubetune(["data", "validate", str(good), "--method", "sft", "--model", str(tiny_model_dir),
                     "--max-length", "20", "--gpu-memory", "80Gi"]) == 0
    out = capsys.readouterr()
    assert "format: chatml (method sft)" in out.out and "over maxLength 20" in out.out and "tokens " in out.out
    assert "memory per GPU (LoRA" in out.out and "OK: data valid" in out.out and "records/s" in out.err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + json.dumps({"messages": "hello"}) + "\n")
    assert kubetune(["data", "validate", str(bad), "--method", "sft"]) == 1
    out = capsys.readouterr().out
    assert "bad.jsonl:101: messages must be a list of messages (got string)" in out and "FAILED" in out
    assert kubetune(["data", "validate", str(good), "--method", "dpo"]) == 1  # chat data is no preference data
    assert kubetune(["data", "validate", str(tmp_path / "nope.jsonl"), "--method", "sft"]) == 2


def _trl_template(name: str) -> str:
    from importlib.resources import files

    return (files("trl") / "chat_templates" / f"{name}.jinja").read_text()


@pytest.mark.parametrize("template", ["tiny-tools", "qwen3"])
def test_tool_records_are_counted_as_training_tokenizes_them(tmp_path, template):
    """Records with tools, calls and weights: pre-flight's token count of each equals the length of the row that
    training hands TRL (kubetune_trainer.chat). Qwen3's template is one TRL swaps for its training variant (which
    keeps the empty think block of earlier turns): the model's own template would count fewer tokens."""
    from kubetune_trainer import chat, preflight

    from tests.fixtures.tiny_data import tool_records
    from tests.fixtures.tiny_model import CHAT_TEMPLATE, TOOLS_CHAT_TEMPLATE, build_tokenizer
    from tests.trainer import lf_data

    tokenizer = build_tokenizer()
    tokenizer.chat_template = TOOLS_CHAT_TEMPLATE if template == "tiny-tools" else _trl_template(template)
    for path in (write_jsonl(tmp_path / "openai.jsonl", tool_records(6)),
                 write_jsonl(tmp_path / "glaive.jsonl", lf_data.glaive_toolcall(6))):
        scanned = preflight.scan([path], fmt="auto", method="sft", tokenizer=tokenizer)
        rows = chat.tokenize_all(tokenizer, data.load([path], fmt="auto", method="sft", min_examples=1).records, "m")
        assert list(scanned.lengths) == [len(row["input_ids"]) for row in rows], path.name
    if template == "qwen3":
        assert chat.training_template(tokenizer) != tokenizer.chat_template
    else:  # a template that ignores tools fails pre-flight as it would fail training
        tokenizer.chat_template = CHAT_TEMPLATE
        with pytest.raises(UserError, match="the chat template of m ignores tools"):
            preflight.scan([path], fmt="auto", method="sft", tokenizer=tokenizer, model="m")
