"""The three Dockerfiles and the build scripts, without an engine: the production bases are the build
arguments' defaults, build-only settings stay out of the images, labels, layer order, digest pinning.
What the built images do is tests/images/test_images.py."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"operator": REPO / "operator/Dockerfile", "trainer": REPO / "trainer-image/Dockerfile",
               "serving": REPO / "serving-image/Dockerfile"}
PRODUCTION_BASES = {"operator": r"python:3\.11[0-9.]*-slim-bookworm", "trainer": r"nvidia/cuda:[0-9.]+-base-ubuntu[0-9.]+",
                    "serving": r"vllm/vllm-openai:v[0-9.]+"}
DIGEST = r"(@sha256:[0-9a-f]{64})?"
BUILD_ONLY = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT", "PIP_CONSTRAINT",
              "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS", "UV_CONSTRAINT", "UV_INDEX_STRATEGY", "SSL_CERT_FILE")


def steps(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    return [(p[0].upper(), p[1] if len(p) > 1 else "") for p in (l.strip().split(None, 1) for l in text.splitlines() if l.strip())]


def version() -> str:
    return re.search(r'^version = "(.*)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


@pytest.mark.parametrize("image", DOCKERFILES)
def test_base_is_a_build_argument_whose_default_is_production(image):
    s = steps(DOCKERFILES[image])
    assert s[0][0] == "ARG" and s[0][1].startswith("BASE_IMAGE=")  # global: usable in FROM
    assert re.fullmatch(PRODUCTION_BASES[image] + DIGEST, s[0][1].removeprefix("BASE_IMAGE="))
    assert [a for op, a in s if op == "FROM"][-1] == "${BASE_IMAGE}"


@pytest.mark.parametrize("image", DOCKERFILES)
def test_build_only_settings_are_arguments_without_defaults_and_never_env(image):
    s = steps(DOCKERFILES[image])
    declared = {a for op, a in s if op == "ARG"}
    env = " ".join(a for op, a in s if op == "ENV")
    assert any(name in declared for name in BUILD_ONLY)
    for name in BUILD_ONLY:
        assert not any(a.startswith(f"{name}=") for a in declared), f"{name} has a default"
        assert name not in env
    # caches: mounts that never land in a layer, and no setting that would put them into the image
    for op, a in s:
        if op == "RUN" and re.search(r"\b(pip|uv pip) install\b", a) and "--no-deps" not in a:
            assert a.startswith("--mount=type=cache,target=/root/.cache/"), a
    assert "NO_CACHE" not in env


@pytest.mark.parametrize("image", DOCKERFILES)
def test_oci_labels(image):
    s = steps(DOCKERFILES[image])
    labels = " ".join(a for op, a in s if op == "LABEL")
    found = dict(re.findall(r'org\.opencontainers\.image\.([a-z]+)="([^"]*)"', labels))
    assert found == {"title": f"kubetune-{image}", "description": found["description"],
                     "source": "https://github.com/kubetune/kubetune", "version": "${VERSION}",
                     "revision": "${REVISION}", "licenses": "Apache-2.0"}
    assert ("ARG", f"VERSION={version()}") in s and ("ARG", "REVISION=unknown") in s
    # labels come last: a new revision rebuilds no layer
    assert all(op in ("ARG", "LABEL", "ENTRYPOINT", "CMD", "EXPOSE", "USER", "WORKDIR") for op, _ in
               s[max(i for i, (op, _) in enumerate(s) if op in ("RUN", "COPY")) + 1:])


@pytest.mark.parametrize("image", DOCKERFILES)
def test_dependencies_before_code_and_non_root(image):
    s = steps(DOCKERFILES[image])
    copies = [a.split()[:-1] for op, a in s if op == "COPY" and not a.startswith("--from")]
    code = [i for i, sources in enumerate(copies) if any("kubetune" in src for src in sources)]
    deps = [i for i, sources in enumerate(copies) if any(src.endswith((".txt", ".toml")) for src in sources)]
    assert deps and code and max(deps) < min(code), copies
    assert [a for op, a in s if op == "USER"] == ["1000:1000"]
    assert "useradd --no-log-init --uid 1000" in " ".join(a for op, a in s if op == "RUN")
    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), source


def test_operator_image_installs_the_operator_extra_only():
    run = " ".join(a for op, a in steps(DOCKERFILES["operator"]) if op == "RUN")
    assert '["optional-dependencies"]["operator"]' in run and "trainer" not in run and "torch" not in run


def test_build_context_is_what_the_dockerfiles_copy():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*" and "**/__pycache__" in ignore
    allowed = [l[1:] for l in ignore if l.startswith("!")]
    for path in DOCKERFILES.values():
        for op, a in steps(path):
            if op == "COPY" and not a.startswith("--from"):
                for source in a.split()[:-1]:
                    assert any(source == x or source.startswith(x + "/") or x.startswith(source + "/") for x in allowed), source


def test_scripts_are_executable_and_parse():
    for name in ("build.sh", "bootstrap-base.sh", "pin-bases.sh"):
        path = REPO / "images" / name
        assert path.stat().st_mode & stat.S_IXUSR, name
        subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)
    conf = (REPO / "images/containers.conf").read_text()
    for line in ('default_ulimits = []', 'runtime = "runc"', 'cgroup_manager = "cgroupfs"'):
        assert line in conf


def test_pin_bases_pins_every_production_base_by_digest(tmp_path):
    """images/pin-bases.sh with a stand-in resolver: each BASE_IMAGE/UV_IMAGE default becomes
    tag@digest, a second run replaces the digest (refresh), nothing else in the file changes."""
    fake = tmp_path / "resolve"
    fake.write_text('#!/bin/sh\nprintf "sha256:%s" "$(printf %s "$1$SALT" | sha256sum | cut -c1-64)"\n')
    fake.chmod(0o755)
    copies = {name: tmp_path / f"{name}.Dockerfile" for name in DOCKERFILES}
    for name, path in copies.items():
        path.write_text(DOCKERFILES[name].read_text())

    def pin(salt: str) -> None:
        subprocess.run(["bash", str(REPO / "images/pin-bases.sh"), *map(str, copies.values())], check=True,
                       timeout=60, capture_output=True, env={"PATH": "/usr/bin:/bin", "DIGEST_CMD": str(fake), "SALT": salt})

    pin("1")
    first = {name: path.read_text() for name, path in copies.items()}
    pin("2")
    for name, path in copies.items():
        original = DOCKERFILES[name].read_text().splitlines()
        pinned = path.read_text().splitlines()
        changed = [(a, b) for a, b in zip(original, pinned) if a != b]
        assert len(original) == len(pinned) and changed
        for before, after in changed:
            assert re.fullmatch(r"ARG (BASE_IMAGE|UV_IMAGE)=\S+:[^@\s]+@sha256:[0-9a-f]{64}", after)
            assert after.split("@")[0] == before.split("@")[0]
        assert first[name] != path.read_text()  # refreshed, not appended
