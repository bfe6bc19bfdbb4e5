"""The method registry: the API table (kubetune.api.methods) and the trainer table (kubetune_trainer.methods)
describe the same methods, every row resolves to real TRL classes, and every method plans a config TRL accepts."""

from __future__ import annotations

import pytest
from transformers import TrainingArguments

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.methods import FORMATS, METHODS, default_learning_rate
from kubetune_trainer import formats
from kubetune_trainer.methods import TRAINERS, load
from kubetune_trainer.plan import Facts, plan_training, trl_args

BASE = {"baseModel": {"uri": "hf://org/model"}, "dataset": {"train": "s3://data/train.jsonl"},
        "output": {"uri": "s3://out/adapters"}}


def test_both_tables_name_the_same_methods_and_formats():
    assert list(TRAINERS) == list(METHODS)
    assert set(formats.CHECKERS) == set(FORMATS)
    assert all(set(m.formats) <= set(FORMATS) and m.formats for m in METHODS.values())


@pytest.mark.parametrize("name", METHODS)
def test_row_resolves_to_a_trl_trainer_and_config(name):
    row = TRAINERS[name]
    assert issubclass(load(row.config), TrainingArguments)
    assert callable(load(row.trainer))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_every_method_plans_a_config_trl_accepts(name, adapter):
    info = METHODS[name]
    spec = FineTuneJobSpec.model_validate({**BASE, "method": {"type": name}, "adapter": {"type": adapter},
                                           "dataset": {"train": "s3://d/t.jsonl", "format": info.formats[0]}})
    plan = plan_training(spec, Facts(output_dir="/w", train_examples=100, chat=True, assistant_masks=True))
    config = trl_args(plan)
    assert isinstance(config, load(TRAINERS[name].config))
    assert config.learning_rate == float(default_learning_rate(name, adapter))
    assert plan.method == name and plan.summary["learningRate"] == default_learning_rate(name, adapter)


@pytest.mark.parametrize("name", METHODS)
def test_docs_table_lists_the_method_as_the_registry_does(name):
    """docs/trainer.md's Methods table is hand-written for people: it must say what the rows say."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "trainer.md").read_text()
    row = next((line for line in docs.splitlines() if line.startswith(f"| `{name}` |")), None)
    assert row is not None, f"docs/trainer.md: no Methods row for {name}"
    cells = [c.strip() for c in row.strip("|").split("|")]
    info, trainer = METHODS[name], TRAINERS[name]
    assert cells[1].startswith(f"`{trainer.trainer.split(':')[1]}`")
    assert cells[2] == ", ".join(info.formats)
    assert cells[3] == " / ".join(info.learning_rate)
    assert ("perplexity reported" in cells[5]) == trainer.token_loss
