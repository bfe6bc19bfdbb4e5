#!/usr/bin/env bash
# The local bases for builds where no registry is reachable (kubetune's development machines):
#   localhost/kubetune-base:bookworm   Debian bookworm minbase + python3 (3.11), python3-venv, ca-certificates
#   localhost/kubetune-uv:<version>    uv's binaries at /uv and /uvx, like ghcr.io/astral-sh/uv
# Idempotent: an image that exists is kept (seconds). Remove it to rebuild:  podman rmi <image>
#
#   images/bootstrap-base.sh            (ENGINE=docker to import into docker instead of podman)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
engine="${ENGINE:-podman}"
base="${KUBETUNE_LOCAL_BASE:-localhost/kubetune-base:bookworm}"
uv_version="${UV_VERSION:-$(sed -n 's/^ARG UV_IMAGE=ghcr.io\/astral-sh\/uv:\([0-9.]*\).*/\1/p' "$here/../trainer-image/Dockerfile")}"
uv_image="${KUBETUNE_LOCAL_UV:-localhost/kubetune-uv:$uv_version}"
if [[ "$engine" == podman ]]; then export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"; fi

exists() {
    if [[ "$engine" == podman ]]; then podman image exists "$1"; else docker image inspect "$1" >/dev/null 2>&1; fi
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
env_changes=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'ENV LANG=C.UTF-8')

if exists "$base"; then
    echo "$base: exists"
else
    command -v mmdebstrap >/dev/null || { echo "mmdebstrap missing: apt-get install -y mmdebstrap" >&2; exit 1; }
    echo "$base: mmdebstrap bookworm (~40 s)"
    start=$SECONDS
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$tmp/base.tar"
    "$engine" import --quiet "${env_changes[@]}" --change 'CMD ["/bin/bash"]' "$tmp/base.tar" "$base" >/dev/null
    echo "$base: built in $((SECONDS - start)) s"
fi

if exists "$uv_image"; then
    echo "$uv_image: exists"
else
    # The same binaries as ghcr.io/astral-sh/uv:<version>, taken from uv's wheel on PyPI.
    python3 -m pip download --quiet --no-deps --only-binary :all: \
        -d "$tmp/whl" "uv==$uv_version"
    mkdir "$tmp/root"
    python3 - "$tmp/whl" "$tmp/root" <<'PY'
import os, sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("uv-*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if "/scripts/" in name and os.path.basename(name) in ("uv", "uvx"):
            target = pathlib.Path(sys.argv[2]) / os.path.basename(name)
            target.write_bytes(z.read(name))
            target.chmod(0o755)
PY
    [[ -x "$tmp/root/uv" ]] || { echo "no uv binary in $(ls "$tmp/whl")" >&2; exit 1; }
    tar -C "$tmp/root" -cf "$tmp/uv.tar" uv uvx
    "$engine" import --quiet "${env_changes[@]}" "$tmp/uv.tar" "$uv_image" >/dev/null
    echo "$uv_image: imported"
fi
