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
# BUILD_OPTS      more options for `build`, e.g. --no-cache
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
if [[ "$engine" == podman ]]; then export CONTAINERS_CONF="${CONTAINERS_CONF:-$repo/images/containers.conf}"; fi

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
# Files and folders it names are mounted read-only under /tmp/kubetune-build (podman leaves empty mount
# points behind; there they sit under the emptyDir every pod mounts on /tmp); the settings, rewritten to
# those paths, become build arguments (PIP_* for pip, UV_* and SSL_CERT_FILE for uv) for the Dockerfiles
# that declare them. Build arguments are not part of an image's environment.
build_opts=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision")
# The same two labels again on the command line: podman 4.3 reuses a cached LABEL step of a multi-stage
# build (the trainer's) even when the REVISION build argument changed.
build_opts+=(--label "org.opencontainers.image.version=$version" --label "org.opencontainers.image.revision=$revision")
if [[ "$engine" == podman ]]; then build_opts+=(--network host); fi
stage=/tmp/kubetune-build
pip_setting() {  # the effective value of a pip option: environment, then install., then global.
    local listing; listing="$(python3 -m pip config list 2>/dev/null || true)"
    for scope in ":env:" install global; do
        local value; value="$(printf '%s\n' "$listing" | sed -n "s/^$scope\.$1='\(.*\)'\$/\1/p" | tail -1)"
        if [[ -n "$value" ]]; then printf '%s' "$value"; return 0; fi
    done
    return 0
}
mounts=()
index_args=()
pass() {  # pass NAME VALUE [UV_NAME]: each local path or file:// URL in VALUE is mounted and rewritten
    local value="" item path
    for item in $2; do
        path="${item#file://}"
        if [[ "$path" == /* && -e "$path" ]]; then
            local top="$path"
            if [[ "$top" == */simple ]]; then top="${top%/simple}"; fi  # the index's files/ lie beside simple/
            case " ${mounts[*]-} " in *" $top:$stage$top:ro "*) ;; *) mounts+=("$top:$stage$top:ro") ;; esac
            item="${item%%"$path"}$stage$path"
        fi
        value="${value:+$value }$item"
    done
    index_args+=("$1=$value")
    if [[ -n "${3:-}" ]]; then index_args+=("$3=$value"); fi
    return 0
}
cert="$(pip_setting cert)"; find_links="$(pip_setting find-links)"; index_url="$(pip_setting index-url)"
extra_index="$(pip_setting extra-index-url)"; constraint="$(pip_setting constraint)"
if [[ -n "$cert$find_links$index_url$extra_index$constraint" ]]; then
    if [[ "$engine" != podman ]]; then
        echo "warning: pip configuration found but $engine builds cannot mount it; building with plain PyPI" >&2
    else
        if [[ -n "$cert" ]]; then pass PIP_CERT "$cert" SSL_CERT_FILE; fi
        if [[ -n "$find_links" ]]; then pass PIP_FIND_LINKS "$find_links" UV_FIND_LINKS; fi
        if [[ -n "$index_url" ]]; then pass PIP_INDEX_URL "$index_url" UV_INDEX_URL; fi
        if [[ -n "$extra_index" ]]; then
            pass PIP_EXTRA_INDEX_URL "$extra_index" UV_EXTRA_INDEX_URL
            # pip takes the best match over all indexes; uv by default only the first index that has a package
            index_args+=(UV_INDEX_STRATEGY=unsafe-best-match)
        fi
        if [[ -n "$constraint" ]]; then pass PIP_CONSTRAINT "$constraint" UV_CONSTRAINT; fi
        for m in "${mounts[@]}"; do build_opts+=(-v "$m"); done
        echo "pip configuration passed to the build: ${index_args[*]}"
    fi
fi

# --- build ---------------------------------------------------------------------------------------
for image in $images; do
    args=()
    for arg in ${index_args[@]+"${index_args[@]}"}; do
        if grep -q "^ARG ${arg%%=*}\$" "$(dockerfile "$image")"; then args+=(--build-arg "$arg"); fi
    done
    if [[ "$local_base" == 1 ]]; then
        args+=(--build-arg "BASE_IMAGE=$base")
        if [[ "$image" == trainer ]]; then args+=(--build-arg "UV_IMAGE=localhost/kubetune-uv:$(default_arg trainer UV_IMAGE | sed 's/^[^:]*:\([0-9.]*\).*/\1/')"); fi
        if [[ "$image" == serving ]]; then args+=(--build-arg VLLM_FLAVOUR=cpu); fi
    fi
    echo "=== $registry/$image:$tag ($(dockerfile "$image")) ${args[*]-}"
    start=$SECONDS
    # shellcheck disable=SC2086
    "$engine" build "${build_opts[@]}" ${args[@]+"${args[@]}"} ${BUILD_OPTS:-} -f "$(dockerfile "$image")" -t "$registry/$image:$tag" .
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
