"""Integrity (sha256) and admission checks of a published adapter. Pure except ``sha256_file``.

Integrity failures (``VerificationError``) mean the stored bytes are not what was published: the
adapter is Failed and retried with backoff (storage may be repaired). Admission failures
(``AdmissionError``) mean vLLM can never serve it as is: the adapter is Rejected for that manifest.
Every message names the value found and the value expected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from kubetune.api.manifest import AdapterManifest, ManifestFile
from pydantic import ValidationError


class VerificationError(Exception):
    """The bytes do not match what the manifest (or the desired set) pins."""


class AdmissionError(Exception):
    """vLLM cannot serve this adapter; the message says why and what to do."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def parse_manifest(raw: bytes, expected_sha256: str) -> AdapterManifest:
    """Check manifest.json against the desired set's manifestSha256, then parse it."""
    actual = sha256_bytes(raw)
    if actual != expected_sha256:
        raise VerificationError(
            f"manifest.json sha256 {actual} does not match the desired manifestSha256 {expected_sha256} "
            "(re-published or altered since the deployment resolved it)"
        )
    try:
        return AdapterManifest.model_validate_json(raw)
    except ValidationError as exc:
        raise VerificationError(f"manifest.json is not a valid adapter manifest: {exc}") from exc


def adapter_files(manifest: AdapterManifest) -> list[ManifestFile]:
    """The manifest's files under the adapter folder (what vLLM loads); paths must stay inside it."""
    folder = PurePosixPath(manifest.adapter.path)
    files = []
    for entry in manifest.files:
        path = PurePosixPath(entry.path)
        if path.is_absolute() or ".." in path.parts:
            raise VerificationError(f"manifest.json lists {entry.path!r}: paths must be relative, without '..'")
        if folder in path.parents:
            files.append(entry)
    names = {PurePosixPath(f.path).name for f in files}
    for required in ("adapter_config.json", "adapter_model.safetensors"):
        if required not in names:
            raise VerificationError(
                f"manifest.json lists no {manifest.adapter.path}/{required}: found {sorted(names) or 'no files'} "
                f"under {manifest.adapter.path}/"
            )
    return sorted(files, key=lambda f: f.path)


def verify_file(path: Path, entry: ManifestFile) -> None:
    size = path.stat().st_size
    if size != entry.size:
        raise VerificationError(f"{entry.path}: size {size} bytes does not match the manifest's {entry.size}")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise VerificationError(f"{entry.path}: sha256 {actual} does not match the manifest's {entry.sha256}")


# ---------------------------------------------------------------------------------- admission

SERVABLE_TYPES = ("lora", "qlora")


def admit_manifest(manifest: AdapterManifest, *, max_lora_rank: int, base_model_uri: str | None = None,
                   base_model_revision: str | None = None) -> None:
    """Checks that need only manifest.json (before anything else is downloaded)."""
    problems = []
    adapter = manifest.adapter
    if adapter.type == "full":
        problems.append(
            f"adapter type is 'full' (a fully fine-tuned model), but vLLM serves only LoRA adapters "
            f"({', '.join(SERVABLE_TYPES)}): use it as the deployment's baseModel instead"
        )
    elif adapter.type not in SERVABLE_TYPES:
        problems.append(f"adapter type is {adapter.type!r}, but vLLM serves only {', '.join(SERVABLE_TYPES)} adapters")
    if adapter.rank is not None and adapter.rank > max_lora_rank:
        problems.append(f"LoRA rank {adapter.rank} exceeds the max LoRA rank {max_lora_rank} (vllm.maxLoraRank)")
    if adapter.modules_to_save:
        problems.append(
            f"adapter fully trains modules_to_save={adapter.modules_to_save}, but vLLM serves only LoRA "
            "weights (modules_to_save must be empty)"
        )
    if adapter.added_tokens:
        problems.append(
            f"adapter adds {adapter.added_tokens} tokens to the base tokenizer, but vLLM serves adapters "
            "only with the base model's vocabulary (0 added tokens)"
        )
    if base_model_uri is not None and manifest.base_model.uri != base_model_uri:
        problems.append(f"adapter was trained on base model {manifest.base_model.uri}, but this deployment "
                        f"serves {base_model_uri}")
    elif (base_model_revision is not None and manifest.base_model.revision is not None
          and manifest.base_model.revision != base_model_revision):
        problems.append(f"adapter was trained on revision {manifest.base_model.revision} of the base model, "
                        f"but this deployment serves revision {base_model_revision}")
    if problems:
        raise AdmissionError("; ".join(problems))


# PEFT features that change what the adapter computes and that vLLM does not implement (its
# vllm/lora/peft_helper.py refuses them too, but only as an HTTP 500 at load time).
_UNSUPPORTED_FLAGS = {
    "use_dora": "DoRA (use_dora)",
    "lora_bias": "LoRA bias (lora_bias)",
    "use_qalora": "QALoRA (use_qalora)",
    "alora_invocation_tokens": "Activated LoRA (alora_invocation_tokens)",
    "layer_replication": "layer_replication",
}
_VOCAB_MODULES = ("lm_head", "embed_tokens", "wte", "embed_out")


def admit_adapter_config(config: Mapping[str, Any], *, max_lora_rank: int) -> None:
    """Checks on the verified adapter_config.json (PEFT), the ground truth of what vLLM would load."""
    problems = []
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        problems.append(f"adapter_config.json peft_type is {config.get('peft_type')!r}, but vLLM serves only 'LORA'")
    ranks = [("r", config.get("r"))] + [(f"rank_pattern[{k!r}]", v) for k, v in (config.get("rank_pattern") or {}).items()]
    for field, rank in ranks:
        if isinstance(rank, int) and rank > max_lora_rank:
            problems.append(f"adapter_config.json {field}={rank} exceeds the max LoRA rank {max_lora_rank} (vllm.maxLoraRank)")
    to_save = config.get("modules_to_save") or []
    if to_save:
        problems.append(f"adapter_config.json modules_to_save={list(to_save)}, but vLLM serves only LoRA weights "
                        "(modules_to_save must be empty)")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    vocab = sorted(m for m in targets if str(m).rsplit(".", 1)[-1] in _VOCAB_MODULES)
    if vocab:
        problems.append(f"adapter_config.json target_modules include {vocab} (embedding/lm_head LoRA), which "
                        "vLLM does not serve: train on the attention/MLP projections only")
    for flag, what in _UNSUPPORTED_FLAGS.items():
        if config.get(flag):
            problems.append(f"adapter_config.json sets {flag}={config[flag]!r}: vLLM does not support {what}")
    if problems:
        raise AdmissionError("; ".join(problems))
