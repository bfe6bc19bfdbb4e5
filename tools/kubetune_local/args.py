"""The `kubetune local` subcommand's arguments. The operator's `kubetune` command registers them when this
package (kubetune-local, `tools/`) is installed; kept apart from cli.py so `kubetune operator` imports
nothing of the local tooling."""

from __future__ import annotations

import argparse
from typing import Any


def _run(args: argparse.Namespace) -> int:
    from .cli import main

    return main(args)


def add_parser(sub: Any) -> None:
    local = sub.add_parser("local", help="run manifests on this machine: emulator + operator + trainer/vLLM as processes")
    local_sub = local.add_subparsers(dest="local_command", required=True)
    run = local_sub.add_parser("run", help="execute FineTuneJob/ModelDeployment manifests locally")
    run.add_argument("-f", "--file", action="append", required=True, help="manifest file (repeatable)")
    run.add_argument("--map", action="append", metavar="PREFIX=TARGET",
                     help="rewrite URIs, e.g. hf://org/model=file:///models/model (repeatable)")
    run.add_argument("--pvc", action="append", metavar="CLAIM=DIR",
                     help="the folder that plays PersistentVolumeClaim CLAIM for pvc://CLAIM/... URIs "
                     "(repeatable; default <workdir>/pvcs/CLAIM)")
    run.add_argument("--ask", default=None, help="after serving, ask every model this question")
    run.add_argument("--serving-python", default=None, help="python of the vLLM venv (default .venv-serving)")
    quick = local_sub.add_parser("quickstart", help="the README's command 1: fine-tune, publish, serve, ask")
    for p in (run, quick):
        p.add_argument("--workdir", default=".kubetune", help="local state: storage, pod logs, models")
        p.add_argument("--timeout", type=float, default=1800, help="seconds per resource")
        p.add_argument("--serve", action="store_true",
                       help="keep the OpenAI endpoint (and everything behind it) up after the summary, until Ctrl-C")
        p.add_argument("--runtime", choices=("process", "podman"), default="process",
                       help="process (default): pods run as local processes; podman: the operator and every pod run as "
                       "containers of the built images (make images) under their security contexts (docs/images.md)")
    local.set_defaults(func=_run)
