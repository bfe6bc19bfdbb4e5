"""Real training on CPU with the tiny model (file:// storage): every method and adapter type learns.

Each test runs the whole trainer in-process (`execute`) and checks what a user gets: the published
adapter answers the trained questions, losses fall, the manifest matches the files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch

from kubetune.api import exit_codes
from kubetune.api.methods import METHODS
from kubetune_trainer.main import execute
from tests.fixtures.tiny_data import (
    FACTS,
    WRONG,
    alpaca_records,
    chat_records,
    preference_records,
    text_records,
    unpaired_records,
    write_jsonl,
)
from tests.fixtures.tiny_model import greedy_answer
from tests.trainer.helpers import FakeApi, make_config, manifest_problems, progress_lines, train_losses

pytestmark = pytest.mark.slow


def _run(tmp_path: Path, model_dir: Path, records: list, job: str, **kwargs) -> tuple[dict, Path]:
    train = write_jsonl(tmp_path / "data/train.jsonl", records)
    config = make_config(tmp_path / "config.json", job=job, model=f"file://{model_dir}", train=f"file://{train}",
                         output=f"file://{tmp_path}/out", **kwargs)
    code = execute(config, work_dir=tmp_path / "work")
    termination = Path(os.environ["KUBETUNE_TERMINATION_LOG"]).read_text()
    assert code == exit_codes.SUCCESS, termination
    return json.loads(termination), tmp_path / "out/team-a" / job


LAST_STEP = "last step 30 (hyperparameters.earlyStopping not set)"


def _peft(model_dir: Path, adapter_dir: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter_dir)), AutoTokenizer.from_pretrained(adapter_dir)



def _reported_done(last: dict, report: dict) -> None:
    """The last progress report of a 20-step run: Done at 100 %, carrying the final evaluation."""
    assert (last["progress"]["step"], last["progress"]["percent"], last["progress"]["phase"]) == (20, 100, "Done")
    assert last["evaluation"] == report["evaluation"]


def _published_and_done(root: Path, method: str, last: dict, report: dict) -> None:
    """The manifest names the method and checks out, and the last report says Done."""
    assert json.loads((root / "manifest.json").read_text())["method"] == method and manifest_problems(root) == []
    _reported_done(last, report)
    _evaluations_measure_what_early_stopping_offers(root, method)


def _evaluations_measure_what_early_stopping_offers(root: Path, method: str) -> None:
    """Every evaluation during training (metrics.jsonl, before the train summary) carries each figure the method
    registry offers hyperparameters.earlyStopping.metric for this method: the registry matches what TRL reports."""
    history = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    during = history[:next(i for i, h in enumerate(history) if "train_loss" in h)]
    evaluations = [h for h in during if "eval_loss" in h]
    offered = {m.name for m in METHODS[method].checkpoint_metrics}
    assert evaluations and all(offered <= h.keys() for h in evaluations), (offered, evaluations)

def test_sft_lora_chat_learns_publishes_and_reports(tmp_path, tiny_model_dir):
    progress = tmp_path / "progress.jsonl"
    report, root = _run(tmp_path, tiny_model_dir, chat_records(64), "sft-lora", progress_file=progress,
                        spec={"output": {"mergedModel": True}})
    # termination report: where, which manifest, how good
    manifest_bytes = (root / "manifest.json").read_bytes()
    assert report["adapter"] == {"uri": f"file://{tmp_path}/out/team-a/sft-lora",
                                 "manifestSha256": hashlib.sha256(manifest_bytes).hexdigest(), "type": "lora",
                                 "rank": 16,  # the rank the operator's admission checks (status.adapter.rank)
                                 "step": 30, "reason": LAST_STEP}  # no early stopping: the last step
    baseline, final = report["evaluation"]["baseline"], report["evaluation"]["final"]
    assert baseline["evalLoss"] > 3.0 and final["evalLoss"] < 0.1, report
    assert final["perplexity"] == pytest.approx(math.exp(final["evalLoss"]), rel=1e-3)
    assert manifest_problems(root) == []
    _evaluations_measure_what_early_stopping_offers(root, "sft")
    manifest = json.loads(manifest_bytes)
    assert manifest["adapter"] == {"type": "lora", "path": "adapter", "rank": 16, "alpha": 32,
                                   "targetModules": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                     "v_proj"], "addedTokens": 0, "mergedPath": "merged",
                                   "step": 30, "reason": LAST_STEP}
    assert manifest["evaluation"]["final"] == {"evalLoss": final["evalLoss"], "perplexity": final["perplexity"]}
    losses = train_losses(root)
    assert losses[0] > 4.0 and losses[-1] < 0.05, losses
    effective = json.loads((root / "training_config.json").read_text())["effective"]
    assert (effective["packing"], effective["assistantOnlyLoss"], effective["format"]) == (True, True, "chatml")
    # the published adapter answers what it learned, loaded the way a user loads it
    model, tokenizer = _peft(tiny_model_dir, root / "adapter")
    assert [greedy_answer(model, tokenizer, q) for q, _ in FACTS] == [a for _, a in FACTS]
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(root / "merged")
    assert greedy_answer(merged, tokenizer, FACTS[0][0]) == FACTS[0][1]
    # live progress (file mode): starts at 0, ends at 100%, lists the kept checkpoints, then the final evaluation
    lines = progress_lines(progress)
    assert lines[0]["progress"]["step"] == 0
    assert list(dict.fromkeys(x["progress"]["phase"] for x in lines)) == [
        "Starting", "ValidatingData", "DownloadingModel", "LoadingModel", "TokenizingData", "BaselineEvaluation",
        "Training", "SavingCheckpoint", "FinalEvaluation", "Publishing", "Done"]  # each phase reported when it begins, in order
    last = lines[-1]
    assert {k: last["progress"][k] for k in ("step", "totalSteps", "percent")} == {"step": 30, "totalSteps": 30, "percent": 100}
    assert last["progress"]["trainedTokens"] > 10000 and last["progress"]["tokensPerSecond"] > 0
    assert [c["step"] for c in last["checkpoints"]] == [20, 30]
    assert last["evaluation"] == {"baseline": baseline, "final": final}
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["00000020", "00000030"]


def _logp(model, tokenizer, question: str, answer: str) -> float:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt + answer + "<|im_end|>", return_tensors="pt")["input_ids"]
    start = len(tokenizer(prompt)["input_ids"])
    with torch.no_grad():
        logits = model(ids).logits.log_softmax(-1)
    return sum(logits[0, i - 1, ids[0, i]].item() for i in range(start, ids.shape[1]))


def test_dpo_lora_prefers_chosen_and_patches_status(tmp_path, tiny_model_dir, monkeypatch):
    api = FakeApi()  # stands in for the Kubernetes API server (progress mode kubernetes)
    monkeypatch.setenv("KUBETUNE_API_URL", api.url)
    status_path = "/apis/kubetune.io/v1alpha1/namespaces/team-a/finetunejobs/dpo-lora/status"
    try:
        report, root = _run(tmp_path, tiny_model_dir, preference_records(64), "dpo-lora",
                            spec={"method": {"type": "dpo", "dpo": {"beta": "0.1"}}}, hyperparameters={"maxSteps": 20},
                            progress={"mode": "kubernetes", "statusPath": status_path, "intervalSeconds": 1})
    finally:
        api.close()
    assert {(r["path"], r["headers"]["Content-Type"]) for r in api.requests} == {
        (status_path, "application/merge-patch+json")}
    assert all(set(r["body"]) == {"status"} and set(r["body"]["status"]) <= {"progress", "checkpoints", "evaluation"}
               for r in api.requests)
    last = api.requests[-1]["body"]["status"]
    _reported_done(last, report)
    _evaluations_measure_what_early_stopping_offers(root, "dpo")
    assert [c["step"] for c in last["checkpoints"]] == [10, 20]
    history = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    accuracies = [h["rewards/accuracies"] for h in history if "rewards/accuracies" in h]
    assert accuracies[-1] == 1.0, accuracies
    assert [h["eval_rewards/accuracies"] for h in history if "eval_rewards/accuracies" in h][-1] == 1.0
    baseline, final = report["evaluation"]["baseline"], report["evaluation"]["final"]
    assert baseline == {"evalLoss": pytest.approx(math.log(2), abs=1e-3)}  # policy == reference: loss log 2
    assert final["evalLoss"] < 0.05 and "perplexity" not in final  # no perplexity for a preference loss
    model, tokenizer = _peft(tiny_model_dir, root / "adapter")
    model.eval()
    margins = [_logp(model, tokenizer, q, a) - _logp(model, tokenizer, q, WRONG[q]) for q, a in FACTS]
    assert min(margins) > 1.0, margins
    assert manifest_problems(root) == []


def test_cpt_full_fine_tune(tmp_path, tiny_model_dir):
    report, root = _run(tmp_path, tiny_model_dir, text_records(64), "cpt-full",
                        spec={"method": {"type": "cpt"}, "adapter": {"type": "full"}},
                        hyperparameters={"maxSteps": 30, "learningRate": "2e-3"})
    assert report["adapter"]["type"] == "full"
    _evaluations_measure_what_early_stopping_offers(root, "cpt")
    assert report["evaluation"]["final"]["evalLoss"] < 0.2 < 3.0 < report["evaluation"]["baseline"]["evalLoss"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["adapter"] == {"type": "full", "path": "adapter", "addedTokens": 0, "step": 30, "reason": LAST_STEP}
    assert manifest_problems(root) == []
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(root / "adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(root / "adapter")
    question, answer = FACTS[1]
    ids = tokenizer(question, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).startswith(" " + answer)


def test_qlora_alpaca_on_cpu(tmp_path, tiny_model_dir):
    report, root = _run(tmp_path, tiny_model_dir, alpaca_records(64), "qlora",
                        spec={"adapter": {"type": "qlora", "rank": 8}}, hyperparameters={"maxSteps": 20})
    assert report["adapter"]["type"] == "qlora"
    losses = train_losses(root)
    assert losses[-1] < losses[0] / 10, losses
    assert report["evaluation"]["final"]["evalLoss"] < report["evaluation"]["baseline"]["evalLoss"] / 5
    adapter_config = json.loads((root / "adapter/adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"], adapter_config["base_model_name_or_path"]) == (
        8, 16, f"file://{tiny_model_dir}")
    assert manifest_problems(root) == []


def test_dora_sharegpt(tmp_path, tiny_model_dir):
    records = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
               for q, a in (FACTS[i % len(FACTS)] for i in range(64))]
    _, root = _run(tmp_path, tiny_model_dir, records, "dora", spec={"adapter": {"type": "dora", "rank": 8}},
                   hyperparameters={"maxSteps": 20})
    adapter_config = json.loads((root / "adapter/adapter_config.json").read_text())
    assert adapter_config["use_dora"] is True
    model, tokenizer = _peft(tiny_model_dir, root / "adapter")
    assert [greedy_answer(model, tokenizer, q) for q, _ in FACTS] == [a for _, a in FACTS]


def test_4bit_layers_stay_trainable_after_an_evaluation(tiny_model_dir):
    """The baseline evaluation runs the 4-bit model in eval mode without grad; training must still get
    gradients afterwards. On CPUs with AVX512-BF16, bitsandbytes would repack the weights into an
    inference-only layout there (see run.keep_4bit_layers_trainable); elsewhere the flag check guards."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig

    from kubetune_trainer.run import load_model

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    plan = type("Plan", (), {"model_kwargs": {"quantization_config": quantization}, "quantization": quantization})()
    model = load_model(tiny_model_dir, plan, "file://tiny")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def _history(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]


