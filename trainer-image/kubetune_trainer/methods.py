"""The trainer's half of the method registry: one row per method.type (the API half, with the data formats
and default learning rates, is kubetune.api.methods; a test keeps the two tables in step).

A row names the TRL trainer and config classes ("module:Class", imported only when a job trains), maps
the spec to the method's own TRL arguments (the planner adds the shared ones), says what the records
must look like for that trainer, and whether its evaluation loss is a token loss (perplexity).
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from kubetune.api.methods import METHODS

if TYPE_CHECKING:
    from kubetune.api.finetunejob import FineTuneJobSpec

    from .plan import Facts

Args = tuple[dict[str, Any], dict[str, Any]]  # (TRL config keyword arguments, summary entries in camelCase)


def _unchanged(records: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    return records


@dataclass(frozen=True)
class TrainerMethod:
    trainer: str  # "module:Class" of the TRL trainer
    config: str  # "module:Class" of its config (a transformers.TrainingArguments)
    args: Callable[[FineTuneJobSpec, Facts], Args]  # the method's own config arguments and summary entries
    token_loss: bool = False  # eval_loss is a mean token NLL, so perplexity = exp(evalLoss)
    # validated records (train, then held-out) -> the rows the TRL trainer reads; seeded where it reorders
    prepare: Callable[[list[dict[str, Any]], int], list[dict[str, Any]]] = _unchanged


def load(path: str) -> Any:
    """The class a "module:Class" path names."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


# ------------------------------------------------------------------------------------ argument maps


def _sft_like(method: str) -> Callable[[FineTuneJobSpec, Facts], Args]:
    def args(spec: FineTuneJobSpec, facts: Facts) -> Args:
        packing = spec.hyperparameters.packing if spec.hyperparameters.packing is not None else True
        # rendered_chat: the rows arrive tokenized with their assistant mask (kubetune_trainer.chat), TRL only applies it
        assistant_only = method == "sft" and facts.chat and (facts.assistant_masks or facts.rendered_chat)
        strategy = "bfd_split" if method == "cpt" else "bfd"  # CPT splits long documents instead of truncating
        return ({"packing": packing, "packing_strategy": strategy, "eval_packing": packing,
                 "assistant_only_loss": assistant_only and not facts.rendered_chat, "dataset_text_field": "text"},
                {"trainer": "sft", "packing": packing, "packingStrategy": strategy if packing else None,
                 "assistantOnlyLoss": assistant_only})
    return args


def _options(spec: FineTuneJobSpec, name: str) -> Any:
    """spec.method.<name>, or its model's defaults when the spec leaves it out."""
    return getattr(spec.method, name) or METHODS[name].options()  # type: ignore[misc]


def _dpo(spec: FineTuneJobSpec, facts: Facts) -> Args:
    beta, loss_type = _options(spec, "dpo").beta, _options(spec, "dpo").loss_type
    return ({"beta": float(Decimal(beta)), "loss_type": [loss_type], "padding_free": False},
            {"trainer": "dpo", "beta": beta, "lossType": loss_type})


def _orpo(spec: FineTuneJobSpec, facts: Facts) -> Args:
    beta = _options(spec, "orpo").beta
    # Its paired-data collator needs the prompt/chosen/rejected columns the Trainer would otherwise drop. Its
    # batches hold chosen_input_ids/rejected_input_ids, no input_ids: transformers cannot count the tokens
    # (it would warn on every step), so trainedTokens stays empty for ORPO.
    return ({"beta": float(Decimal(beta)), "remove_unused_columns": False, "include_num_input_tokens_seen": "no"},
            {"trainer": "orpo", "beta": beta})


def _kto(spec: FineTuneJobSpec, facts: Facts) -> Args:
    kto = _options(spec, "kto")
    beta, desirable, undesirable, loss_type = kto.beta, kto.desirable_weight, kto.undesirable_weight, kto.loss_type
    return ({"beta": float(Decimal(beta)), "desirable_weight": float(Decimal(desirable)),
             "undesirable_weight": float(Decimal(undesirable)), "loss_type": loss_type},
            {"trainer": "kto", "beta": beta, "desirableWeight": desirable, "undesirableWeight": undesirable,
             "lossType": loss_type})


def _unpaired_shuffled(records: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """KTO reads one judged answer per row: a preference pair becomes its chosen answer (label true) and its
    rejected one (false), as TRL's unpair_preference_dataset does. Then a seeded shuffle: KTO's sampler is
    sequential (its KL estimate pairs each row with its batch neighbours), so without it the file's order
    would be the training order, e.g. every desirable answer first."""
    rows: list[dict[str, Any]] = []
    for r in records:
        if "chosen" in r:
            rows += [{"prompt": r["prompt"], "completion": r["chosen"], "label": True},
                     {"prompt": r["prompt"], "completion": r["rejected"], "label": False}]
        else:
            rows.append(r)
    random.Random(seed).shuffle(rows)
    return rows


# --------------------------------------------------------------------------------------------- rows

TRAINERS: dict[str, TrainerMethod] = {
    "sft": TrainerMethod("trl:SFTTrainer", "trl:SFTConfig", _sft_like("sft"), token_loss=True),
    "dpo": TrainerMethod("trl:DPOTrainer", "trl:DPOConfig", _dpo),
    "cpt": TrainerMethod("trl:SFTTrainer", "trl:SFTConfig", _sft_like("cpt"), token_loss=True),
    "orpo": TrainerMethod("trl.experimental.orpo:ORPOTrainer", "trl.experimental.orpo:ORPOConfig", _orpo),
    "kto": TrainerMethod("trl:KTOTrainer", "trl:KTOConfig", _kto, prepare=_unpaired_shuffled),
}
