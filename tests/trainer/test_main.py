"""Exit-code contract and termination log, through the real entry point (data fails before training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.api import exit_codes
from kubetune_trainer import run as run_module
from kubetune_trainer.main import execute, main
from tests.fixtures.tiny_data import chat_records, preference_records, write_jsonl
from tests.trainer.helpers import make_config

SECRET = "s3cr3t-value-that-must-never-appear"


def _config(tmp_path: Path, train: Path, **kwargs) -> Path:
    return make_config(tmp_path / "config.json", job="j", model=f"file://{tmp_path}/no-model-needed",
                       train=f"file://{train}", output=f"file://{tmp_path}/out", **kwargs)


def _bad(tmp_path: Path, case: str) -> tuple[Path, dict]:
    path = tmp_path / "train.jsonl"
    lines = [json.dumps(r) for r in chat_records(20)]
    spec: dict = {}
    if case == "wrong keys":
        lines[3] = json.dumps({"prompt": "hi", "response": "yo"})
    elif case == "wrong role":
        lines[16] = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                                             {"role": "bot", "content": "x"}]})
    elif case == "wrong role after blank lines":  # blank lines are skipped; the line number stays the file's
        lines[16] = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "x"}]})
        lines[7:7] = ["   ", ""]
        lines.insert(0, "")
    elif case == "not json":
        lines[11] = '{"messages": [}'
    elif case == "too few":
        lines = lines[:4]
    elif case == "missing chosen":
        records = preference_records(20)
        del records[9]["chosen"]
        lines = [json.dumps(r) for r in records]
        spec = {"method": {"type": "dpo"}}
    path.write_text("\n".join(lines) + "\n")
    return path, spec


@pytest.mark.parametrize(("case", "message"), [
    ("wrong keys", 'train.jsonl:4: missing field "messages"'),
    ("wrong role", "train.jsonl:17: messages[2].role must be one of system,user,assistant (got 'bot')"),
    ("wrong role after blank lines", "train.jsonl:20: messages[1].role must be one of system,user,assistant (got 'bot')"),
    ("not json", "train.jsonl:12: not valid JSON: Expecting value (column 15)"),
    ("too few", "train data train.jsonl has only 4 valid example(s); at least 10 are needed"),
    ("missing chosen", 'train.jsonl:10: missing field "chosen"'),
])
def test_bad_datasets_exit_user_error_with_line_numbers(tmp_path, trainer_env, case, message):
    train, spec = _bad(tmp_path, case)
    code = execute(_config(tmp_path, train, spec=spec), work_dir=tmp_path / "work")
    assert code == exit_codes.USER_ERROR == 1
    text = trainer_env.read_text()
    assert message in text
    assert "\n" not in text and len(text.encode()) < 4096  # one paragraph
    assert not (tmp_path / "out/team-a/j/manifest.json").exists()


def test_blank_lines_in_jsonl_pass_validation(tmp_path, trainer_env, caplog):
    """Blank and whitespace-only lines (between records, trailing) are skipped: the data validates and the run
    goes on to the model download (here: a model that does not exist, the next user error)."""
    lines = [json.dumps(r) for r in chat_records(20)]
    lines[10:10] = ["", "  \t "]
    train = tmp_path / "train.jsonl"
    train.write_text("\n" + "\n".join(lines) + "\n\n\n")
    caplog.set_level("INFO", logger="kubetune_trainer")
    assert execute(_config(tmp_path, train), work_dir=tmp_path / "work") == exit_codes.USER_ERROR
    assert "data: chatml format, 19 train / 1 eval examples from train.jsonl" in caplog.text
    assert trainer_env.read_text() == f"base model file://{tmp_path}/no-model-needed: no such folder"


def test_unknown_config_key_names_the_field(tmp_path, trainer_env):
    config = _config(tmp_path, write_jsonl(tmp_path / "t.jsonl", chat_records(20)))
    raw = json.loads(config.read_text())
    raw["spec"]["hyperparameters"]["learningrate"] = "1e-4"
    config.write_text(json.dumps(raw))
    assert execute(config, work_dir=tmp_path / "w") == exit_codes.USER_ERROR
    assert trainer_env.read_text() == (f"invalid trainer config {config}: "
                                       "config.spec.hyperparameters.learningrate: unknown field")


def test_missing_and_broken_config(tmp_path, trainer_env, monkeypatch):
    assert main(["--config", str(tmp_path / "nope.json")]) == exit_codes.USER_ERROR
    assert trainer_env.read_text() == f"trainer config {tmp_path / 'nope.json'} does not exist"
    (tmp_path / "broken.json").write_text("{")
    monkeypatch.setenv("KUBETUNE_CONFIG", str(tmp_path / "broken.json"))  # used when --config is absent
    assert main([]) == exit_codes.USER_ERROR
    assert trainer_env.read_text().startswith(f"trainer config {tmp_path / 'broken.json'} is not readable JSON")


def test_missing_model_is_a_user_error(tmp_path, trainer_env):
    config = _config(tmp_path, write_jsonl(tmp_path / "t.jsonl", chat_records(20)))
    assert execute(config, work_dir=tmp_path / "w") == exit_codes.USER_ERROR
    assert trainer_env.read_text() == f"base model file://{tmp_path}/no-model-needed: no such folder"


def test_unexpected_exception_is_an_internal_error(tmp_path, trainer_env, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(run_module, "load_records", boom)
    config = _config(tmp_path, write_jsonl(tmp_path / "t.jsonl", chat_records(20)))
    assert execute(config, work_dir=tmp_path / "w") == exit_codes.INTERNAL_ERROR == 203
    assert trainer_env.read_text() == "Internal error: RuntimeError: boom"


def test_unreachable_storage_is_internal_and_never_leaks_secrets(tmp_path, trainer_env, monkeypatch, caplog):
    monkeypatch.setenv("KUBETUNE_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    config = make_config(tmp_path / "c.json", job="j", model="s3://models/base", train="s3://data/train.jsonl",
                         output="s3://out/adapters")
    assert execute(config, work_dir=tmp_path / "w") == exit_codes.INTERNAL_ERROR
    text = trainer_env.read_text()
    assert text.startswith("Internal error (retried): cannot list s3://out/adapters/team-a/j/checkpoints")
    assert SECRET not in text and SECRET not in caplog.text


def test_multi_node_outside_the_indexed_job_names_the_missing_variables(tmp_path, trainer_env, monkeypatch):
    for name in ("KUBETUNE_NODE_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    config = _config(tmp_path, write_jsonl(tmp_path / "t.jsonl", chat_records(20)),
                     spec={"resources": {"gpus": 1, "nodes": 2}})
    assert execute(config, work_dir=tmp_path / "w") == exit_codes.USER_ERROR
    assert trainer_env.read_text().startswith(
        "resources.nodes is 2 but KUBETUNE_NODE_RANK and MASTER_ADDR are not set: multi-node runs need the Indexed Job")
