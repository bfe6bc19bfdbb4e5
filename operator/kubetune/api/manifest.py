"""manifest.json: the record that makes a published adapter exist.

Written LAST by the trainer under <output>/<namespace>/<job>/; read by the operator (admission checks)
and the serving sidecar (sha256 verification of every file before loading).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import KubeModel
from .early_stopping import MAX_REASON
from .finetunejob import AdapterType, MethodType

MANIFEST_VERSION = "kubetune.io/adapter-manifest/v1"


class ManifestFile(KubeModel):
    """One published file, relative to the folder holding manifest.json."""

    path: str = Field(description="Relative path, e.g. adapter/adapter_model.safetensors.", max_length=1024)
    sha256: str = Field(description="sha256 of the file's bytes.", pattern=r"^[a-f0-9]{64}$")
    size: int = Field(description="Bytes.", ge=0)


class ManifestBaseModel(KubeModel):
    uri: str = Field(description="Base model URI as in the FineTuneJob spec.", max_length=1024)
    revision: str | None = Field(default=None, description="Revision trained on.", max_length=128)


class ManifestAdapter(KubeModel):
    type: AdapterType = Field(description="What was trained.")
    path: str = Field(description="Folder (relative) holding the adapter or full model, e.g. adapter.", max_length=1024)
    rank: int | None = Field(default=None, description="LoRA rank.", ge=1)
    alpha: int | None = Field(default=None, description="LoRA alpha.", ge=1)
    target_modules: list[str] | None = Field(default=None, description="Adapted modules.")
    modules_to_save: list[str] | None = Field(default=None, description="Fully trained extra modules (e.g. lm_head).")
    added_tokens: int = Field(default=0, description="Tokens added to the base tokenizer.", ge=0)
    merged_path: str | None = Field(default=None, description="Folder of the merged full model, if exported.", max_length=1024)
    step: int | None = Field(default=None, description="Optimizer step of the published weights (the best checkpoint with "
                             "hyperparameters.earlyStopping, else the last step).", ge=0)
    reason: str | None = Field(default=None, description="Why that step (as status.adapter.reason).", max_length=MAX_REASON)


class ManifestEval(KubeModel):
    eval_loss: float | None = None
    perplexity: float | None = None


class AdapterManifest(KubeModel):
    """manifest.json."""

    manifest_version: Literal["kubetune.io/adapter-manifest/v1"] = MANIFEST_VERSION
    job: dict[str, str] = Field(description="namespace, name, uid of the FineTuneJob.")
    created: str = Field(description="RFC 3339 time of publication.")
    base_model: ManifestBaseModel
    method: MethodType
    adapter: ManifestAdapter
    evaluation: dict[str, ManifestEval] = Field(default_factory=dict, description="baseline and final.")
    files: list[ManifestFile] = Field(description="Every published file except manifest.json itself.")
