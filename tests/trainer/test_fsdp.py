"""Sharded training (FSDP): the strategy rule, the memory arithmetic, the plan, and a real two-pod run.

The process test runs the real entry point on two "pods" (two launcher processes with their own work folders,
node ranks 0 and 1, MASTER_ADDR 127.0.0.1, as in test_distributed.py), each starting one training process under
the real torchrun with gloo on CPU. What is faked is the GPU count only (resources.gpus 1 per pod, no GPU visible).
The Trainer shards with accelerate's FSDP2 code; on CPU kubetune switches accelerate's state to FSDP
(kubetune_trainer/sharding.py says why). Both pods get SIGTERM (what a Kueue eviction or a preemption of the whole
Job does); each pod uploads its own rank's shards, rank 0 writes the marker; the rerun resumes from that sharded
checkpoint and publishes one consolidated model that transformers loads.
"""

from __future__ import annotations

import json
import signal

import pytest

from kubetune.api import exit_codes
from kubetune.api.constants import ENV_NNODES, ENV_NODE_RANK
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.memory import ModelShape, TrainingShape, estimate
from kubetune.api.parallelism import decide, fsdp_estimate, layer_parameters
from kubetune.api.validation import SpecError, parse
from kubetune_trainer.distributed import ENV_PROCESSES_PER_NODE
from kubetune_trainer.plan import Facts, plan_training
from tests.fixtures.tiny_data import chat_records, write_jsonl
from tests.trainer.helpers import make_config, manifest_problems
from tests.trainer.test_distributed import _env, _finish, _free_port, _start, _wait_for_step

