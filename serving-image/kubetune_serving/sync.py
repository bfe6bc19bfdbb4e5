"""The adapter-sync sidecar: ``python -m kubetune_serving.sync --help``.

Every flag has an environment variable (flag wins). Also read from the environment: VLLM_API_KEY
(sent to vLLM as a Bearer token), KUBETUNE_S3_ENDPOINT / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_DEFAULT_REGION (s3://), KUBETUNE_PVC_ROOT (pvc://), KUBECONFIG (else in-cluster service account),
KUBETUNE_NAMESPACE (namespace of a ConfigMap given without one), KUBETUNE_POD_NAME (this pod: the desired set's
trial entries naming it are its to run, docs/promotion.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from kubetune.api import constants as c
from kubetune.api.admission import ServingTarget
from kubetune_storage import Storage

from .cache import AdapterCache
from .kubeapi import load_connection
from .server import make_app
from .sources import ConfigMapSource, FileSource
from .syncer import Syncer
from .vllm_client import VLLMClient

log = logging.getLogger("kubetune_serving.sync")

ENV = {  # flag -> environment variable
    "desired_file": "KUBETUNE_DESIRED_FILE",
    "desired_configmap": "KUBETUNE_DESIRED_CONFIGMAP",
    "desired_key": "KUBETUNE_DESIRED_KEY",
    "vllm_url": "KUBETUNE_VLLM_URL",
    "cache_dir": "KUBETUNE_ADAPTER_CACHE",
    "host": "KUBETUNE_SYNC_HOST",
    "port": "KUBETUNE_SYNC_PORT",
    "max_lora_rank": "KUBETUNE_MAX_LORA_RANK",
    "base_model_uri": "KUBETUNE_BASE_MODEL_URI",
    "base_model_revision": "KUBETUNE_BASE_MODEL_REVISION",
    "poll_interval": "KUBETUNE_SYNC_POLL_SECONDS",
    "retry_max": "KUBETUNE_SYNC_RETRY_MAX_SECONDS",
    "resolve_interval": "KUBETUNE_SYNC_RESOLVE_SECONDS",
}


@dataclass(frozen=True)
class SyncOptions:
    desired_file: Path | None
    desired_configmap: tuple[str | None, str] | None  # (namespace or None, name)
    desired_key: str
    vllm_url: str
    cache_dir: Path
    host: str
    port: int
    max_lora_rank: int
    base_model_uri: str | None
    base_model_revision: str | None
    poll_interval: float
    retry_max: float
    resolve_interval: float
    log_level: str


def parse_args(argv: Sequence[str], env: Mapping[str, str]) -> SyncOptions:
    def default(dest: str, fallback: object = None) -> object:
        return env.get(ENV[dest]) or fallback

    parser = argparse.ArgumentParser(prog="python -m kubetune_serving.sync", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("desired set (exactly one)")
    source.add_argument("--desired-file", type=Path, default=default("desired_file"),
                        help="local JSON file, polled [$KUBETUNE_DESIRED_FILE]")
    source.add_argument("--desired-configmap", metavar="[NAMESPACE/]NAME", default=default("desired_configmap"),
                        help="ConfigMap watched through the API [$KUBETUNE_DESIRED_CONFIGMAP]")
    source.add_argument("--desired-key", default=default("desired_key", c.DESIRED_ADAPTERS_KEY),
                        help=f"key in that ConfigMap (default {c.DESIRED_ADAPTERS_KEY}) [$KUBETUNE_DESIRED_KEY]")
    parser.add_argument("--vllm-url", default=default("vllm_url", f"http://127.0.0.1:{c.SERVING_VLLM_PORT}"),
                        help="vLLM's OpenAI server [$KUBETUNE_VLLM_URL]")
    parser.add_argument("--cache-dir", type=Path, default=default("cache_dir", c.ADAPTER_CACHE_DIR),
                        help="verified adapters; mounted at the same path in the vLLM container [$KUBETUNE_ADAPTER_CACHE]")
    parser.add_argument("--host", default=default("host", "0.0.0.0"), help="[$KUBETUNE_SYNC_HOST]")
    parser.add_argument("--port", type=int, default=default("port", c.SERVING_SYNC_PORT),
                        help="/healthz /readyz /status [$KUBETUNE_SYNC_PORT]")
    parser.add_argument("--max-lora-rank", type=int, default=default("max_lora_rank", 16),
                        help="reject adapters of a larger rank; = vLLM's --max-lora-rank [$KUBETUNE_MAX_LORA_RANK]")
    parser.add_argument("--base-model-uri", default=default("base_model_uri"),
                        help="reject adapters trained on another base model [$KUBETUNE_BASE_MODEL_URI]")
    parser.add_argument("--base-model-revision", default=default("base_model_revision"),
                        help="... or another revision of it [$KUBETUNE_BASE_MODEL_REVISION]")
    parser.add_argument("--poll-interval", type=float, default=default("poll_interval", 1.0),
                        help="seconds between checks of vLLM [$KUBETUNE_SYNC_POLL_SECONDS]")
    parser.add_argument("--retry-max", type=float, default=default("retry_max", 60.0),
                        help="longest retry backoff, seconds [$KUBETUNE_SYNC_RETRY_MAX_SECONDS]")
    parser.add_argument("--resolve-interval", type=float, default=default("resolve_interval", 10.0),
                        help="seconds between reads of an unpinned adapter's manifest.json (one GET each), to "
                             "follow re-publications [$KUBETUNE_SYNC_RESOLVE_SECONDS]")
    parser.add_argument("--log-level", default=env.get("KUBETUNE_LOG_LEVEL", "INFO"))
    args = parser.parse_args(list(argv))

    if (args.desired_file is None) == (args.desired_configmap is None):
        parser.error("give exactly one of --desired-file or --desired-configmap")
    configmap = None
    if args.desired_configmap:
        namespace, _, name = args.desired_configmap.rpartition("/")
        configmap = (namespace or None, name)
    if args.max_lora_rank < 1:
        parser.error(f"--max-lora-rank must be >= 1, got {args.max_lora_rank}")
    if float(args.resolve_interval) <= 0:
        parser.error(f"--resolve-interval must be > 0, got {args.resolve_interval}")
    return SyncOptions(
        desired_file=args.desired_file, desired_configmap=configmap, desired_key=args.desired_key,
        vllm_url=args.vllm_url, cache_dir=Path(args.cache_dir), host=args.host, port=int(args.port),
        max_lora_rank=int(args.max_lora_rank), base_model_uri=args.base_model_uri,
        base_model_revision=args.base_model_revision, poll_interval=float(args.poll_interval),
        retry_max=float(args.retry_max), resolve_interval=float(args.resolve_interval),
        log_level=args.log_level.upper(),
    )


def make_source(options: SyncOptions, env: Mapping[str, str]) -> FileSource | ConfigMapSource:
    if options.desired_file is not None:
        return FileSource(options.desired_file)
    namespace, name = options.desired_configmap  # type: ignore[misc]
    connection = load_connection(env)
    namespace = namespace or env.get(c.ENV_NAMESPACE) or connection.namespace
    if not namespace:
        raise SystemExit(f"--desired-configmap {name}: no namespace given and none in ${c.ENV_NAMESPACE}, "
                         "the kubeconfig context or the service account")
    return ConfigMapSource(connection, namespace, name, options.desired_key)


async def serve(options: SyncOptions, env: Mapping[str, str]) -> None:
    storage = Storage(env)
    cache = AdapterCache(options.cache_dir, storage, ServingTarget(options.max_lora_rank, options.base_model_uri,
                                                                   options.base_model_revision))
    source = make_source(options, env)
    async with aiohttp.ClientSession() as session:
        vllm = VLLMClient(session, options.vllm_url, env.get(c.ENV_VLLM_API_KEY) or None)
        syncer = Syncer(vllm, cache, poll_interval=options.poll_interval, retry_max=options.retry_max,
                        resolve_interval=options.resolve_interval, pod_name=env.get(c.ENV_POD_NAME) or None)
        runner = web.AppRunner(make_app(syncer), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, options.host, options.port).start()
        origin = getattr(source, "origin", None) or f"file {options.desired_file}"
        log.info("adapter sync: vLLM %s, cache %s, desired set from %s, serving :%d", options.vllm_url,
                 options.cache_dir, origin, options.port)
        try:
            await syncer.run(source.updates())
        finally:
            await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv, os.environ)
    logging.basicConfig(level=options.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

    async def run() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        try:
            await serve(options, os.environ)
        except asyncio.CancelledError:
            log.info("stopping")

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
