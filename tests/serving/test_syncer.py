"""The reconcile loop against a fake vLLM (its LoRA endpoints, in-process): fast, deterministic
checks of restore-after-restart, retries, rejection and readiness. The real vLLM runs in
test_vllm_e2e.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from kubetune.api.admission import ServingTarget
from kubetune_serving.cache import AdapterCache
from kubetune.api.sidecar import DesiredSet
from kubetune_serving.server import make_app
from kubetune_serving.sources import Update
from kubetune_storage import Storage
from kubetune_serving.syncer import Syncer, backoff_seconds
from kubetune_serving.vllm_client import VLLMClient

from tests.serving.helpers import desired_set, fake_adapter, publish_adapter


class FakeVLLM:
    """vLLM's /v1/models + load/unload with its status codes; ``up=False`` plays a restart."""

    def __init__(self) -> None:
        self.up = True
        self.loras: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.hold: set[str] = set()  # loads of these names wait until removed (a slow download into vLLM)

    def app(self) -> web.Application:
        async def models(_: web.Request) -> web.Response:
            if not self.up:
                return web.Response(status=503)
            cards = [{"id": "tiny", "root": "/m", "parent": None}]
            cards += [{"id": n, "root": p, "parent": "tiny"} for n, p in sorted(self.loras.items())]
            return web.json_response({"object": "list", "data": cards})

        async def load(request: web.Request) -> web.Response:
            body = await request.json()
            self.calls.append(("load", body["lora_name"]))
            while body["lora_name"] in self.hold:
                await asyncio.sleep(0.02)
            if not Path(body["lora_path"], "adapter_config.json").exists():
                return web.json_response({"error": {"message": "not found", "code": 404}}, status=404)
            self.loras[body["lora_name"]] = body["lora_path"]
            return web.Response(text="Success")

        async def unload(request: web.Request) -> web.Response:
            name = (await request.json())["lora_name"]
            self.calls.append(("unload", name))
            if self.loras.pop(name, None) is None:
                return web.json_response({"error": {"message": f"The lora adapter '{name}' cannot be found."}}, status=404)
            return web.Response(text="Success")

        async def chat(request: web.Request) -> web.Response:  # a gate's smoke prompt: the answer names the model
            model = (await request.json())["model"]
            self.calls.append(("chat", model))
            if model not in self.loras:
                return web.json_response({"error": {"message": f"The model `{model}` does not exist."}}, status=404)
            return web.json_response({"choices": [{"message": {"role": "assistant", "content": f"I am {model}"}}]})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/load_lora_adapter", load)
        app.router.add_post("/v1/unload_lora_adapter", unload)
        return app


class Harness:
    def __init__(self, syncer: Syncer, fake: FakeVLLM, updates: asyncio.Queue, sidecar_url: str,
                 session: aiohttp.ClientSession) -> None:
        self.syncer, self.fake, self.updates, self.url, self.session = syncer, fake, updates, sidecar_url, session

    def want(self, data: dict) -> None:
        self.updates.put_nowait(Update(DesiredSet.model_validate(data)))

    async def get(self, path: str) -> tuple[int, dict]:
        async with self.session.get(self.url + path) as resp:
            return resp.status, await resp.json()

    async def until(self, check: Callable[[], object], timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not check():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"not reached; status: {self.syncer.status().to_dict()}")
            await asyncio.sleep(0.02)

    def states(self) -> dict[str, str]:
        return {r.name: r.state for r in self.syncer.status().adapters}


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    fake = FakeVLLM()
    vllm_runner, vllm_url = await serve(fake.app())
    queue: asyncio.Queue = asyncio.Queue()

    async def updates() -> AsyncIterator[Update]:
        while True:
            yield await queue.get()

    async with aiohttp.ClientSession() as session:
        cache = AdapterCache(tmp_path / "cache", Storage({}), ServingTarget(max_lora_rank=16))
        syncer = Syncer(VLLMClient(session, vllm_url), cache, poll_interval=0.05, retry_base=0.05, retry_max=0.2,
                        resolve_interval=0.1)
        sidecar_runner, sidecar_url = await serve(make_app(syncer))
        task = asyncio.create_task(syncer.run(updates()))
        yield Harness(syncer, fake, queue, sidecar_url, session)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sidecar_runner.cleanup()
    await vllm_runner.cleanup()