def test_orpo_lora_learns_the_chosen_answers_without_a_reference_model(tmp_path, tiny_model_dir):
    """ORPO = SFT on the chosen answer + an odds-ratio preference term: one step, no SFT first, no reference."""
    progress = tmp_path / "progress.jsonl"
    report, root = _run(tmp_path, tiny_model_dir, preference_records(64), "orpo-lora", progress_file=progress,
                        spec={"method": {"type": "orpo", "orpo": {"beta": "0.1"}}}, hyperparameters={"maxSteps": 20})
    history = _history(root)
    train = [h for h in history if "rewards/accuracies" in h]
    assert train[-1]["rewards/accuracies"] == 1.0 and train[-1]["rewards/margins"] > train[0]["rewards/margins"], train
    assert train[-1]["nll_loss"] < train[0]["nll_loss"] / 10, train  # the SFT half of the loss
    assert [h["eval_rewards/accuracies"] for h in history if "eval_rewards/accuracies" in h][-1] == 1.0
    baseline, final = report["evaluation"]["baseline"], report["evaluation"]["final"]
    assert final["evalLoss"] < baseline["evalLoss"] / 5 and "perplexity" not in final, report  # not a token loss
    effective = json.loads((root / "training_config.json").read_text())["effective"]
    assert (effective["trainer"], effective["beta"], effective["format"]) == ("orpo", "0.1", "preference")
    _published_and_done(root, "orpo", progress_lines(progress)[-1], report)
    model, tokenizer = _peft(tiny_model_dir, root / "adapter")
    model.eval()
    assert [greedy_answer(model, tokenizer, q) for q, _ in FACTS] == [a for _, a in FACTS]  # it learned to answer
    margins = [_logp(model, tokenizer, q, a) - _logp(model, tokenizer, q, WRONG[q]) for q, a in FACTS]
    assert min(margins) > 1.0, margins  # and to prefer the chosen answer


