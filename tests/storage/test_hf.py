"""hf:// through the shared storage layer (HfStore, i.e. huggingface_hub) against tests/storage/hub.py: a local
stand-in that plays the Hugging Face Hub and follows its documented HTTP API (there is no internet here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune_storage import Denied, InvalidUri, NotFound, StorageError, open_store
from kubetune_storage.hf import hub_error
from tests.storage.hub import HubStandIn

TOKEN = "hf_secret-token-value-123"


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants as constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: another test's HF_HUB_OFFLINE=1 must not leak here
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with HubStandIn() as server:
        yield server


def test_hf_store_lists_reads_and_downloads_one_commit(hub: HubStandIn, tmp_path: Path):
    first = hub.commit("team/bot", {"v1/manifest.json": b"{1}", "v1/adapter/w.bin": b"w1", "README.md": b"r"})
    second = hub.commit("team/bot", {"v1/manifest.json": b"{2}", "v1/adapter/w.bin": b"w2"})
    env = {"HF_ENDPOINT": hub.url}
    store = open_store(f"hf://team/bot@{first}/v1", env)
    assert store.uri == f"hf://team/bot@{first}/v1"
    assert store.list("") == ["adapter/w.bin", "manifest.json"]
    assert store.read_bytes("manifest.json") == b"{1}"  # the pinned commit, not the branch head
    store.download("adapter/w.bin", tmp_path / "d/w.bin")
    assert (tmp_path / "d/w.bin").read_bytes() == b"w1" and sorted(p.name for p in (tmp_path / "d").iterdir()) == ["w.bin"]
    assert store.child("adapter").read_bytes("w.bin") == b"w1"
    assert store.download_tree("", tmp_path / "t") == [tmp_path / "t/adapter/w.bin", tmp_path / "t/manifest.json"]
    assert open_store(f"hf://team/bot@{second}/v1/manifest.json", env).read_bytes() == b"{2}"
    assert open_store("hf://team/bot@main", env).list("v1") == ["v1/adapter/w.bin", "v1/manifest.json"]
    assert any(path.startswith(f"/team/bot/resolve/{first}/v1/manifest.json") for _, path, _ in hub.requests)


def test_hf_store_errors_name_the_uri_and_whose_fault(hub: HubStandIn):
    sha = hub.commit("team/bot", {"manifest.json": b"{}"})
    env = {"HF_ENDPOINT": hub.url}
    with pytest.raises(NotFound, match=rf"hf://team/bot@{sha}/missing.json does not exist on the Hugging Face Hub"):
        open_store(f"hf://team/bot@{sha}", env).read_bytes("missing.json")
    assert open_store(f"hf://team/bot@{sha}", env).read_optional("missing.json") is None
    with pytest.raises(NotFound, match=r"hf://team/nobody@.* not found on the Hugging Face Hub \(or it is private"):
        open_store(f"hf://team/nobody@{sha}", env).read_bytes("manifest.json")
    with pytest.raises(NotFound, match=r"hf://team/bot@" + "0" * 40 + r"/manifest.json: revision not found"):
        open_store("hf://team/bot@" + "0" * 40, env).read_bytes("manifest.json")
    # the Hub unreachable (huggingface_hub retries ~20 s first, so its error is handed over directly): may pass
    from huggingface_hub.errors import LocalEntryNotFoundError

    unreachable = hub_error("hf://team/bot", LocalEntryNotFoundError("connection refused"), is_offline=False)
    assert (type(unreachable), str(unreachable)) == (StorageError, "cannot fetch hf://team/bot (the Hub is unreachable)")
    offline = hub_error("hf://team/bot", LocalEntryNotFoundError("not cached"), is_offline=True)
    assert offline.user_fault and "HF_HUB_OFFLINE is set" in str(offline)
    with pytest.raises(InvalidUri, match=r"'hf://team/bot@' : empty|empty or repeated '@revision'"):
        open_store("hf://team/bot@/x", env)


def test_private_repo_needs_the_token_which_never_shows(hub: HubStandIn):
    sha = hub.commit("team/private", {"manifest.json": b"{}"}, token=TOKEN)
    uri = f"hf://team/private@{sha}"
    with pytest.raises(NotFound, match=r"or it is private: set spec.hubTokenSecretRef") as info:
        open_store(uri, {"HF_ENDPOINT": hub.url}).read_bytes("manifest.json")
    with pytest.raises((NotFound, Denied)) as info:
        open_store(uri, {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_wrong-token-456"}).read_bytes("manifest.json")
    assert "hf_wrong-token-456" not in str(info.value)
    assert open_store(uri, {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}).read_bytes("manifest.json") == b"{}"
    assert ("GET", f"/team/private/resolve/{sha}/manifest.json", f"Bearer {TOKEN}") in hub.requests


def test_a_whole_model_comes_through_the_hub_cache(hub: HubStandIn, tmp_path: Path, monkeypatch):
    """local_folder (the trainer's base model): huggingface_hub's snapshot in $HF_HOME, filtered by `skip`."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    sha = hub.commit("team/base", {"config.json": b"{}", "model.safetensors": b"w", "model.gguf": b"g"})
    folder = open_store(f"hf://team/base@{sha}", {"HF_ENDPOINT": hub.url}).local_folder(tmp_path / "x", skip=["*.gguf"])
    assert folder == tmp_path / f"hub-cache/models--team--base/snapshots/{sha}"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
