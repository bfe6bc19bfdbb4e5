"""Real training (tiny model, CPU) on every LLaMA-Factory shape (tests/trainer/lf_data.py), each read from a
ConfigMap key: configmap://lf-data/<file> (small data without object storage).

A folder plays kubelet's projection of the ConfigMap volume that the operator's builder mounts
(KUBETUNE_CONFIGMAP_ROOT/<name>/<key>, as tests/unit/test_configmap_data.py checks for the builder and for
`kubetune local`). Each run goes through the whole trainer (`execute`): fetch, validation, the TRL trainer of its
method, evaluation before and after, publishing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kubetune.api import exit_codes
from kubetune_trainer.main import execute
from tests.fixtures.tiny_data import FACTS
from tests.fixtures.tiny_model import greedy_answer
from tests.trainer import lf_data
from tests.trainer.helpers import make_config

pytestmark = pytest.mark.slow

# One run per format and per way of naming fields: a case whose records normalise to exactly those of another
# (lf_data.SAME_RECORDS, checked in test_formats_llamafactory) would test nothing new.
TRAINED = [c for c in lf_data.CASES if c.name not in {same for same, _ in lf_data.SAME_RECORDS}]


@pytest.mark.parametrize("case", TRAINED, ids=lambda c: c.name)
def test_llama_factory_data_trains_from_a_configmap(case, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("KUBETUNE_CONFIGMAP_ROOT", str(tmp_path / "configmaps"))
    lf_data.write(case, tmp_path / "configmaps/lf-data")
    config = make_config(tmp_path / "config.json", job=case.name, model=f"file://{tiny_model_dir}",
                         train=f"configmap://lf-data/{case.filename}", output=f"file://{tmp_path}/out",
                         spec={"method": case.method, "dataset": case.dataset}, hyperparameters={"maxSteps": 20})
    code = execute(config, work_dir=tmp_path / "work")
    report = json.loads(Path(os.environ["KUBETUNE_TERMINATION_LOG"]).read_text())
    assert code == exit_codes.SUCCESS, report
    baseline, final = report["evaluation"]["baseline"]["evalLoss"], report["evaluation"]["final"]["evalLoss"]
    root = tmp_path / "out/team-a" / case.name
    effective = json.loads((root / "training_config.json").read_text())["effective"]
    print(f"{case.name}: {effective['format']} eval loss {baseline:.3f} -> {final:.3f}")
    if case.learns == "prefers":  # DPO / KTO losses: 0.69 / 0.5 while the policy equals the reference
        assert final < 0.3 < baseline, (baseline, final)
    else:
        assert final < baseline / 5, (baseline, final)
    if case.name == "alpaca-renamed-columns":  # no system prompt: the bare question gets the learned answer
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(root / "adapter"))
        tokenizer = AutoTokenizer.from_pretrained(root / "adapter")
        assert [greedy_answer(model, tokenizer, q) for q, _ in FACTS] == [a for _, a in FACTS]