def test_kto_lora_learns_from_answers_labelled_one_by_one(tmp_path, tiny_model_dir):
    """KTO: no pairs, each answer is desirable or not; the reference is the base model (adapter off)."""
    progress = tmp_path / "progress.jsonl"
    report, root = _run(tmp_path, tiny_model_dir, unpaired_records(64), "kto-lora", progress_file=progress,
                        spec={"method": {"type": "kto", "kto": {"beta": "0.1"}}}, hyperparameters={"maxSteps": 20})
    history = _history(root)
    train = [h for h in history if "rewards/margins" in h]
    assert train[-1]["rewards/margins"] > 1.0 > train[0]["rewards/margins"], train
    assert train[-1]["rewards/chosen"] > 0 > train[-1]["rewards/rejected"], train
    baseline, final = report["evaluation"]["baseline"], report["evaluation"]["final"]
    assert baseline == {"evalLoss": pytest.approx(0.5, abs=1e-3)}  # policy == reference: 1 - sigmoid(0)
    assert final["evalLoss"] < 0.3 and "perplexity" not in final, report
    effective = json.loads((root / "training_config.json").read_text())["effective"]
    assert (effective["trainer"], effective["lossType"], effective["format"]) == ("kto", "kto", "unpaired")
    _published_and_done(root, "kto", progress_lines(progress)[-1], report)
    model, tokenizer = _peft(tiny_model_dir, root / "adapter")
    model.eval()
    margins = [_logp(model, tokenizer, q, a) - _logp(model, tokenizer, q, WRONG[q]) for q, a in FACTS]
    assert min(margins) > 1.0, margins