def publish(tmp_path: Path, name: str, **config: object) -> tuple[str, str]:
    source = tmp_path / f"src-{name}"
    folder = tmp_path / "published" / name
    return f"file://{folder}", publish_adapter(fake_adapter(source, **config), folder, job=name)


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_seconds(n, 1.0, 60.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


async def test_nothing_happens_and_not_ready_before_a_desired_set(harness: Harness) -> None:
    harness.fake.loras["leftover"] = "/somewhere"
    await harness.until(lambda: harness.syncer.vllm_ready)
    await asyncio.sleep(0.2)
    assert harness.fake.calls == []  # never unload before the desired set is known
    assert await harness.get("/readyz") == (503, {"ok": False, "message": "no desired set read yet"})
    assert await harness.get("/status") == (200, {"generation": None, "vllmReady": True, "message": None,
                                                 "adapters": []})


async def test_sync_loads_unloads_and_restores_after_restart(harness: Harness, tmp_path: Path) -> None:
    uri_a, sha_a = publish(tmp_path, "a")
    uri_b, sha_b = publish(tmp_path, "b")
    harness.fake.loras["stale"] = "/old"
    harness.want(desired_set(1, ("a", uri_a, sha_a), ("b", uri_b, sha_b)))
    await harness.until(lambda: harness.states() == {"a": "Ready", "b": "Ready"})
    assert harness.fake.loras == {"a": str(tmp_path / "cache" / sha_a / "adapter"),
                                  "b": str(tmp_path / "cache" / sha_b / "adapter")}
    assert sorted(harness.fake.calls) == [("load", "a"), ("load", "b"), ("unload", "stale")]
    status, body = await harness.get("/status")
    assert (status, body["generation"], body["vllmReady"]) == (200, 1, True)
    assert [(a["name"], a["uri"], a["manifestSha256"], a["state"], a["message"]) for a in body["adapters"]] == [
        ("a", uri_a, sha_a, "Ready", None), ("b", uri_b, sha_b, "Ready", None)]
    assert await harness.get("/readyz") == (200, {"ok": True, "message": "ok"})

    # vLLM restarts: down (not ready, adapters Loading), then up empty: the set is restored.
    harness.fake.up = False
    await harness.until(lambda: not harness.syncer.vllm_ready)
    assert harness.states() == {"a": "Loading", "b": "Loading"}
    assert await harness.get("/readyz") == (503, {"ok": False, "message": "vLLM is not ready"})
    harness.fake.loras.clear()
    harness.fake.calls.clear()
    harness.fake.up = True
    await harness.until(lambda: harness.states() == {"a": "Ready", "b": "Ready"})
    assert sorted(harness.fake.calls) == [("load", "a"), ("load", "b")]
    assert await harness.get("/readyz") == (200, {"ok": True, "message": "ok"})

    # Remove a: unloaded, no longer reported.
    harness.fake.calls.clear()
    harness.want(desired_set(2, ("b", uri_b, sha_b)))
    await harness.until(lambda: "a" not in harness.fake.loras)
    assert (harness.fake.calls, harness.states()) == ([("unload", "a")], {"b": "Ready"})
    await harness.until(lambda: not (tmp_path / "cache" / sha_a).exists())  # pruned from the cache


async def test_a_replica_in_service_stays_ready_while_a_new_adapter_loads(harness: Harness, tmp_path: Path) -> None:
    """Readiness gates a replica's first entry into service (every adapter loaded, as a new replica
    must). After that, adding an adapter must not take the replica out of the Service: every replica
    loads it at the same moment, so that would be an outage. A vLLM restart starts it over."""
    uri_a, sha_a = publish(tmp_path, "a")
    uri_b, sha_b = publish(tmp_path, "b")
    harness.fake.hold.add("a")
    harness.want(desired_set(1, ("a", uri_a, sha_a)))
    await harness.until(lambda: ("load", "a") in harness.fake.calls)
    assert await harness.get("/readyz") == (503, {"ok": False, "message": "adapters still loading: a"})
    harness.fake.hold.clear()
    await harness.until(lambda: harness.states() == {"a": "Ready"})
    assert await harness.get("/readyz") == (200, {"ok": True, "message": "ok"})

    harness.fake.hold.add("b")
    harness.want(desired_set(2, ("a", uri_a, sha_a), ("b", uri_b, sha_b)))
    await harness.until(lambda: ("load", "b") in harness.fake.calls)
    assert harness.states() == {"a": "Ready", "b": "Loading"}
    assert await harness.get("/readyz") == (200, {"ok": True, "message": "ok; loading b"})
    harness.fake.hold.clear()
    await harness.until(lambda: harness.states() == {"a": "Ready", "b": "Ready"})

    # vLLM restarts empty: out of service until every adapter is back.
    harness.fake.up = False
    await harness.until(lambda: not harness.syncer.vllm_ready)
    harness.fake.loras.clear()
    harness.fake.calls.clear()
    harness.fake.hold.add("b")
    harness.fake.up = True
    await harness.until(lambda: ("load", "b") in harness.fake.calls and harness.states()["a"] == "Ready")
    assert await harness.get("/readyz") == (503, {"ok": False, "message": "adapters still loading: b"})
    harness.fake.hold.clear()
    await harness.until(lambda: harness.states() == {"a": "Ready", "b": "Ready"})
    assert await harness.get("/readyz") == (200, {"ok": True, "message": "ok"})


async def test_missing_manifest_fails_then_loads_once_published(harness: Harness, tmp_path: Path) -> None:
    folder = tmp_path / "published" / "late"
    source = fake_adapter(tmp_path)
    # Know the manifest's sha up front (the operator resolved it), publish it elsewhere first.
    sha = publish_adapter(source, tmp_path / "resolved")
    harness.want(desired_set(1, ("late", f"file://{folder}", sha)))
    await harness.until(lambda: harness.states() == {"late": "Failed"})
    report = harness.syncer.status().adapters[0]
    assert report.message.startswith(f"no manifest.json at file://{folder}/manifest.json: the adapter is not "
                                     "published (yet), and an adapter without its manifest does not exist (attempt ")
    assert await harness.get("/readyz") == (200, {"ok": True, "message": "ok"})  # Failed does not block readiness
    assert harness.fake.calls == []
    assert publish_adapter(source, folder) == sha
    await harness.until(lambda: harness.states() == {"late": "Ready"})
    assert harness.fake.calls == [("load", "late")]


async def test_rejected_adapter_is_never_loaded_nor_retried(harness: Harness, tmp_path: Path) -> None:
    uri, sha = publish(tmp_path, "big", r=64)
    harness.want(desired_set(1, ("big", uri, sha)))
    await harness.until(lambda: harness.states() == {"big": "Rejected"})
    await asyncio.sleep(0.5)  # many retry periods
    assert harness.syncer.status().adapters[0].message == "LoRA rank 64 exceeds spec.vllm.maxLoraRank 16: raise vllm.maxLoraRank to at least 64"
    assert (harness.fake.calls, harness.fake.loras) == ([], {})


async def test_new_version_replaces_in_place_and_sidecar_restart_keeps_loaded(harness: Harness, tmp_path: Path) -> None:
    uri, sha1 = publish(tmp_path, "a")
    harness.want(desired_set(1, ("a", uri, sha1)))
    await harness.until(lambda: harness.states() == {"a": "Ready"})
    (tmp_path / "src-a" / "peft" / "adapter_model.safetensors").write_bytes(b"retrained weights")
    sha2 = publish_adapter(tmp_path / "src-a" / "peft", Path(uri.removeprefix("file://")))
    harness.want(desired_set(2, ("a", uri, sha2)))
    await harness.until(lambda: harness.fake.loras["a"].endswith(f"/{sha2}/adapter"))
    assert harness.fake.calls == [("load", "a"), ("load", "a")]  # load_inplace: never unloaded in between
    await harness.until(lambda: harness.states() == {"a": "Ready"})

    # A fresh sidecar (same cache, vLLM untouched) recognises the loaded version by its cache path.
    fresh = Syncer(harness.syncer.vllm, harness.syncer.cache, poll_interval=0.05)
    fresh.apply_update(Update(DesiredSet.model_validate(desired_set(2, ("a", uri, sha2)))))
    await fresh.reconcile_once()
    assert ({r.name: r.state for r in fresh.status().adapters}, harness.fake.calls) == (
        {"a": "Ready"}, [("load", "a"), ("load", "a")])


async def test_invalid_desired_set_keeps_the_last_one(harness: Harness, tmp_path: Path) -> None:
    uri, sha = publish(tmp_path, "a")
    harness.want(desired_set(1, ("a", uri, sha)))
    await harness.until(lambda: harness.states() == {"a": "Ready"})
    harness.updates.put_nowait(Update(None, "invalid desired set in x: 1 error(s): generation: Field required"))
    await harness.until(lambda: harness.syncer.source_error is not None)
    status, body = await harness.get("/status")
    assert (body["generation"], body["message"], [a["state"] for a in body["adapters"]]) == (
        1, "invalid desired set in x: 1 error(s): generation: Field required", ["Ready"])
    assert harness.fake.loras.keys() == {"a"}


# ---------------------------------------------------------------- unpinned adapters (by URI)


async def test_unpinned_adapter_is_resolved_loaded_and_follows_republication(harness: Harness, tmp_path: Path) -> None:
    uri, sha1 = publish(tmp_path, "u")
    harness.want(desired_set(1, ("u", uri, None)))
    await harness.until(lambda: harness.states() == {"u": "Ready"})
    assert harness.fake.loras == {"u": str(tmp_path / "cache" / sha1 / "adapter")}
    status, body = await harness.get("/status")
    assert [(a["uri"], a["manifestSha256"], a["state"], a["message"]) for a in body["adapters"]] == [
        (uri, sha1, "Ready", None)]
    assert await harness.get("/readyz") == (200, {"ok": True, "message": "ok"})

    await asyncio.sleep(0.35)  # a few re-reads of the unchanged manifest: nothing happens
    assert (harness.fake.calls, harness.states()) == ([("load", "u")], {"u": "Ready"})

    # Re-published at the same URI, same desired set: the new version replaces the old in place.
    (tmp_path / "src-u" / "peft" / "adapter_model.safetensors").write_bytes(b"retrained weights")
    sha2 = publish_adapter(tmp_path / "src-u" / "peft", Path(uri.removeprefix("file://")))
    await harness.until(lambda: harness.fake.loras["u"] == str(tmp_path / "cache" / sha2 / "adapter"))
    await harness.until(lambda: harness.states() == {"u": "Ready"})
    assert harness.fake.calls == [("load", "u"), ("load", "u")]  # load_inplace: never unloaded in between
    assert harness.syncer.status().adapters[0].manifest_sha256 == sha2
    await harness.until(lambda: not (tmp_path / "cache" / sha1).exists())  # the old version is pruned


async def test_unpinned_adapter_without_manifest_fails_until_published(harness: Harness, tmp_path: Path) -> None:
    folder = tmp_path / "published" / "late"
    harness.want(desired_set(1, ("late", f"file://{folder}", None)))
    await harness.until(lambda: harness.states() == {"late": "Failed"})
    report = harness.syncer.status().adapters[0]
    assert report.manifest_sha256 is None  # not resolved: nothing to report a sha of
    assert report.message.startswith(f"no manifest.json at file://{folder}/manifest.json: the adapter is not "
                                     "published (yet), and an adapter without its manifest does not exist (attempt ")
    await harness.until(lambda: harness.syncer.records["late"].attempts >= 3)  # retried with backoff
    assert harness.fake.calls == []  # never loaded
    assert await harness.get("/readyz") == (200, {"ok": True, "message": "ok"})
    sha = publish_adapter(fake_adapter(tmp_path), folder)
    await harness.until(lambda: harness.states() == {"late": "Ready"})
    assert (harness.fake.calls, harness.syncer.status().adapters[0].manifest_sha256) == ([("load", "late")], sha)


async def test_unpinned_manifest_vanishing_keeps_the_loaded_version(harness: Harness, tmp_path: Path) -> None:
    uri, sha = publish(tmp_path, "u")
    harness.want(desired_set(1, ("u", uri, None)))
    await harness.until(lambda: harness.states() == {"u": "Ready"})
    manifest = Path(uri.removeprefix("file://"), "manifest.json")
    raw = manifest.read_bytes()
    manifest.unlink()
    await harness.until(lambda: harness.states() == {"u": "Failed"})
    report = harness.syncer.status().adapters[0]
    assert report.manifest_sha256 == sha
    assert report.message.startswith(f"no manifest.json at {uri}/manifest.json: the adapter is not published (yet), "
                                     f"and an adapter without its manifest does not exist; the loaded version {sha} "
                                     "keeps serving (attempt ")
    await harness.until(lambda: harness.syncer.records["u"].attempts >= 3)  # retried with backoff ...
    assert harness.states() == {"u": "Failed"}  # ... and it stays Failed (still loaded, but not Ready)
    assert harness.fake.loras == {"u": str(tmp_path / "cache" / sha / "adapter")}
    manifest.write_bytes(raw)  # back: Ready again without a reload
    await harness.until(lambda: harness.states() == {"u": "Ready"})
    assert harness.fake.calls == [("load", "u")]


async def test_unpinned_rejected_until_a_servable_version_is_published(harness: Harness, tmp_path: Path) -> None:
    uri, _ = publish(tmp_path, "u", r=64)
    harness.want(desired_set(1, ("u", uri, None)))
    await harness.until(lambda: harness.states() == {"u": "Rejected"})
    await asyncio.sleep(0.3)  # re-read, same sha: not retried
    assert (harness.states(), harness.fake.calls) == ({"u": "Rejected"}, [])
    sha = publish_adapter(fake_adapter(tmp_path / "src-u", r=8), Path(uri.removeprefix("file://")))
    await harness.until(lambda: harness.states() == {"u": "Ready"})
    assert (harness.fake.calls, harness.syncer.status().adapters[0].manifest_sha256) == ([("load", "u")], sha)


async def test_restarted_sidecar_keeps_a_loaded_unpinned_adapter(harness: Harness, tmp_path: Path) -> None:
    uri, sha = publish(tmp_path, "u")
    harness.want(desired_set(1, ("u", uri, None)))
    await harness.until(lambda: harness.states() == {"u": "Ready"})
    fresh = Syncer(harness.syncer.vllm, harness.syncer.cache, poll_interval=0.05)
    fresh.apply_update(Update(DesiredSet.model_validate(desired_set(1, ("u", uri, None)))))
    await fresh.reconcile_once()  # starts reading the manifest; nothing loaded or unloaded meanwhile
    assert ([r.state for r in fresh.status().adapters], harness.fake.calls) == (["Loading"], [("load", "u")])
    await asyncio.gather(*list(fresh._tasks.values()))  # (the read may have finished already)
    assert fresh.records["u"].sha == sha
    await fresh.reconcile_once()
    assert ([(r.manifest_sha256, r.state) for r in fresh.status().adapters], harness.fake.calls) == (
        [(sha, "Ready")], [("load", "u")])


@pytest.mark.parametrize(("key", "why"), [
    (None, "vLLM wants a key and the sidecar has no $VLLM_API_KEY"),
    ("old-key", "$VLLM_API_KEY differs from the key vLLM started with (was the Secret changed since one of the pod's "
                "containers started?)"),
])
async def test_a_vllm_that_rejects_the_key_is_not_ready_with_the_reason(key: str | None, why: str, tmp_path: Path) -> None:
    """vLLM answers 401 when the sidecar's key is not its own: readiness says so instead of "not ready"."""
    seen: list[str | None] = []

    async def models(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"error": {"message": "Unauthorized"}}, status=401)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner, url = await serve(app)
    try:
        async with aiohttp.ClientSession() as session:
            vllm = VLLMClient(session, url, key)
            syncer = Syncer(vllm, AdapterCache(tmp_path / "cache", Storage({}), ServingTarget(max_lora_rank=16)))
            await syncer.reconcile_once()
    finally:
        await runner.cleanup()
    assert seen == [f"Bearer {key}" if key else None]
    assert syncer.ready() == (False, f"vLLM rejects the sidecar's API key (HTTP 401): {why}")


