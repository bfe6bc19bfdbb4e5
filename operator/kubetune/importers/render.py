"""An imported manifest as YAML text: a header comment with every note (grouped by kind, each with its reason),
then the manifest. Strings that a YAML 1.2 reader (kubectl, the API server) would read as a number, boolean or
null are double-quoted, so "1e-4" stays a string on the way to the cluster."""

from __future__ import annotations

import re
import textwrap
from typing import Any

import yaml

from .build import KINDS, Note, show
from .llamafactory_keys import DEFAULT, OPERATOR, UNMAPPED

TITLES = {
    UNMAPPED: "Not carried over (no kubetune equivalent): review each",
    DEFAULT: "Defaults: where LLaMA-Factory's default differs from kubetune's",
    OPERATOR: "Handled by kubetune itself (nothing to carry over)",
}
# Plain scalars YAML 1.1 or 1.2 would read as something other than a string.
_NOT_A_STRING = re.compile(
    r"[-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)|0x[0-9a-fA-F]+|"
    r"0o[0-7]+|y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF|null|Null|NULL|~|")


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = '"' if _NOT_A_STRING.fullmatch(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(manifest: dict[str, Any]) -> str:
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def comment_block(notes: list[Note]) -> list[str]:
    """The notes as YAML comment lines, grouped by kind; the reason wrapped under its key."""
    lines: list[str] = []
    for kind in KINDS:
        group = [n for n in notes if n.kind == kind]
        if not group:
            continue
        lines += ["#", f"# {TITLES[kind]}:"]
        for note in group:
            lines.append(f"#   {note.key}: {show(note.value)}")
            lines += ["#       " + part for part in textwrap.wrap(note.reason, 104)]
    return lines


def render(manifest: dict[str, Any], notes: list[Note], source: str, tool: str = "llamafactory") -> str:
    name = manifest["metadata"]["name"]
    header = [
        f"# FineTuneJob {name}, imported from {source} by `kubetune import {tool}` (docs/migrate-llamafactory.md).",
        f"# {sum(n.kind == UNMAPPED for n in notes)} key(s) not carried over, listed below with the reason.",
        "# Check: kubetune validate FILE; run: kubectl apply -f FILE",
    ]
    return "\n".join(header + comment_block(notes)) + "\n" + dump(manifest)
