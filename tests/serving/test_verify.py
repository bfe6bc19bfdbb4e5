"""Manifest verification, the sidecar's admission checks (kubetune.api.admission on what it downloaded) and the
verified cache (file://; no vLLM needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune.api.admission import AdapterFacts, AdmissionError, ServingTarget, admit, admit_adapter_config
from kubetune.api.manifest import AdapterManifest
from kubetune.api.sidecar import DesiredAdapter
from kubetune_serving.cache import AdapterCache, ManifestMissing
from kubetune_storage import Storage
from kubetune_serving.verify import VerificationError, parse_manifest, sha256_bytes

from tests.serving.helpers import FAKE_CONFIG as CONFIG
from tests.serving.helpers import FAKE_WEIGHTS as WEIGHTS
from tests.serving.helpers import fake_adapter, publish_adapter, sha256


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / "pub"
    return folder, publish_adapter(fake_adapter(tmp_path), folder)


def manifest_of(folder: Path) -> AdapterManifest:
    return AdapterManifest.model_validate_json((folder / "manifest.json").read_bytes())


def admit_manifest(manifest: AdapterManifest, max_lora_rank: int, base_model_uri: str | None = None,
                   base_model_revision: str | None = None) -> None:
    """What the sidecar runs on a downloaded manifest.json (AdapterCache.fetch)."""
    admit(AdapterFacts.from_manifest(manifest), ServingTarget(max_lora_rank, base_model_uri, base_model_revision))


# ------------------------------------------------------------------------------ verification


def test_parse_manifest_checks_the_desired_sha_first(published: tuple[Path, str]) -> None:
    folder, sha = published
    raw = (folder / "manifest.json").read_bytes()
    assert parse_manifest(raw, sha) == manifest_of(folder)
    with pytest.raises(VerificationError) as info:
        parse_manifest(raw, "0" * 64)
    assert str(info.value) == (
        f"manifest.json sha256 {sha} does not match the desired manifestSha256 {'0' * 64} "
        "(re-published or altered since the deployment resolved it)"
    )


def test_parse_manifest_rejects_a_non_manifest() -> None:
    raw = b'{"files": []}'
    with pytest.raises(VerificationError, match="^manifest.json is not a valid adapter manifest: "):
        parse_manifest(raw, sha256_bytes(raw))


# --------------------------------------------------------------------------------- admission


def test_admit_manifest_accepts_a_plain_lora(published: tuple[Path, str]) -> None:
    admit_manifest(manifest_of(published[0]), max_lora_rank=16, base_model_uri="file:///models/tiny")


@pytest.mark.parametrize(("override", "message"), [
    ({"rank": 32}, "LoRA rank 32 exceeds spec.vllm.maxLoraRank 16: raise vllm.maxLoraRank to at least 32"),
    ({"type": "full"}, "adapter type is 'full' (a fully fine-tuned model), but vLLM serves only LoRA adapters "
                       "(lora, qlora): serve it as spec.baseModel of its own ModelDeployment instead"),
    ({"type": "dora"}, "adapter type is 'dora', but vLLM cannot serve DoRA adapters (only lora, qlora): set the "
                       "FineTuneJob's spec.output.mergedModel: true and serve the merged model it publishes as "
                       "spec.baseModel of a ModelDeployment"),
    ({"targetModules": ["q_proj", "lm_head"]}, "adapter targets ['lm_head'] (embedding/lm_head LoRA), which vLLM does "
                                              "not serve: train on the attention/MLP projections only"),
    ({"modulesToSave": ["lm_head"]}, "adapter fully trains modules_to_save=['lm_head'], but vLLM serves only "
                                     "LoRA weights (modules_to_save must be empty)"),
    ({"addedTokens": 3}, "adapter adds 3 tokens to the base tokenizer, but vLLM serves adapters only with the "
                         "base model's vocabulary (0 added tokens)"),
])
def test_admit_manifest_rejects_with_both_values(tmp_path: Path, override: dict, message: str) -> None:
    folder = tmp_path / "pub"
    publish_adapter(fake_adapter(tmp_path), folder, adapter=override)
    with pytest.raises(AdmissionError) as info:
        admit_manifest(manifest_of(folder), max_lora_rank=16)
    assert str(info.value) == message


def test_admit_manifest_base_model_and_revision(published: tuple[Path, str]) -> None:
    manifest = manifest_of(published[0])
    with pytest.raises(AdmissionError) as info:
        admit_manifest(manifest, max_lora_rank=16, base_model_uri="hf://Qwen/Qwen2-0.5B")
    assert str(info.value) == ("adapter was trained on file:///models/tiny, but this deployment serves "
                               "hf://Qwen/Qwen2-0.5B (spec.baseModel): a LoRA adapter only works on the base model it "
                               "was trained on")
    manifest.base_model.revision = "abc"
    with pytest.raises(AdmissionError) as info:
        admit_manifest(manifest, max_lora_rank=16, base_model_uri="file:///models/tiny", base_model_revision="def")
    assert str(info.value) == ("adapter was trained on file:///models/tiny@abc, but this deployment serves "
                               "file:///models/tiny@def (spec.baseModel): a LoRA adapter only works on the base model "
                               "it was trained on")


def test_admit_adapter_config_names_every_problem() -> None:
    admit_adapter_config(CONFIG, max_lora_rank=16)
    bad = CONFIG | {"r": 64, "rank_pattern": {"q_proj": 32}, "modules_to_save": ["lm_head"], "use_dora": True,
                    "target_modules": ["model.embed_tokens", "model.layers.0.mlp.up_proj", "lm_head"]}
    with pytest.raises(AdmissionError) as info:
        admit_adapter_config(bad, max_lora_rank=16)
    assert str(info.value).split("; ") == [
        "adapter_config.json r=64 exceeds spec.vllm.maxLoraRank 16",
        "adapter_config.json rank_pattern['q_proj']=32 exceeds spec.vllm.maxLoraRank 16",
        "adapter_config.json modules_to_save=['lm_head'], but vLLM serves only LoRA weights (modules_to_save must be empty)",
        "adapter_config.json target_modules include ['lm_head', 'model.embed_tokens'] (embedding/lm_head LoRA), "
        "which vLLM does not serve: train on the attention/MLP projections only",
        "adapter_config.json sets use_dora=True: vLLM does not support DoRA (use_dora)",
    ]


def test_admit_adapter_config_rejects_prefix_tuning() -> None:
    with pytest.raises(AdmissionError) as info:
        admit_adapter_config({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 20}, max_lora_rank=16)
    assert str(info.value) == "adapter_config.json peft_type is 'PREFIX_TUNING', but vLLM serves only 'LORA'"


# ------------------------------------------------------------------------------------- cache


def cache(tmp_path: Path, rank: int = 16) -> AdapterCache:
    return AdapterCache(tmp_path / "cache", Storage({}), ServingTarget(max_lora_rank=rank))


def desired(folder: Path, sha: str, name: str = "a") -> DesiredAdapter:
    return DesiredAdapter(name=name, uri=f"file://{folder}", manifest_sha256=sha)


def test_fetch_downloads_verifies_and_reuses(tmp_path: Path, published: tuple[Path, str]) -> None:
    folder, sha = published
    store = cache(tmp_path)
    first = store.fetch(desired(folder, sha))
    assert (first.lora_path, first.downloaded) == (tmp_path / "cache" / sha / "adapter", True)
    assert sorted(p.relative_to(tmp_path / "cache").as_posix() for p in (tmp_path / "cache").rglob("*") if p.is_file()) == [
        f"{sha}/adapter/adapter_config.json", f"{sha}/adapter/adapter_model.safetensors", f"{sha}/manifest.json"]
    assert (first.lora_path / "adapter_model.safetensors").read_bytes() == WEIGHTS
    second = store.fetch(desired(folder, sha))
    assert (second.lora_path, second.downloaded) == (first.lora_path, False)


def test_fetch_refuses_a_corrupted_file_and_leaves_nothing(tmp_path: Path, published: tuple[Path, str]) -> None:
    folder, sha = published
    weights = folder / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(b"X" + WEIGHTS[1:])  # same size, one byte changed
    listed = next(f.sha256 for f in manifest_of(folder).files if f.path.endswith(".safetensors"))
    store = cache(tmp_path)
    with pytest.raises(VerificationError) as info:
        store.fetch(desired(folder, sha))
    assert str(info.value) == (f"adapter/adapter_model.safetensors: sha256 {sha256(weights)} does not match the "
                               f"manifest's {listed}")
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_redownloads_a_cache_entry_that_went_bad(tmp_path: Path, published: tuple[Path, str]) -> None:
    folder, sha = published
    store = cache(tmp_path)
    lora_path = store.fetch(desired(folder, sha)).lora_path
    (lora_path / "adapter_model.safetensors").write_bytes(b"garbage")
    again = store.fetch(desired(folder, sha))
    assert (again.downloaded, (again.lora_path / "adapter_model.safetensors").read_bytes()) == (True, WEIGHTS)


def test_fetch_without_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "unpublished"
    (folder / "adapter").mkdir(parents=True)
    with pytest.raises(ManifestMissing) as info:
        cache(tmp_path).fetch(desired(folder, "f" * 64))
    assert str(info.value) == (f"no manifest.json at file://{folder}/manifest.json: the adapter is not published "
                               "(yet), and an adapter without its manifest does not exist")


# -------------------------------------------------------------------- unpinned: resolution


def test_resolve_pins_an_unpinned_adapter_to_its_manifest(tmp_path: Path, published: tuple[Path, str]) -> None:
    folder, sha = published
    store = cache(tmp_path)
    resolution = store.resolve(f"file://{folder}/")  # a trailing slash is fine
    assert (resolution.sha256, resolution.raw) == (sha, (folder / "manifest.json").read_bytes())
    assert list((tmp_path / "cache").iterdir()) == []  # resolving downloads nothing else
    # fetch with the bytes just read: no second read, same entry as for the pinned adapter.
    (folder / "manifest.json").unlink()
    fetched = store.fetch(desired(folder, resolution.sha256), resolution.raw)
    assert (fetched.lora_path, fetched.downloaded) == (tmp_path / "cache" / sha / "adapter", True)
    assert (fetched.lora_path.parent / "manifest.json").read_bytes() == resolution.raw


def test_resolve_follows_a_republication(tmp_path: Path, published: tuple[Path, str]) -> None:
    folder, sha = published
    store = cache(tmp_path)
    assert store.resolve(f"file://{folder}").sha256 == sha
    (tmp_path / "peft" / "adapter_model.safetensors").write_bytes(b"retrained")
    republished = publish_adapter(tmp_path / "peft", folder)
    assert republished != sha
    assert store.resolve(f"file://{folder}").sha256 == republished


def test_resolve_without_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "unpublished"
    (folder / "adapter").mkdir(parents=True)
    with pytest.raises(ManifestMissing) as info:
        cache(tmp_path).resolve(f"file://{folder}")
    assert str(info.value) == (f"no manifest.json at file://{folder}/manifest.json: the adapter is not published "
                               "(yet), and an adapter without its manifest does not exist")


def test_fetch_needs_a_pinned_adapter(tmp_path: Path, published: tuple[Path, str]) -> None:
    with pytest.raises(ValueError, match="^adapter a is not pinned: resolve it first$"):
        cache(tmp_path).fetch(desired(published[0], None))  # type: ignore[arg-type]


def test_fetch_rejects_before_downloading_weights(tmp_path: Path) -> None:
    folder = tmp_path / "pub"
    sha = publish_adapter(fake_adapter(tmp_path, r=32), folder)
    with pytest.raises(AdmissionError) as info:
        cache(tmp_path).fetch(desired(folder, sha))
    assert str(info.value) == "LoRA rank 32 exceeds spec.vllm.maxLoraRank 16: raise vllm.maxLoraRank to at least 32"
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_rejects_what_only_adapter_config_shows(tmp_path: Path) -> None:
    folder = tmp_path / "pub"
    sha = publish_adapter(fake_adapter(tmp_path, use_dora=True), folder)
    with pytest.raises(AdmissionError) as info:
        cache(tmp_path).fetch(desired(folder, sha))
    assert str(info.value) == "adapter_config.json sets use_dora=True: vLLM does not support DoRA (use_dora)"
    assert list((tmp_path / "cache").iterdir()) == []


def test_prune_keeps_only_wanted_entries(tmp_path: Path, published: tuple[Path, str]) -> None:
    folder, sha = published
    store = cache(tmp_path)
    store.fetch(desired(folder, sha))
    (tmp_path / "cache" / ("e" * 64)).mkdir()
    (tmp_path / "cache" / "not-a-sha").mkdir()
    assert store.prune({sha}) == ["e" * 64]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [sha, "not-a-sha"]
