"""`kubetune import llamafactory`: LLaMA-Factory training configs -> FineTuneJob manifests that `kubetune validate`
accepts, every key carried over or listed with its reason.

The configs under tests/fixtures/llamafactory are our own copies in the shape of LLaMA-Factory's published
examples (examples/train_lora, train_qlora, train_full; data/dataset_info.json); see the README there.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from kubetune.cli import main
from kubetune.importers.build import ImportProblem, show
from kubetune.importers.llamafactory import DEFAULTS, LORA, SIMPLE, STAGES, convert
from kubetune.importers.llamafactory_keys import DEFAULT, ENTRY_NOT_CARRIED, NOT_CARRIED, OPERATOR, UNMAPPED

ROOT = Path(__file__).resolve().parents[2]
LF = ROOT / "tests" / "fixtures" / "llamafactory"
EXAMPLES = sorted(LF.glob("*.yaml"))
INFO = json.loads((LF / "dataset_info.json").read_text())
PREFIX = "s3://lf-data/data"
MODEL = {"uri": "hf://meta-llama/Meta-Llama-3-8B-Instruct"}
LORA8 = {"type": "lora", "rank": 8, "targetModules": ["all-linear"], "dropout": "0"}


def _hyper(lr: str, accumulation: int = 8, **more) -> dict:
    return {"learningRate": lr, "epochs": 3, "batchSize": 1, "gradientAccumulationSteps": accumulation,
            "lrScheduler": "cosine", "warmupRatio": "0.1", "maxLength": 2048, **more}


# The whole spec each published example becomes.
EXPECTED = {
    "llama3_lora_sft": {
        "baseModel": MODEL, "dataset": {"train": f"{PREFIX}/identity.json", "format": "alpaca"},
        "method": {"type": "sft"}, "adapter": LORA8, "hyperparameters": _hyper("1e-4", packing=False),
        "checkpointing": {"intervalSteps": 500}},
    "llama3_lora_sft_otfq": {
        "baseModel": MODEL, "dataset": {"train": f"{PREFIX}/identity.json", "format": "alpaca"},
        "method": {"type": "sft"}, "adapter": LORA8 | {"type": "qlora"}, "hyperparameters": _hyper("1e-4", packing=False),
        "checkpointing": {"intervalSteps": 500}},
    "llama3_full_sft": {
        "baseModel": MODEL, "dataset": {"train": f"{PREFIX}/identity.json", "format": "alpaca"},
        "method": {"type": "sft"}, "adapter": {"type": "full"}, "hyperparameters": _hyper("1e-5", 2, packing=False),
        "checkpointing": {"intervalSteps": 500}},
    "llama3_lora_dpo": {
        "baseModel": MODEL,
        "dataset": {"train": f"{PREFIX}/dpo_en_demo.json", "format": "preference",
                    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "method": {"type": "dpo", "dpo": {"beta": "0.1", "lossType": "sigmoid"}}, "adapter": LORA8,
        "hyperparameters": _hyper("5e-6"), "checkpointing": {"intervalSteps": 500}},
    "llama3_lora_kto": {
        "baseModel": MODEL,
        "dataset": {"train": f"{PREFIX}/kto_en_demo.json", "format": "unpaired",
                    "columns": {"messages": "messages", "ktoTag": "label"},
                    "tags": {"roleTag": "role", "contentTag": "content", "userTag": "user", "assistantTag": "assistant"}},
        "method": {"type": "kto", "kto": {"beta": "0.1"}}, "adapter": LORA8,
        "hyperparameters": _hyper("5e-6"), "checkpointing": {"intervalSteps": 500}},
    "llama3_lora_pretrain": {
        "baseModel": MODEL, "dataset": {"train": f"{PREFIX}/c4_demo.jsonl", "format": "text", "columns": {"prompt": "text"}},
        "method": {"type": "cpt"}, "adapter": LORA8, "hyperparameters": _hyper("1e-4"),
        "checkpointing": {"intervalSteps": 500}},
}
# Keys of the published examples that have no kubetune equivalent: each must be listed with its reason.
UNMAPPED_IN_EXAMPLES = {
    "llama3_lora_sft": {"trust_remote_code", "dataset", "template", "max_samples", "preprocessing_num_workers",
                        "dataloader_num_workers", "logging_steps", "ddp_timeout"},
    "llama3_full_sft": {"trust_remote_code", "dataset", "deepspeed", "template", "max_samples",
                        "preprocessing_num_workers", "dataloader_num_workers", "logging_steps", "ddp_timeout"},
}


def _import(capsys, config: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["import", "llamafactory", str(config), *args])
    out, err = capsys.readouterr()
    return code, out, err


def _write(tmp_path: Path, config: dict, name: str = "train.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _config(name: str = "llama3_lora_sft") -> dict:
    return yaml.safe_load((LF / f"{name}.yaml").read_text())


def _convert(config: dict, **kwargs):
    return convert(config, kwargs.pop("info", INFO), name=kwargs.pop("name", "job"),
                   data_uri_prefix=kwargs.pop("data_uri_prefix", PREFIX), **kwargs)


def _notes(result, kind: str = UNMAPPED) -> dict[str, str]:
    return {n.key: n.reason for n in result.notes if n.kind == kind}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_published_example_round_trips_into_a_valid_manifest(example: Path, tmp_path, capsys):
    """The done criterion: each example -> `kubetune import llamafactory -o FILE` -> `kubetune validate FILE`."""
    out = tmp_path / "ftj.yaml"
    code, _, err = _import(capsys, example, "--dataset-info", str(LF / "dataset_info.json"),
                           "--data-uri-prefix", PREFIX, "-o", str(out))
    assert code == 0, err
    capsys.readouterr()
    assert main(["validate", str(out)]) == 0
    assert "valid" in capsys.readouterr().out

    text = out.read_text()
    manifest = yaml.safe_load(text)
    assert manifest["apiVersion"] == "kubetune.io/v1alpha1" and manifest["kind"] == "FineTuneJob"
    assert manifest["metadata"] == {"name": example.stem.replace("_", "-")}
    assert manifest["spec"] == EXPECTED[example.stem]

    config = yaml.safe_load(example.read_text())
    result = _convert(config, name="x")
    for note in result.notes:  # every note on stderr and in the file's comment block
        assert f"{note.key} ({show(note.value)}): {note.reason}" in err
        assert f"#   {note.key}:" in text
    for key in UNMAPPED_IN_EXAMPLES.get(example.stem, ()):
        assert key in _notes(result), key


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_key_is_carried_over_or_listed_with_a_reason(example: Path):
    config = yaml.safe_load(example.read_text())
    config |= {"some_future_key": 1, "weight_decay": 0.01, "hf_hub_token": "hf_example"}
    result = _convert(config)
    accounted = set(result.carried) | {n.key.split(".", 1)[0] for n in result.notes}
    assert set(config) <= accounted, set(config) - accounted
    assert all(n.reason for n in result.notes)
    assert _notes(result)["some_future_key"].startswith("no kubetune equivalent")


def test_decimals_are_quoted_strings_for_a_yaml_1_2_reader(tmp_path, capsys):
    """kubectl reads YAML 1.2, where an unquoted 1e-4 is a float the API server refuses: every decimal is quoted."""
    out = tmp_path / "ftj.yaml"
    assert _import(capsys, LF / "llama3_lora_dpo.yaml", "--dataset-info", str(LF / "dataset_info.json"),
                   "--data-uri-prefix", PREFIX, "-o", str(out))[0] == 0
    text = out.read_text()
    for field, value in [("learningRate", "5e-6"), ("warmupRatio", "0.1"), ("dropout", "0"), ("beta", "0.1")]:
        assert re.search(rf'^\s+{field}: "{re.escape(value)}"$', text, re.M), field


def test_stdout_without_output_file(capsys):
    code, out, err = _import(capsys, LF / "llama3_lora_sft.yaml", "--dataset-info", str(LF / "dataset_info.json"),
                             "--data-uri-prefix", PREFIX)
    assert code == 0
    assert yaml.safe_load(out)["spec"] == EXPECTED["llama3_lora_sft"]
    assert "not carried over: template (llama3):" in err


def test_dataset_info_found_through_dataset_dir(tmp_path, capsys, monkeypatch):
    """Without --dataset-info, <dataset_dir>/dataset_info.json relative to the working directory, as LLaMA-Factory
    reads it."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps(INFO))
    monkeypatch.chdir(tmp_path)
    code, out, err = _import(capsys, LF / "llama3_lora_kto.yaml", "--data-uri-prefix", PREFIX)
    assert code == 0, err
    assert "reading datasets from data/dataset_info.json" in err
    assert yaml.safe_load(out)["spec"] == EXPECTED["llama3_lora_kto"]