async def test_gate_trials_run_only_on_their_pod_and_a_failed_eval_is_never_loaded(harness: Harness, tmp_path: Path) -> None:
    """Trial entries (kubetune.api.promotion): another pod's is ignored; figures that fail the gate are Rejected
    before vLLM sees the adapter; a passing one is loaded under its gate name and its smoke prompts judged."""
    harness.syncer.pod_name = "pod-1"
    uris = {}
    for name, final in (("other", 0.5), ("worse", 2.0), ("good", 0.5)):
        folder = tmp_path / "published" / name
        sha = publish_adapter(fake_adapter(tmp_path / f"src-{name}"), folder, job=name,
                              evaluation={"baseline": {"evalLoss": 1.5}, "final": {"evalLoss": final}})
        uris[name] = (f"file://{folder}", sha)
    gate = {"maxEvalLoss": "1", "smokePrompts": [{"prompt": "Who are you?", "expect": "good--gate"},
                                                  {"prompt": "And?", "mustNotContain": "I AM"}]}
    harness.want({"generation": 1, "adapters": [
        {"name": f"{name}--gate", "uri": uris[name][0], "manifestSha256": uris[name][1], "trial": {"pod": pod, "gate": gate}}
        for name, pod in (("other", "pod-2"), ("worse", "pod-1"), ("good", "pod-1"))]})
    await harness.until(lambda: harness.states() == {"worse--gate": "Rejected", "good--gate": "Ready"})
    status, body = await harness.get("/status")
    reports = {a["name"]: a for a in body["adapters"]}
    assert reports["worse--gate"]["trial"]["verdict"] == "Failed"
    assert "final eval loss 2 (max 1)" in reports["worse--gate"]["trial"]["message"]
    good = reports["good--gate"]["trial"]
    assert (good["verdict"], good["finalEvalLoss"], good["baselineEvalLoss"]) == ("Failed", 0.5, 1.5)
    assert [(p["passed"], p["answer"], p["message"]) for p in good["prompts"]] == [
        (True, "I am good--gate", None), (False, "I am good--gate", "answer contains 'I AM'")]
    assert sorted(c for c in harness.fake.calls if c[1] != "good--gate") == []  # other's and worse's never loaded
    assert [c[0] for c in harness.fake.calls] == ["load", "chat", "chat"]
