"""The `kubetune` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_CRDS = REPO_ROOT / "charts" / "kubetune" / "files" / "crds"


def _crds(args: argparse.Namespace) -> int:
    from .api.crd import all_crds, render

    # crds/ and the chart's verbatim copies (charts/kubetune/files/crds) are written together.
    outs = [Path(args.out)] + ([CHART_CRDS] if Path(args.out) == REPO_ROOT / "crds" and CHART_CRDS.parent.exists() else [])
    drift = []
    for filename, crd in all_crds().items():
        text = render(crd)
        for out in outs:
            path = out / filename
            if args.check:
                if not path.exists() or path.read_text() != text:
                    drift.append(str(path))
            else:
                out.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"wrote {path}")
    if drift:
        print("CRDs differ from the models (run `kubetune crds`): " + ", ".join(drift), file=sys.stderr)
        return 1
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .api.finetunejob import FineTuneJobSpec
    from .api.modeldeployment import ModelDeploymentSpec
    from .api.validation import SpecError, parse

    models = {"FineTuneJob": FineTuneJobSpec, "ModelDeployment": ModelDeploymentSpec}
    failed = 0
    for file in args.files:
        for doc in yaml.safe_load_all(Path(file).read_text()):
            if not isinstance(doc, dict) or doc.get("kind") not in models:
                continue
            name = (doc.get("metadata") or {}).get("name", "?")
            try:
                parse(models[doc["kind"]], doc.get("spec"))
                print(f"{file}: {doc['kind']}/{name}: valid")
            except SpecError as exc:
                failed += 1
                for problem in exc.problems:
                    print(f"{file}: {doc['kind']}/{name}: {problem}", file=sys.stderr)
    return 1 if failed else 0


def _operator(args: argparse.Namespace) -> int:
    import kopf

    from . import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace or [],
        liveness_endpoint=args.liveness,
    )
    return 0


def _local(args: argparse.Namespace) -> int:
    from .local.cli import main as local_main

    return local_main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetune", description="Fine-tuning and LoRA serving on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True)

    op = sub.add_parser("operator", help="run the operator (uses in-cluster config or $KUBECONFIG)")
    op.add_argument("-n", "--namespace", action="append", help="watch only this namespace (repeatable); default: all")
    op.add_argument("--liveness", default=None, help="health endpoint, e.g. http://0.0.0.0:8080/healthz")
    op.add_argument("-v", "--verbose", action="store_true")
    op.set_defaults(func=_operator)

    crds = sub.add_parser("crds", help="generate crds/*.yaml from the API models")
    crds.add_argument("--out", default=str(REPO_ROOT / "crds"))
    crds.add_argument("--check", action="store_true", help="fail if the files differ from the models")
    crds.set_defaults(func=_crds)

    val = sub.add_parser("validate", help="validate FineTuneJob/ModelDeployment manifests offline")
    val.add_argument("files", nargs="+")
    val.set_defaults(func=_validate)

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
    local.set_defaults(func=_local)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