# ------------------------------------------------------------------------------------------ datasets


def test_sharegpt_columns_and_tags_map_to_dataset_columns_and_tags():
    result = _convert(_config() | {"dataset": "glaive_toolcall_en_demo"})
    assert result.manifest["spec"]["dataset"] == {
        "train": f"{PREFIX}/glaive_toolcall_en_demo.json", "format": "sharegpt",
        "columns": {"messages": "conversations", "tools": "tools"}}

    result = _convert(_config() | {"dataset": "mllm_demo"})
    assert result.manifest["spec"]["dataset"] == {
        "train": f"{PREFIX}/mllm_demo.json", "format": "sharegpt", "columns": {"messages": "messages"},
        "tags": {"roleTag": "role", "contentTag": "content", "userTag": "user", "assistantTag": "assistant"}}
    assert "text-only" in _notes(result)["dataset_info.mllm_demo.columns.images"]


def test_hub_datasets(tmp_path):
    result = _convert(_config() | {"dataset": "alpaca_en"}, data_uri_prefix=None)
    assert result.manifest["spec"]["dataset"]["train"] == "hf://datasets/llamafactory/alpaca_en"
    assert {"dataset_info.alpaca_en.ms_hub_url", "dataset_info.alpaca_en.om_hub_url"} <= set(_notes(result))

    result = _convert(_config("llama3_lora_dpo") | {"dataset": "dpo_en"})
    assert result.manifest["spec"]["dataset"]["train"] == "hf://datasets/llamafactory/DPO-En-Zh-20k"
    assert _notes(result)["dataset_info.dpo_en.subset"] == ENTRY_NOT_CARRIED["subset"]

    result = _convert(_config("llama3_lora_pretrain") | {"dataset": "c4"})
    assert result.manifest["spec"]["dataset"]["train"] == "hf://datasets/allenai/c4/en"

    result = _convert(_config() | {"dataset_dir": "ONLINE", "dataset": "tatsu-lab/alpaca"}, info=None)
    assert result.manifest["spec"]["dataset"] == {"train": "hf://datasets/tatsu-lab/alpaca", "format": "alpaca"}


