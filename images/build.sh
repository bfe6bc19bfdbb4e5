#!/usr/bin/env bash
# Build the operator, trainer and serving images (`make images`; docs/images.md).
#
#   images/build.sh                    all three
#   IMAGES="operator trainer" images/build.sh
#
# ENGINE          podman (default where installed) or docker
# LOCAL_BASE      auto (default): the local Debian bases when the production base cannot be pulled;
#                 1: always; 0: never
# IMAGE_REGISTRY  ghcr.io/kubetune      IMAGE_TAG  the version in pyproject.toml
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
engine="${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}"
registry="${IMAGE_REGISTRY:-ghcr.io/kubetune}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"
tag="${IMAGE_TAG:-$version}"
images="${IMAGES:-operator trainer serving}"
local_base="${LOCAL_BASE:-auto}"
base="${KUBETUNE_LOCAL_BASE:-localhost/kubetune-base:bookworm}"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
[[ "$engine" == podman ]] && export CONTAINERS_CONF="${CONTAINERS_CONF:-$repo/images/containers.conf}"

dockerfile() { case "$1" in operator) echo operator/Dockerfile ;; *) echo "$1-image/Dockerfile" ;; esac; }
default_arg() { sed -n "s/^ARG $2=//p" "$(dockerfile "$1")" | head -1; }

# --- local base or production base -------------------------------------------------------------
if [[ "$local_base" == auto ]]; then
    probe="$(default_arg operator BASE_IMAGE)"
    if "$engine" image inspect "$probe" >/dev/null 2>&1 || timeout 60 "$engine" pull -q "$probe" >/dev/null 2>&1; then
        local_base=0
    else
        echo "cannot pull $probe: building on the local base $base"
        local_base=1
    fi
fi
if [[ "$local_base" == 1 ]]; then
    ENGINE="$engine" "$repo/images/bootstrap-base.sh"
fi

# --- the machine's pip configuration, for the build only ---------------------------------------
# Files and folders it names are mounted read-only at the same paths into the RUN steps, the settings
# become build arguments (PIP_* for pip, UV_* and SSL_CERT_FILE for uv). Nothing of it is in an image.
build_opts=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision")
[[ "$engine" == podman ]] && build_opts+=(--network host)
pip_setting() {  # the effective value of a pip option: environment, then install., then global.
    local listing; listing="$(python3 -m pip config list 2>/dev/null || true)"
    for scope in ":env:" install global; do
        local value; value="$(printf '%s\n' "$listing" | sed -n "s/^$scope\.$1='\(.*\)'\$/\1/p" | tail -1)"
        [[ -n "$value" ]] && { printf '%s' "$value"; return; }
    done
}
mounts=()
mount_path() {  # a local path or file:// URL -> a read-only volume at the same path
    local path="${1#file://}"
    [[ "$path" == /* && -e "$path" ]] || return 0
    [[ "$path" == */simple ]] && path="${path%/simple}"
    case " ${mounts[*]-} " in *" $path:$path:ro "*) return ;; esac
    mounts+=("$path:$path:ro")
}
pass() {  # build argument NAME=VALUE (+ uv's name for it)
    build_opts+=(--build-arg "$1=$2")
    [[ -n "${3:-}" ]] && build_opts+=(--build-arg "$3=$2")
    for item in $2; do mount_path "$item"; done
}
cert="$(pip_setting cert)"; find_links="$(pip_setting find-links)"; index_url="$(pip_setting index-url)"
extra_index="$(pip_setting extra-index-url)"; constraint="$(pip_setting constraint)"
if [[ -n "$cert$find_links$index_url$extra_index$constraint" ]]; then
    if [[ "$engine" != podman ]]; then
        echo "warning: pip configuration found but $engine builds cannot mount it; building with plain PyPI" >&2
    else
        [[ -n "$cert" ]] && pass PIP_CERT "$cert" SSL_CERT_FILE
        [[ -n "$find_links" ]] && pass PIP_FIND_LINKS "$find_links" UV_FIND_LINKS
        [[ -n "$index_url" ]] && pass PIP_INDEX_URL "$index_url" UV_INDEX_URL
        [[ -n "$extra_index" ]] && pass PIP_EXTRA_INDEX_URL "$extra_index" UV_EXTRA_INDEX_URL
        [[ -n "$constraint" ]] && pass PIP_CONSTRAINT "$constraint" UV_CONSTRAINT
        for m in "${mounts[@]}"; do build_opts+=(-v "$m"); done
        echo "pip configuration passed to the build: ${mounts[*]}"
    fi
fi

# --- build ---------------------------------------------------------------------------------------
for image in $images; do
    args=()
    if [[ "$local_base" == 1 ]]; then
        args+=(--build-arg "BASE_IMAGE=$base")
        [[ "$image" == trainer ]] && args+=(--build-arg "UV_IMAGE=localhost/kubetune-uv:$(default_arg trainer UV_IMAGE | sed 's/.*:\([0-9.]*\).*/\1/')")
        [[ "$image" == serving ]] && args+=(--build-arg VLLM_FLAVOUR=cpu)
    fi
    echo "=== $registry/$image:$tag ($(dockerfile "$image")) ${args[*]-}"
    start=$SECONDS
    "$engine" build "${build_opts[@]}" ${args[@]+"${args[@]}"} -f "$(dockerfile "$image")" -t "$registry/$image:$tag" .
    echo "=== $registry/$image:$tag built in $((SECONDS - start)) s"
done

# What tests/images/test_images.py checks (it runs when this file exists; .kubetune/ is git-ignored).
mkdir -p .kubetune/images
python3 - "$engine" "$registry" "$tag" "$revision" "$local_base" $images <<'PY'
import json, pathlib, sys
engine, registry, tag, revision, local_base, *names = sys.argv[1:]
stamp = pathlib.Path(".kubetune/images/built.json")
data = json.loads(stamp.read_text()) if stamp.exists() else {}
if data.get("engine") != engine:
    data = {}
data.update(engine=engine, revision=revision, localBase=local_base == "1")
data.setdefault("images", {}).update({name: f"{registry}/{name}:{tag}" for name in names})
stamp.write_text(json.dumps(data, indent=2) + "\n")
PY

echo
echo "image sizes:"
for image in $images; do
    printf '  %-40s %s\n' "$registry/$image:$tag" "$("$engine" image inspect --format '{{.Size}}' "$registry/$image:$tag" | awk '{printf "%.0f MB", $1/1e6}')"
done
