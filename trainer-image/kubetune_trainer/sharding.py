"""Sharded training (FSDP) through the Trainer's accelerate integration: which strategy a run uses, the
Trainer arguments that turn FSDP on, and the one consolidation of the result.

- `decide`: kubetune.api.parallelism's rule with this run's facts (world size; on GPU the memory estimate of
  one process against the GPU it sees).
- `FSDP_ARGS` / `fsdp_args`: TrainingArguments `fsdp` + `fsdp_config`: FSDP2 (torch.distributed.fsdp.fully_shard,
  transformers' default version), each decoder layer its own unit (accelerate's TRANSFORMER_BASED_WRAP, layer
  class from the model's `_no_split_modules`), SHARDED_STATE_DICT checkpoints (torch.distributed.checkpoint:
  `pytorch_model_fsdp_0/` and `optimizer_0/` hold one `__<rank>_0.distcp` per rank and a `.metadata`),
  FSDP's own activation checkpointing on GPU (the Trainer's would all-gather twice).
- `consolidate`: the published result is a normal Hugging Face folder (full model or PEFT adapter): every rank
  gathers the full state dict to rank 0 once (FULL_STATE_DICT), rank 0 writes it.
- `on_cpu`: accelerate 1.15 turns its FSDP plugin on only for accelerator devices (AcceleratorState: MULTI_GPU,
  MULTI_XPU, ...); a CPU run with gloo (MULTI_CPU) silently trains DDP instead. FSDP2 itself runs on CPU with gloo
  (measured: docs/trainer.md), so for CPU runs (tests, `kubetune local`) the trainer class is wrapped to switch
  accelerate's process-wide state to FSDP after the Trainer creates its Accelerator; accelerate's own FSDP code
  (fully_shard, DCP save/load, full state dict) then runs unchanged. GPU runs never take this path.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.memory import ModelShape, estimate
from kubetune.api.parallelism import Decision, decide as decide_rule

log = logging.getLogger(__name__)


def fsdp_args(gpu: bool) -> dict[str, Any]:
    """TrainingArguments of an FSDP run (they replace the Trainer's own activation checkpointing)."""
    return {
        "fsdp": True,  # transformers 5: on, and everything else in fsdp_config
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # the layer class: model._no_split_modules
            "state_dict_type": "SHARDED_STATE_DICT",
            "reshard_after_forward": True,
            "activation_checkpointing": gpu,
            "cpu_ram_efficient_loading": False,
        },
        "activation_checkpointing": False,
        "activation_checkpointing_kwargs": None,
    }


def decide(spec: FineTuneJobSpec, world_size: int, model_dir: Path, training_shape=None, gpu_memory: int | None = None) -> Decision:
    """The strategy of this run. `training_shape` (kubetune.api.memory.TrainingShape) and `gpu_memory` feed the
    "does one process fit one GPU" half of the auto rule; without them it is not used."""
    fits = None
    if training_shape is not None and gpu_memory and spec.parallelism.strategy == "auto":
        try:
            shape = ModelShape.from_config(json.loads((model_dir / "config.json").read_text()))
            fits = estimate(shape, training_shape).peak_bytes <= gpu_memory
        except (OSError, ValueError) as exc:
            log.warning("parallelism: no memory estimate (%s): the fit does not count", exc)
    return decide_rule(spec.parallelism.strategy, spec.adapter.type, world_size, fits)


def gpu_memory() -> int | None:
    import torch

    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory if torch.cuda.is_available() else None


def on_cpu(trainer_class: type) -> type:
    """The trainer class, switching accelerate to FSDP after each Accelerator it creates (module docstring)."""

    class CpuFsdp(trainer_class):  # type: ignore[misc, valid-type]
        def create_accelerator_and_postprocess(self) -> None:
            super().create_accelerator_and_postprocess()
            _switch_to_fsdp(self)

    CpuFsdp.__name__ = CpuFsdp.__qualname__ = trainer_class.__name__
    return CpuFsdp


def _switch_to_fsdp(trainer) -> None:
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type != DistributedType.FSDP:
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
        state.distributed_type = DistributedType.FSDP
        # every AcceleratorState() copies PartialState's fields back into the shared state: keep them in step
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True


def check_enabled(trainer) -> None:
    """A plan for FSDP must train FSDP (a silent fallback to DDP would keep every weight on every GPU)."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        raise RuntimeError("the plan asks for FSDP but the Trainer's accelerator did not enable it")


def consolidate(trainer, dest: Path) -> None:
    """A collective (every rank calls it): the full state dict gathered to rank 0, which saves it to `dest` as a
    normal Hugging Face folder (the model, or the PEFT adapter)."""
    trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(dest))


def plan_for(spec: FineTuneJobSpec, facts, world_size: int, model_dir: Path):
    """The training plan with the strategy this run uses (logged with its reason)."""
    from dataclasses import replace

    from .plan import plan_training
    from .preflight import training_shape

    plan = plan_training(spec, facts)
    gpu = facts.device == "cuda"
    shape = training_shape(spec, plan.args, spec.hyperparameters.max_length, gpu) if gpu else None
    decision = decide(spec, world_size, model_dir, shape, gpu_memory() if gpu else None)
    log.info("parallelism: %s (%s)", decision.strategy, decision.reason)
    return plan if decision.strategy == facts.parallelism else plan_training(spec, replace(facts, parallelism=decision.strategy))


def baseline_at_start(trainer, figures) -> dict:
    """The baseline evaluation of an FSDP run. FSDP2 prepares the model together with its optimizer (accelerate
    refuses a model alone), so `trainer.evaluate()` cannot run before `train()`: TrainingArguments.eval_on_start
    runs it first thing in `train()`, after preparation, and its figures fill the returned dict in place (the
    same dict goes into the checkpoints' state and the published evaluation)."""
    from transformers import TrainerCallback

    baseline: dict = {}

    class Baseline(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if state.global_step == 0 and not baseline and metrics:
                baseline.update(figures(metrics))

    trainer.args.eval_on_start = True
    trainer.add_callback(Baseline())
    return baseline


def check_checkpoint(restored: dict | None, plan) -> None:
    """A checkpoint resumes only a run of the same layout: FSDP shards (pytorch_model_fsdp_*/) or whole files
    (DDP, one process). They differ when resources or spec.parallelism changed under the same output (a job
    re-created with the same name): a UserError says what to do instead of the Trainer failing on the files."""
    from .errors import UserError

    if restored is None:
        return
    sharded = any(Path(restored["path"]).glob("pytorch_model_fsdp_*"))
    fsdp = bool(plan.args.get("fsdp"))
    if sharded != fsdp:
        kind = lambda s: "sharded (FSDP)" if s else "data-parallel (DDP)"  # noqa: E731
        raise UserError(f"the newest checkpoint (step {restored['step']}) was written by a {kind(sharded)} run and "
                        f"this run is {kind(fsdp)}: set spec.parallelism.strategy to {'fsdp' if sharded else 'ddp'} "
                        "to resume from it, or delete the job's checkpoints to start over")