def test_text_files_for_pretraining_only():
    result = _convert(_config("llama3_lora_pretrain") | {"dataset": "wiki_demo"})
    assert result.manifest["spec"]["dataset"]["train"] == f"{PREFIX}/wiki_demo.txt"
    assert not any(k.startswith("dataset_info.wiki_demo") for k in _notes(result))

    info = INFO | {"wiki_sft": {"file_name": "wiki.arrow"}}
    result = _convert(_config() | {"dataset": "wiki_sft"}, info=info)
    assert "convert it" in _notes(result)["dataset_info.wiki_sft.file_name"]


def test_evaluation_data():
    result = _convert(_config() | {"dataset": "alpaca_en_demo", "eval_dataset": "identity,alpaca_en_demo"})
    assert result.manifest["spec"]["dataset"]["validation"] == f"{PREFIX}/identity.json"
    assert "only 'identity' is mapped" in _notes(result)["eval_dataset"]

    result = _convert(_config() | {"val_size": 0.1})
    assert result.manifest["spec"]["dataset"]["validationSplit"] == "0.1"
    assert "val_size" not in _notes(result, DEFAULT)

    result = _convert(_config() | {"eval_dataset": "alpaca_en_demo", "val_size": 0.1})
    assert "validationSplit" not in result.manifest["spec"]["dataset"]
    assert "one or the other" in _notes(result)["val_size"]

    result = _convert(_config() | {"val_size": 200})
    assert "fraction" in _notes(result)["val_size"]

    result = _convert(_config() | {"eval_dataset": "glaive_toolcall_en_demo"})
    assert "validation" not in result.manifest["spec"]["dataset"]
    assert "shaped differently" in _notes(result)["eval_dataset"]

    assert "5%" in _notes(_convert(_config()), DEFAULT)["val_size"]


