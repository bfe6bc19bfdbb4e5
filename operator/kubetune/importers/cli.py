"""`kubetune import llamafactory TRAIN.yaml`: read the files, convert, write the manifest, list every note on
stderr. Exit 0 with a manifest (notes or not), 1 when the config cannot become a FineTuneJob."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

from .build import KINDS, ImportProblem
from .llamafactory_keys import UNMAPPED

LABELS = {UNMAPPED: "not carried over", "default": "default", "operator": "handled by kubetune"}


def add_parser(sub) -> None:
    imp = sub.add_parser("import", help="write a FineTuneJob manifest from another tool's training config")
    tools = imp.add_subparsers(dest="tool", required=True)
    lf = tools.add_parser(
        "llamafactory", help="from a LLaMA-Factory training YAML (docs/migrate-llamafactory.md)",
        description="Write a FineTuneJob from a LLaMA-Factory training YAML. Keys that cannot be carried over are "
        "listed with the reason on stderr and in a comment block of the manifest.")
    lf.add_argument("config", help="the LLaMA-Factory training YAML (as given to `llamafactory-cli train`)")
    lf.add_argument("--dataset-info", help="LLaMA-Factory's dataset_info.json. Default: <dataset_dir>/dataset_info.json "
                    "from the config (data/ relative to this directory, as LLaMA-Factory reads it) if it exists")
    lf.add_argument("--data-uri-prefix", help="where LLaMA-Factory's data folder was uploaded, e.g. "
                    "s3://bucket/llamafactory-data: each dataset's file_name is read under it")
    lf.add_argument("--model-uri", help="the base model's URI when model_name_or_path is a local folder, e.g. "
                    "s3://models/llama3-8b or pvc://models/llama3-8b")
    lf.add_argument("--name", help="the FineTuneJob's name. Default: from the config's file name")
    lf.add_argument("-o", "--output", help="write the manifest here (default: stdout)")
    lf.set_defaults(func=_llamafactory)


def _name(path: Path) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", path.stem.lower()).strip("-")[:63].strip("-")
    return name or "imported"


def _load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ImportProblem([f"{where}: not valid YAML: {exc.problem}"]) from None


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ImportProblem([f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}"]) from None


def _llamafactory(args: argparse.Namespace) -> int:
    from .llamafactory import convert
    from .render import render

    source = Path(args.config)
    try:
        if not source.is_file():
            raise ImportProblem([f"{source}: no such file"])
        config = _load_yaml(source)
        info_path = Path(args.dataset_info) if args.dataset_info else None
        if info_path is None and isinstance(config, dict) and config.get("dataset_dir") != "ONLINE":
            guess = Path(str(config.get("dataset_dir") or "data")) / "dataset_info.json"
            if guess.is_file():
                info_path = guess
                print(f"{source}: reading datasets from {guess} (dataset_dir)", file=sys.stderr)
        if info_path is not None and not info_path.is_file():
            raise ImportProblem([f"{info_path}: no such file"])
        info = _load_json(info_path) if info_path else None
        if info is not None and not isinstance(info, dict):
            raise ImportProblem([f"{info_path}: must be an object of dataset names"])
        result = convert(config, info, name=args.name or _name(source), data_uri_prefix=args.data_uri_prefix,
                         model_uri=args.model_uri, is_local_path=lambda p: Path(p).expanduser().is_dir())
    except ImportProblem as exc:
        for problem in exc.problems:
            print(f"{source}: {problem}", file=sys.stderr)
        return 1
    for note in sorted(result.notes, key=lambda n: KINDS.index(n.kind)):
        print(f"{source}: {LABELS.get(note.kind, note.kind)}: {note.line()}", file=sys.stderr)
    text = render(result.manifest, result.notes, source.name)
    if args.output:
        Path(args.output).write_text(text)
        unmapped = len(result.of_kind(UNMAPPED))
        print(f"wrote {args.output}: FineTuneJob/{result.manifest['metadata']['name']} ({unmapped} key(s) not "
              "carried over, listed above and in the file)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
