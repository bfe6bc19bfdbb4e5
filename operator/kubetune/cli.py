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
    from .api.template import FineTuneTemplateSpec
    from .api.validation import SpecError, parse

    models = {"FineTuneJob": FineTuneJobSpec, "ModelDeployment": ModelDeploymentSpec, "FineTuneTemplate": FineTuneTemplateSpec}
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


def _local_missing(args: argparse.Namespace) -> int:
    print("kubetune local: the local tooling (API emulator, local kubelet) is not installed. It is its own package "
          "in the repository, kubetune-local: `make venv` installs it, or `pip install -e ./tools`.", file=sys.stderr)
    return 2


def _add_local(sub) -> None:
    """`kubetune local` comes from the kubetune-local package (tools/) when it is installed: the operator's
    package and image hold the operator only."""
    try:
        from kubetune_local.args import add_parser
    except ImportError:
        local = sub.add_parser("local", help="run manifests on this machine (needs kubetune-local: pip install -e ./tools)",
                               add_help=False)
        local.add_argument("rest", nargs=argparse.REMAINDER)
        local.set_defaults(func=_local_missing)
        return
    add_parser(sub)


def _data_validate(args: argparse.Namespace) -> int:
    try:
        from kubetune_trainer.validate_cli import run
    except ImportError as exc:
        print(f"kubetune data validate needs the trainer package (pip install -e '.[trainer]'): {exc}", file=sys.stderr)
        return 2
    return run(args)


def _add_data(sub) -> None:
    """`kubetune data validate`: the trainer's pre-flight check on local files (kubetune_trainer.validate_cli)."""
    data = sub.add_parser("data", help="check training data before training").add_subparsers(dest="data_command", required=True)
    validate = data.add_parser("validate", help="formats, counts, tokens, truncation, steps, GPU memory; exit 1 on errors")
    try:
        from kubetune_trainer.validate_cli import add_arguments
    except ImportError:
        validate.add_argument("rest", nargs=argparse.REMAINDER)
    else:
        add_arguments(validate)
    validate.set_defaults(func=_data_validate)


def _gateway(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .gateway.app import create_app
        from .gateway.settings import load_settings
    except ImportError as exc:
        print(f"kubetune gateway needs the gateway extra (pip install 'kubetune[gateway]'): {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(load_settings(args.config)), host=args.host, port=args.port,
                log_level="debug" if args.verbose else "info", proxy_headers=True)
    return 0


def _gateway_key(args: argparse.Namespace) -> int:
    from .gateway.tenancy import TenantLimits, key_secret, new_key

    limits = TenantLimits(max_concurrent_jobs=args.max_concurrent_jobs, max_gpus_per_job=args.max_gpus_per_job,
                          allowed_base_models=args.model or ["*"], allowed_methods=args.method or ["supervised", "dpo"])
    key = new_key()
    print(f"# API key for tenant {args.tenant} (shown once; the Secret below stores only its hash): {key}", file=sys.stderr)
    print(yaml.safe_dump(key_secret(key, args.tenant, limits, args.keys_namespace), sort_keys=False), end="")
    return 0


def _add_gateway(sub) -> None:
    """`kubetune gateway` (serve) and `kubetune gateway key` (make a tenant's API key Secret)."""
    gw = sub.add_parser("gateway", help="serve OpenAI's Files/Fine-tuning/Models/inference APIs (kubetune.gateway)")
    gw.add_argument("--config", default=None, help="settings YAML (default: $KUBETUNE_GATEWAY_CONFIG)")
    gw.add_argument("--host", default="0.0.0.0")
    gw.add_argument("--port", type=int, default=8080)
    gw.add_argument("-v", "--verbose", action="store_true")
    gw.set_defaults(func=_gateway)
    key = gw.add_subparsers(dest="gateway_command").add_parser(
        "key", help="print a new API key (stderr) and its Secret (stdout, for kubectl apply -f -)")
    key.add_argument("--tenant", required=True, help="the tenant's namespace")
    key.add_argument("--keys-namespace", default="kubetune-system", help="the gateway's namespace (settings.keysNamespace)")
    key.add_argument("--max-concurrent-jobs", type=int, default=2)
    key.add_argument("--max-gpus-per-job", type=int, default=1)
    key.add_argument("--model", action="append", help="allowed base model name (repeatable; default: all)")
    key.add_argument("--method", action="append", choices=["supervised", "dpo"], help="allowed method (repeatable)")
    key.set_defaults(func=_gateway_key)


def _usage(args: argparse.Namespace) -> int:
    """GPU-hours and trained tokens from FineTuneJob status, inference tokens from the gateway (kubetune.gateway.usage)."""
    import asyncio
    from datetime import datetime, timezone

    from .clients.kube import Kube
    from .gateway import usage

    now = datetime.now(timezone.utc)
    try:
        since = usage.parse_since(args.since, now) if args.since else None
    except ValueError as exc:
        print(f"kubetune usage: {exc}", file=sys.stderr)
        return 2
    where = f"/namespaces/{args.namespace}" if args.namespace else ""
    async def list_jobs() -> list:
        kube = Kube()
        try:
            return (await kube.request("GET", f"/apis/kubetune.io/v1alpha1{where}/finetunejobs")).get("items") or []
        finally:
            await kube.close()

    ftjs = asyncio.run(list_jobs())
    tokens: dict = {}
    note = ""
    if args.prometheus:
        tokens = usage.tokens_from_prometheus(args.prometheus, usage.prometheus_query(args.namespace, since, now))
    for url in args.gateway or []:
        for key, value in usage.tokens_from_exposition(urllib_get(url), args.namespace).items():
            tokens[key] = tokens.get(key, 0) + value
        if since is not None:
            note = "(inference tokens from --gateway are counted since each gateway replica started; use --prometheus for --since)"
    print(usage.format_table(usage.usage_rows(ftjs, tokens, since), note), end="")
    return 0


def urllib_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - an operator-given URL
        return response.read().decode()


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

    val = sub.add_parser("validate", help="validate FineTuneJob/ModelDeployment/FineTuneTemplate manifests offline")
    val.add_argument("files", nargs="+")
    val.set_defaults(func=_validate)

    from .importers.cli import add_parser as add_import

    add_import(sub)  # kubetune import llamafactory
    from .eval_cli import add_parser as add_eval

    add_eval(sub)  # kubetune eval report
    _add_local(sub)
    _add_data(sub)
    _add_gateway(sub)
    use = sub.add_parser("usage", help="GPU-hours, trained and inference tokens per tenant (namespace) and model")
    use.add_argument("-n", "--namespace", default=None, help="one tenant's namespace (default: all)")
    use.add_argument("--since", default=None, help="jobs finished since (30m, 24h, 7d or RFC 3339); running jobs always count")
    use.add_argument("--prometheus", default=None, help="Prometheus URL for inference tokens (over --since)")
    use.add_argument("--gateway", action="append", help="a gateway replica's /metrics URL (repeatable)")
    use.set_defaults(func=_usage)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