# ----------------------------------------------------------------------------------- method and adapter


def test_orpo_and_dpo_losses():
    result = _convert(_config("llama3_lora_dpo") | {"pref_loss": "orpo", "pref_beta": 0.2})
    assert result.manifest["spec"]["method"] == {"type": "orpo", "orpo": {"beta": "0.2"}}
    result = _convert(_config("llama3_lora_dpo") | {"pref_loss": "ipo"})
    assert result.manifest["spec"]["method"]["dpo"]["lossType"] == "ipo"


def test_kto_weights_and_preference_keys_in_sft():
    result = _convert(_config("llama3_lora_kto") | {"kto_chosen_weight": 1.5, "kto_rejected_weight": 1.0})
    assert result.manifest["spec"]["method"]["kto"] == {"beta": "0.1", "desirableWeight": "1.5", "undesirableWeight": "1"}
    result = _convert(_config() | {"pref_beta": 0.1})
    assert "no effect with stage sft" in _notes(result)["pref_beta"]


def test_adapter_variants():
    result = _convert(_config() | {"use_dora": True, "lora_alpha": 32, "lora_dropout": 0.05,
                                   "lora_target": "q_proj,v_proj"})
    assert result.manifest["spec"]["adapter"] == {"type": "dora", "rank": 8, "alpha": 32, "dropout": "0.05",
                                                  "targetModules": ["q_proj", "v_proj"]}
    result = _convert(_config("llama3_lora_sft_otfq") | {"quantization_bit": 8})
    assert result.manifest["spec"]["adapter"]["type"] == "lora"
    assert "4-bit NF4" in _notes(result)["quantization_bit"] and "quantization_method" in _notes(result)
    result = _convert(_config("llama3_full_sft") | {"lora_rank": 16})
    assert "only with finetuning_type lora" in _notes(result)["lora_rank"]


def test_lf_defaults_are_written_where_kubetune_differs():
    config = {k: v for k, v in _config().items() if k not in
              {"learning_rate", "lr_scheduler_type", "warmup_ratio", "lora_rank", "per_device_train_batch_size"}}
    result = _convert(config)
    hyper, adapter = result.manifest["spec"]["hyperparameters"], result.manifest["spec"]["adapter"]
    assert (hyper["learningRate"], hyper["lrScheduler"], hyper["warmupRatio"]) == ("5e-5", "linear", "0")
    assert (adapter["rank"], adapter["dropout"]) == (8, "0") and "batchSize" not in hyper  # 8: kubetune's too
    assert {"learning_rate", "lr_scheduler_type", "warmup_ratio", "lora_rank", "lora_dropout", "packing"} <= set(
        _notes(result, DEFAULT))
    dpo = _convert({k: v for k, v in _config("llama3_lora_dpo").items() if k != "learning_rate"})
    assert "learningRate" not in dpo.manifest["spec"]["hyperparameters"]  # 5e-5 is kubetune's DPO default too


def test_values_kubetune_refuses_are_taken_out_and_listed():
    result = _convert(_config() | {"lora_rank": 512, "cutoff_len": 8, "num_train_epochs": 0.5,
                                   "lr_scheduler_type": "cosine_with_restarts", "learning_rate": -1})
    spec = result.manifest["spec"]
    assert "rank" not in spec["adapter"] and "maxLength" not in spec["hyperparameters"]
    assert "epochs" not in spec["hyperparameters"] and "lrScheduler" not in spec["hyperparameters"]
    notes = _notes(result)
    assert notes["lora_rank"] == "kubetune refuses it as adapter.rank: must be <= 256 (got 512)"
    assert notes["cutoff_len"].startswith("kubetune refuses it as hyperparameters.maxLength: must be >= 16")
    assert "maxSteps" in notes["num_train_epochs"] and "cosine" in notes["lr_scheduler_type"]
    assert "positive decimal" in notes["learning_rate"]
    assert "maxSteps" not in spec["hyperparameters"]
    assert "no step limit" in _notes(_convert(_config() | {"max_steps": -1}), OPERATOR)["max_steps"]
    assert _convert(_config() | {"max_steps": 1000}).manifest["spec"]["hyperparameters"]["maxSteps"] == 1000