GB = 10**9
# Qwen2.5-7B-Instruct's config.json (the example's model): 7.6 B parameters, untied embeddings
QWEN_7B = {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "intermediate_size": 18944,
           "vocab_size": 152064, "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False}


@pytest.mark.parametrize(("strategy", "adapter", "world", "fits", "chosen"), [
    ("auto", "full", 1, None, "single"),    # one process: nothing to shard, whatever was asked
    ("fsdp", "lora", 1, None, "single"),
    ("auto", "full", 2, None, "fsdp"),      # a full fine-tune on more than one GPU
    ("auto", "full", 16, True, "fsdp"),
    ("auto", "lora", 8, None, "ddp"),       # an adapter: the frozen base fits, DDP
    ("auto", "lora", 8, True, "ddp"),
    ("auto", "lora", 8, False, "fsdp"),     # ... unless one process does not fit one GPU
    ("auto", "dora", 8, False, "fsdp"),
    ("auto", "qlora", 8, False, "ddp"),     # QLoRA is never sharded
    ("ddp", "full", 16, False, "ddp"),      # the override wins
    ("fsdp", "lora", 2, True, "fsdp"),
])
def test_the_strategy_rule(strategy, adapter, world, fits, chosen):
    decision = decide(strategy, adapter, world, fits)
    assert decision.strategy == chosen and decision.reason


def test_fsdp_with_qlora_is_refused_naming_the_field():
    body = {"baseModel": {"uri": "hf://o/m"}, "dataset": {"train": "s3://b/d.jsonl"}, "adapter": {"type": "qlora"},
            "parallelism": {"strategy": "fsdp"}}
    with pytest.raises(SpecError, match=r"parallelism\.strategy: fsdp cannot shard QLoRA"):
        parse(FineTuneJobSpec, body)
    assert parse(FineTuneJobSpec, {**body, "parallelism": {"strategy": "auto"}}).parallelism.strategy == "auto"


def test_memory_of_a_7b_full_fine_tune_sharded_over_16_gpus():
    """The example's arithmetic: 16 bytes per parameter (fp32 master weight 4, gradient 4, AdamW moments 8) for
    7.6 B parameters is ~122 GB, / 16 GPUs ~7.6 GB each, plus the unsharded embeddings/head, two layers and the
    activations; one GPU alone (DDP keeps it all) is far over 80 GiB."""
    shape = ModelShape.from_config(QWEN_7B)
    training = TrainingShape(adapter="full", precision="bf16", batch_size=2, sequence_length=8192)
    assert 7.5 * 10**9 < shape.parameters() < 7.7 * 10**9
    sharded = fsdp_estimate(shape, training, 16)
    per_gpu = shape.parameters() / 16
    assert sharded.gradients_bytes == pytest.approx(4 * per_gpu, abs=1)  # fp32 gradients, sharded
    assert sharded.optimizer_bytes == pytest.approx((8 + 4) * per_gpu, abs=2)  # fp32 moments + the step's temporary
    unsharded = (shape.other_parameters() + 2 * layer_parameters(shape)) * 2 + layer_parameters(shape) * 4
    assert sharded.weights_bytes == pytest.approx(4 * per_gpu + unsharded, abs=1)  # fp32 master shard + gathered bf16
    assert 16 * shape.parameters() / GB == pytest.approx(122, abs=1)
    assert sharded.peak_bytes < 80 * 2**30 < estimate(shape, training).peak_bytes
    assert fsdp_estimate(shape, training, 8).peak_bytes > sharded.peak_bytes  # fewer GPUs: bigger shards
    assert layer_parameters(shape) * 28 + 2 * 152064 * 3584 + 3584 == shape.parameters()  # layers, embeddings, head, norm


def test_an_fsdp_plan_turns_on_fsdp_with_sharded_checkpoints():
    spec = parse(FineTuneJobSpec, {"baseModel": {"uri": "hf://o/m"}, "dataset": {"train": "s3://b/d.jsonl"},
                                   "adapter": {"type": "full"}})
    gpu = plan_training(spec, Facts(output_dir="/w", train_examples=100, device="cuda", bf16=True, parallelism="fsdp"))
    assert gpu.args["fsdp"] is True and gpu.summary["parallelism"] == "fsdp"
    assert gpu.args["fsdp_config"]["state_dict_type"] == "SHARDED_STATE_DICT"
    assert gpu.args["fsdp_config"]["version"] == 2 and gpu.args["fsdp_config"]["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    # FSDP's own activation checkpointing instead of the Trainer's (which would all-gather twice)
    assert gpu.args["fsdp_config"]["activation_checkpointing"] is True and gpu.args["activation_checkpointing"] is False
    ddp = plan_training(spec, Facts(output_dir="/w", train_examples=100, device="cuda", bf16=True, parallelism="ddp"))
    assert "fsdp" not in ddp.args and ddp.args["activation_checkpointing"] is True


@pytest.mark.slow
def test_two_pods_shard_checkpoint_resume_and_publish_one_model(tmp_path, tiny_model_dir, trainer_env):
    train = write_jsonl(tmp_path / "train.jsonl", chat_records(64))
    progress = tmp_path / "progress.jsonl"
    config = make_config(tmp_path / "config.json", job="sharded", model=f"file://{tiny_model_dir}",
                         train=f"file://{train}", output=f"file://{tmp_path}/out", progress_file=progress,
                         hyperparameters={"maxSteps": 24},
                         spec={"adapter": {"type": "full"}, "resources": {"gpus": 1, "nodes": 2},
                               "checkpointing": {"intervalSteps": 1000000}})
    root = tmp_path / "out/team-a/sharded"

    def pods(run: str):
        port, started = str(_free_port()), []
        for node in (0, 1):
            pod = tmp_path / f"pod-{node}"
            pod.mkdir(exist_ok=True)
            env = _env(pod / "termination-log", **{ENV_PROCESSES_PER_NODE: "1", ENV_NNODES: "2",
                                                    ENV_NODE_RANK: str(node), "MASTER_ADDR": "127.0.0.1",
                                                    "MASTER_PORT": port, "KUBETUNE_WORK_DIR": str(pod / "work")})
            started.append((pod, pod / f"{run}.log", _start(config, pod / f"{run}.log", env)))
        return started

    first = pods("first")
    _wait_for_step(first[0][2], progress, first[0][1], 3)
    for _, _, process in first:  # the whole Job is evicted: every pod gets SIGTERM
        process.send_signal(signal.SIGTERM)
    for pod, log, process in first:
        assert _finish(process, log, 180) == exit_codes.PREEMPTED, log.read_text()[-4000:]
    text = first[0][1].read_text()
    assert "parallelism: fsdp (a full fine-tune over 2 processes" in text
    markers = list((root / "checkpoints").glob("*/COMPLETE"))
    assert len(markers) == 1, text[-4000:]
    step = int(markers[0].parent.name)
    listed = set(json.loads(markers[0].read_text())["files"])
    # torch.distributed.checkpoint layout: one shard file per rank + metadata, model and optimizer; rank 1's
    # files were on pod 1's disk only, so pod 1 uploaded them
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert {f"{folder}/__0_0.distcp", f"{folder}/__1_0.distcp", f"{folder}/.metadata"} <= listed
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= listed
    assert not any(name.endswith((".safetensors", ".bin")) for name in listed)  # no unsharded copy of the model
    assert not (tmp_path / "pod-0/work/trainer" / f"checkpoint-{step}" / "pytorch_model_fsdp_0/__1_0.distcp").exists()
    assert not (root / "manifest.json").exists()

    second = pods("rerun")
    for pod, log, process in second:
        assert _finish(process, log) == 0, log.read_text()[-4000:]
    assert f"resume: from checkpoint step {step} " in second[0][1].read_text()
    assert manifest_problems(root) == []
    report = json.loads((tmp_path / "pod-0/termination-log").read_text())
    assert report == json.loads((tmp_path / "pod-1/termination-log").read_text())
    assert report["evaluation"]["final"]["evalLoss"] < report["evaluation"]["baseline"]["evalLoss"]
    effective = json.loads((root / "training_config.json").read_text())["effective"]
    assert (effective["parallelism"], effective["processes"]) == ("fsdp", 2)
    logged = [json.loads(x)["step"] for x in (root / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert logged[-1] == 24 and all(a < b for a, b in zip(logged, logged[1:]))  # the rerun went on from `step`
    assert any(s > step for s in logged)

    from transformers import AutoModelForCausalLM

    published = AutoModelForCausalLM.from_pretrained(root / "adapter")  # one consolidated model, not shards
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [name for name, p in published.state_dict().items() if not p.equal(base.state_dict()[name])]
    assert len(changed) == len(base.state_dict())  # every weight trained (a full fine-tune)


def test_the_full_finetune_example_passes_the_preflight_memory_check_only_sharded(tmp_path):
    """examples/full-finetune.yaml against the pre-flight's own check (80Gi per GPU), with Qwen2.5-7B's config."""
    import yaml

    from kubetune.api.preflight import PreflightReport
    from kubetune_trainer.preflight import Inputs, _memory

    from tests.examples.test_examples import EXAMPLES

    (tmp_path / "config.json").write_text(json.dumps(QWEN_7B))
    body = yaml.safe_load((EXAMPLES / "full-finetune.yaml").read_text())["spec"]
    results = {}
    for strategy in ("auto", "ddp"):
        spec = parse(FineTuneJobSpec, {**body, "parallelism": {"strategy": strategy}})
        plan = plan_training(spec, Facts(output_dir="/w", train_examples=1000, device="cuda", bf16=True))
        report = PreflightReport(passed=False)
        fits = _memory(spec, Inputs(train_files=[], model_dir=tmp_path, gpu_memory=80 * 2**30), report, plan, [], 8)
        results[strategy] = (fits, report.message)
    assert results["auto"][0] is True, results
    assert "sharded with FSDP over 16 GPUs needs ≈ 46 GiB of 80 GiB per GPU" in results["auto"][1]
    assert results["ddp"][0] is False and "> 80 GiB per GPU" in results["ddp"][1]


def test_a_checkpoint_of_two_pods_exists_only_once_rank_0_commits_every_pods_files(tmp_path):
    """What a lost pod leaves behind: the parts uploaded so far and no marker, which a restart ignores."""
    from kubetune_storage import open_store
    from kubetune_trainer.checkpoints import Checkpoints

    ckpts = Checkpoints(open_store(f"file://{tmp_path}/out/ns/job"), keep=2, spec_fingerprint="fp")
    pods = []
    for rank in (0, 1):
        local = tmp_path / f"pod-{rank}/checkpoint-5"
        (local / "pytorch_model_fsdp_0").mkdir(parents=True)
        (local / f"pytorch_model_fsdp_0/__{rank}_0.distcp").write_bytes(b"x" * (10 + rank))
        (local / f"rng_state_{rank}.pth").write_bytes(b"r")
        pods.append(local)
    (pods[0] / "pytorch_model_fsdp_0/.metadata").write_bytes(b"m")
    ckpts.begin(5, pods[0], {"baseline": {}})
    parts = [ckpts.upload(5, pods[0])]
    assert ckpts.complete() == []  # pod 1 has not uploaded: no checkpoint yet (a lost pod leaves it so)
    parts.append(ckpts.upload(5, pods[1]))
    assert ckpts.complete() == []
    ckpts.commit(5, parts, pods[0])
    assert ckpts.complete() == [5]
    restored = ckpts.restore_newest(tmp_path / "restore")
    assert restored is not None and restored[0] == 5
    assert sorted(p.relative_to(restored[1]).as_posix() for p in restored[1].rglob("*") if p.is_file()) == [
        "kubetune_state.json", "pytorch_model_fsdp_0/.metadata", "pytorch_model_fsdp_0/__0_0.distcp",
        "pytorch_model_fsdp_0/__1_0.distcp", "rng_state_0.pth", "rng_state_1.pth"]
    with pytest.raises(RuntimeError, match="two pods wrote rng_state_0.pth with different sizes"):
        ckpts.commit(6, [{"rng_state_0.pth": 1}, {"rng_state_0.pth": 2}], pods[0])


@pytest.mark.slow
def test_a_sharded_lora_run_publishes_a_peft_adapter_that_answers(tmp_path, tiny_model_dir, trainer_env):
    """strategy fsdp forced for LoRA, two processes in one pod: the adapter checkpoints are sharded (adapter
    weights only), the published adapter is one PEFT folder that PEFT loads and that learned the data."""
    from tests.fixtures.tiny_data import FACTS
    from tests.trainer.test_distributed import _answer

    train = write_jsonl(tmp_path / "train.jsonl", chat_records(64))
    config = make_config(tmp_path / "config.json", job="lora", model=f"file://{tiny_model_dir}", train=f"file://{train}",
                         output=f"file://{tmp_path}/out", hyperparameters={"maxSteps": 30},
                         spec={"parallelism": {"strategy": "fsdp"}})
    log = tmp_path / "trainer.log"
    process = _start(config, log, _env(trainer_env, **{ENV_PROCESSES_PER_NODE: "2"}))
    assert _finish(process, log) == 0, log.read_text()[-4000:]
    assert "parallelism: fsdp (spec.parallelism.strategy is fsdp)" in log.read_text()
    root = tmp_path / "out/team-a/lora"
    assert manifest_problems(root) == []
    newest = sorted((root / "checkpoints").glob("*/COMPLETE"))[-1]
    listed = json.loads(newest.read_text())["files"]
    assert {"pytorch_model_fsdp_0/__0_0.distcp", "pytorch_model_fsdp_0/__1_0.distcp"} <= set(listed)
    assert sum(size for name, size in listed.items() if name.startswith("pytorch_model_fsdp_0/")) < \
        (tiny_model_dir / "model.safetensors").stat().st_size  # the adapter's shards, not the frozen base
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (root / "adapter").iterdir()}
    assert _answer(tiny_model_dir, root / "adapter", FACTS[0][0]) == FACTS[0][1]


def test_a_checkpoint_of_the_other_layout_is_a_user_error_saying_what_to_do(tmp_path):
    from kubetune_trainer.errors import UserError
    from kubetune_trainer.sharding import check_checkpoint

    spec = parse(FineTuneJobSpec, {"baseModel": {"uri": "hf://o/m"}, "dataset": {"train": "s3://b/d.jsonl"}})
    fsdp = plan_training(spec, Facts(output_dir="/w", train_examples=100, parallelism="fsdp"))
    ddp = plan_training(spec, Facts(output_dir="/w", train_examples=100, parallelism="ddp"))
    (tmp_path / "sharded/pytorch_model_fsdp_0").mkdir(parents=True)
    (tmp_path / "whole").mkdir()
    sharded, whole = {"step": 7, "path": str(tmp_path / "sharded")}, {"step": 7, "path": str(tmp_path / "whole")}
    check_checkpoint(sharded, fsdp)
    check_checkpoint(whole, ddp)
    check_checkpoint(None, fsdp)
    with pytest.raises(UserError, match=r"step 7\) was written by a sharded \(FSDP\) run and this run is data-parallel "
                                        r"\(DDP\): set spec.parallelism.strategy to fsdp"):
        check_checkpoint(sharded, ddp)
    with pytest.raises(UserError, match="set spec.parallelism.strategy to ddp"):
        check_checkpoint(whole, fsdp)
