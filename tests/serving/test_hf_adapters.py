"""hf:// adapters in a ModelDeployment: the API accepts a Hub repository pinned to one commit (and refuses a
branch), the sidecar's pod gets the Hub token from the Secret, and the sidecar's adapter cache reads, verifies and
refuses exactly as for s3:// (a half-uploaded adapter is never ready). The Hub is tests/storage/hub.py, a local
stand-in that plays the Hugging Face Hub and follows its documented HTTP API (no internet here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.api.admission import ServingTarget
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune.api.sidecar import DesiredAdapter
from kubetune.api.validation import SpecError, parse
from kubetune.builders import modeldeployment as md_builders
from kubetune.config import OperatorSettings
from kubetune_serving.cache import AdapterCache, ManifestMissing
from kubetune_serving.verify import VerificationError
from kubetune_storage import Storage
from tests.serving.helpers import FAKE_WEIGHTS, fake_adapter, publish_adapter, sha256
from tests.storage.hub import HubStandIn

COMMIT = "0123456789abcdef0123456789abcdef01234567"
BASE = {"uri": "hf://Qwen/Qwen2-0.5B"}


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once at import; another test may have set it
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with HubStandIn() as server:
        yield server


def test_the_api_accepts_hf_adapters_pinned_to_a_commit():
    spec = parse(ModelDeploymentSpec, {"baseModel": BASE, "adapters": [
        {"name": "bot", "uri": f"hf://team/bot@{COMMIT}"}, {"name": "sub", "uri": f"hf://team/many@{COMMIT}/v2"}]})
    assert [a.uri for a in spec.adapters] == [f"hf://team/bot@{COMMIT}", f"hf://team/many@{COMMIT}/v2"]
    assert DesiredAdapter(name="bot", uri=f"hf://team/bot@{COMMIT}/v2").uri.endswith("/v2")  # the wire contract too
    for uri in ("hf://team/bot", "hf://team/bot@main", f"hf://team/bot@{COMMIT[:12]}"):
        with pytest.raises(SpecError) as info:
            parse(ModelDeploymentSpec, {"baseModel": BASE, "adapters": [{"name": "bot", "uri": uri}]})
        assert f"spec.adapters[0].uri: {uri!r}: an hf:// adapter must be pinned to a commit: hf://org/name@<40-hex " \
               "commit sha>[/folder]" in str(info.value)
    with pytest.raises(SpecError, match=r"spec.adapters\[0\].uri: must not contain '\.\.' path segments"):
        parse(ModelDeploymentSpec, {"baseModel": BASE, "adapters": [{"name": "bot", "uri": f"hf://team/bot@{COMMIT}/../x"}]})
    with pytest.raises(SpecError, match=r"'gs://b/x' is not a valid adapter URI. Allowed: s3://"):
        parse(ModelDeploymentSpec, {"baseModel": BASE, "adapters": [{"name": "bot", "uri": "gs://b/x"}]})


def test_the_sidecar_gets_the_hub_token_from_the_secret_never_its_value():
    settings = OperatorSettings(default_output_uri="s3://adapters/prod")
    spec = {"baseModel": BASE, "adapters": [{"name": "bot", "uri": f"hf://team/bot@{COMMIT}"}],
            "hubTokenSecretRef": {"name": "hf", "key": "token"}}
    md = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "chat", "namespace": "ml", "uid": "u"}}
    resolved = md_builders.resolve_spec(parse(ModelDeploymentSpec, spec), settings)
    desired = md_builders.desired_set(1, [{"name": "bot", "uri": f"hf://team/bot@{COMMIT}", "manifestSha256": None}])
    deployment = md_builders.build_children({**md, "spec": spec}, resolved, settings, desired)[-1]
    sync = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "adapter-sync")
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in sync["env"]
    assert not any("token" in arg.lower() for arg in sync["args"])


def _publish_to_hub(hub: HubStandIn, tmp_path: Path, repo: str, *, drop: str | None = None,
                    tamper: bool = False) -> tuple[str, str]:
    """Publish like the trainer into a folder, then commit that folder to the Hub: (commit, manifest sha256).
    ``drop``: a file left out of the commit (a half-uploaded adapter); ``tamper``: weights changed after."""
    folder = tmp_path / repo.replace("/", "_")
    manifest_sha = publish_adapter(fake_adapter(tmp_path / "src" / repo), folder)
    if drop:
        (folder / drop).unlink()
    if tamper:
        (folder / "adapter/adapter_model.safetensors").write_bytes(b"X" + FAKE_WEIGHTS[1:])
    return hub.commit_folder(repo, folder), manifest_sha


def _cache(tmp_path: Path, hub: HubStandIn) -> AdapterCache:
    return AdapterCache(tmp_path / "cache", Storage({"HF_ENDPOINT": hub.url}), ServingTarget(max_lora_rank=16))


def test_an_hf_adapter_is_resolved_downloaded_and_verified_like_any_other(hub: HubStandIn, tmp_path: Path):
    commit, manifest_sha = _publish_to_hub(hub, tmp_path, "team/bot")
    cache = _cache(tmp_path, hub)
    adapter = DesiredAdapter(name="bot", uri=f"hf://team/bot@{commit}")  # unpinned: the sidecar reads the manifest
    resolution = cache.resolve(adapter.uri)
    assert resolution.sha256 == manifest_sha
    fetched = cache.fetch(adapter.model_copy(update={"manifest_sha256": resolution.sha256}), resolution.raw)
    assert (fetched.lora_path, fetched.downloaded) == (tmp_path / "cache" / manifest_sha / "adapter", True)
    assert (fetched.lora_path / "adapter_model.safetensors").read_bytes() == FAKE_WEIGHTS
    assert sorted(p.relative_to(tmp_path / "cache").as_posix() for p in (tmp_path / "cache").rglob("*") if p.is_file()) == [
        f"{manifest_sha}/adapter/adapter_config.json", f"{manifest_sha}/adapter/adapter_model.safetensors",
        f"{manifest_sha}/manifest.json"]  # nothing of huggingface_hub's own bookkeeping
    # a later commit moves `main`; the pinned adapter still reads its own commit
    hub.commit("team/bot", {"manifest.json": b"{}"})
    assert cache.resolve(adapter.uri).sha256 == manifest_sha


def test_a_half_uploaded_hf_adapter_is_never_ready(hub: HubStandIn, tmp_path: Path):
    cache = _cache(tmp_path, hub)
    no_manifest, _ = _publish_to_hub(hub, tmp_path, "team/early", drop="manifest.json")
    with pytest.raises(ManifestMissing, match=rf"no manifest.json at hf://team/early@{no_manifest}/manifest.json: "
                                              "the adapter is not published"):
        cache.resolve(f"hf://team/early@{no_manifest}")
    missing_weights, sha = _publish_to_hub(hub, tmp_path, "team/partial", drop="adapter/adapter_model.safetensors")
    with pytest.raises(VerificationError, match=r"adapter/adapter_model.safetensors is listed in the manifest but "
                                                r"missing in storage"):
        cache.fetch(DesiredAdapter(name="p", uri=f"hf://team/partial@{missing_weights}", manifest_sha256=sha))
    tampered, sha = _publish_to_hub(hub, tmp_path, "team/tampered", tamper=True)
    with pytest.raises(VerificationError, match=r"adapter/adapter_model.safetensors: sha256 [0-9a-f]{64} does not "
                                                r"match the manifest's"):
        cache.fetch(DesiredAdapter(name="t", uri=f"hf://team/tampered@{tampered}", manifest_sha256=sha))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # nothing vLLM could load


def test_an_adapter_in_a_folder_of_a_private_repo(hub: HubStandIn, tmp_path: Path):
    folder = tmp_path / "pub"
    manifest_sha = publish_adapter(fake_adapter(tmp_path), folder)
    commit = hub.commit_folder("team/private", folder, prefix="adapters/v3", token="hf_token-value-789")
    adapter = DesiredAdapter(name="v3", uri=f"hf://team/private@{commit}/adapters/v3", manifest_sha256=manifest_sha)
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_token-value-789"}
    cache = AdapterCache(tmp_path / "cache", Storage(env), ServingTarget(max_lora_rank=16))
    assert cache.fetch(adapter).manifest.adapter.rank == json.loads((folder / "adapter/adapter_config.json").read_text())["r"]
    assert sha256(folder / "manifest.json") == manifest_sha