def test_model_sources(tmp_path):
    local = tmp_path / "my-model"
    local.mkdir()
    with pytest.raises(ImportProblem, match="--model-uri"):
        _convert(_config() | {"model_name_or_path": str(local)})
    with pytest.raises(ImportProblem, match="local path"):  # a folder relative to the working directory
        _convert(_config() | {"model_name_or_path": "saves/x"}, is_local_path=lambda p: True)
    result = _convert(_config() | {"model_name_or_path": str(local), "model_revision": "main"},
                      model_uri="s3://models/llama3")
    assert result.manifest["spec"]["baseModel"] == {"uri": "s3://models/llama3"}
    assert "Hugging Face Hub model" in _notes(result)["model_revision"]
    result = _convert(_config() | {"model_revision": "v1.0", "trust_remote_code": False})
    assert result.manifest["spec"]["baseModel"] == MODEL | {"revision": "v1.0"}
    assert "trust_remote_code" in _notes(result, OPERATOR)


def test_trust_remote_code_is_never_carried_over():
    result = _convert(_config())
    assert "trustRemoteCode" not in result.manifest["spec"]["baseModel"]
    assert "baseModel.trustRemoteCode" in _notes(result)["trust_remote_code"]


def test_hub_token_never_shows(tmp_path, capsys):
    config = _write(tmp_path, _config() | {"hf_hub_token": "hf_SECRETsecret123", "wandb_api_key": "SECRETwandb"})
    out = tmp_path / "ftj.yaml"
    code, stdout, err = _import(capsys, config, "--dataset-info", str(LF / "dataset_info.json"),
                                "--data-uri-prefix", PREFIX, "-o", str(out))
    assert code == 0
    assert "SECRET" not in stdout + err + out.read_text()
    assert "hubTokenSecretRef" in err and "wandb_api_key (<redacted>): looks like a credential" in err


@pytest.mark.parametrize("change, message", [
    ({"stage": "ppo"}, "stage: ppo has no kubetune method"),
    ({"stage": "rm"}, "stage: rm has no kubetune method"),
    ({"finetuning_type": "freeze"}, "finetuning_type: freeze has no kubetune equivalent"),
    ({"stage": "dpo", "dataset": "dpo_en_demo", "pref_loss": "simpo"}, "pref_loss: simpo has no kubetune equivalent"),
    ({"do_train": False}, "do_train: false"),
    ({"dataset": "nope"}, "dataset: 'nope' is not in dataset_info.json (it has: alpaca_en, "),
    ({"dataset": "dpo_en_demo"}, "dataset_info.dpo_en_demo.ranking: true: method sft trains on a dataset without ranking"),
    ({"stage": "dpo"}, "dataset_info.identity.ranking: false: method dpo trains on a ranking dataset"),
    ({"dataset": None}, "dataset: no dataset named"),
    ({"model_name_or_path": None}, "model_name_or_path: missing"),
    ({"finetuning_type": "full", "quantization_bit": 4}, "quantization_bit: a quantized model trains only with"),
])
def test_configs_that_cannot_become_a_finetunejob(tmp_path, capsys, change, message):
    config = _write(tmp_path, {k: v for k, v in (_config() | change).items() if v is not None})
    code, out, err = _import(capsys, config, "--dataset-info", str(LF / "dataset_info.json"), "--data-uri-prefix", PREFIX)
    assert code == 1 and out == ""
    assert f"{config}: {message}" in err, err


def test_missing_dataset_info_and_prefix(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/dataset_info.json here
    code, _, err = _import(capsys, LF / "llama3_lora_sft.yaml", "--data-uri-prefix", PREFIX)
    assert code == 1 and "pass --dataset-info" in err
    code, _, err = _import(capsys, LF / "llama3_lora_sft.yaml", "--dataset-info", str(LF / "dataset_info.json"))
    assert code == 1 and "dataset_info.identity.file_name: 'identity.json'" in err and "--data-uri-prefix" in err


def test_unreadable_files_name_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: sft\nlora_rank: [8\n")
    code, _, err = _import(capsys, bad)
    assert code == 1 and f"{bad}:3:1: not valid YAML" in err
    info = tmp_path / "dataset_info.json"
    info.write_text('{\n  "identity": {"file_name": "identity.json",}\n}')
    code, _, err = _import(capsys, LF / "llama3_lora_sft.yaml", "--dataset-info", str(info))
    assert code == 1 and f"{info}:2:" in err and "not valid JSON" in err


def test_convert_does_not_touch_its_input():
    config = _config()
    before = copy.deepcopy(config)
    _convert(config)
    assert config == before


def test_docs_table_names_every_key():
    """docs/migrate-llamafactory.md's key-by-key table covers every key the importer maps or lists."""
    doc = (ROOT / "docs" / "migrate-llamafactory.md").read_text()
    keys = {*NOT_CARRIED, *ENTRY_NOT_CARRIED, *SIMPLE, *LORA, *DEFAULTS, *STAGES, "model_name_or_path", "stage",
            "finetuning_type", "quantization_bit", "use_dora", "pref_beta", "pref_loss", "kto_chosen_weight",
            "kto_rejected_weight", "dataset", "eval_dataset", "val_size", "bf16", "fp16", "report_to",
            "trust_remote_code", "hf_hub_token", "do_train", "file_name", "hf_hub_url", "formatting", "ranking",
            "columns", "tags"}
    missing = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not missing, missing
    assert "docs/migrate-llamafactory.md" in (ROOT / "README.md").read_text()


# Records in the shape of LLaMA-Factory's demo files (data/identity.json, dpo_en_demo.json, kto_en_demo.json,
# c4_demo.jsonl), our own content.
_QA = [(f"What is the code of box {i}?", f"Box {i} has code {i * 7}.") for i in range(64)]
LF_DEMO_FILES = {
    "identity.json": [{"instruction": q, "input": "", "output": a} for q, a in _QA],
    "dpo_en_demo.json": [{"conversations": [{"from": "human", "value": q}], "chosen": {"from": "gpt", "value": a},
                          "rejected": {"from": "gpt", "value": "I do not know."}} for q, a in _QA],
    "kto_en_demo.json": [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                          "label": i % 2 == 0} for i, (q, a) in enumerate(_QA)],
    "c4_demo.jsonl": [{"text": f"{q} {a}"} for q, a in _QA],
}


@pytest.mark.parametrize("example, fmt", [("llama3_lora_sft", "alpaca"), ("llama3_lora_dpo", "preference"),
                                          ("llama3_lora_kto", "unpaired"), ("llama3_lora_pretrain", "text")])
def test_the_trainer_reads_llamafactory_files_with_the_imported_dataset_fields(example, fmt, tmp_path):
    """The imported dataset.format/columns/tags, given to the trainer's own data loader (kubetune_trainer.data),
    read files in LLaMA-Factory's demo shapes: the column mapping holds end to end."""
    from kubetune.api.finetunejob import FineTuneJobSpec
    from kubetune_trainer import data, formats

    spec = FineTuneJobSpec.model_validate(_convert(_config(example)).manifest["spec"])
    name = spec.dataset.train.rsplit("/", 1)[1]
    records = LF_DEMO_FILES[name]
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records) if name.endswith(".jsonl") else json.dumps(records))
    loaded = data.load([path], fmt=spec.dataset.format, method=spec.method.type, fields=formats.Names.of(spec.dataset))
    assert (loaded.format, len(loaded.records)) == (fmt, 64)
    q, a = _QA[0]
    user, answer = [{"role": "user", "content": q}], [{"role": "assistant", "content": a}]
    assert loaded.records[0] == {
        "alpaca": {"messages": user + answer},
        "preference": {"prompt": user, "chosen": answer, "rejected": [{"role": "assistant", "content": "I do not know."}]},
        "unpaired": {"prompt": user, "completion": answer, "label": True},
        "text": {"text": f"{q} {a}"},
    }[fmt]
