#!/usr/bin/env bash
# Pin the Dockerfiles' production bases by digest: every `ARG BASE_IMAGE=` / `ARG UV_IMAGE=` default
# `repo:tag` (or `repo:tag@sha256:old`) becomes `repo:tag@sha256:<the tag's current digest>`.
# Run it where the registries are reachable, review the diff, commit. docs/images.md, "Base digests".
#
#   images/pin-bases.sh [DOCKERFILE...]      (default: the three Dockerfiles)
#
# The digest is the tag's manifest-list (index) digest, so every platform keeps resolving. Resolver:
# $DIGEST_CMD if set (called with the reference `repo:tag`, prints `sha256:...`), else skopeo, else
# `docker buildx imagetools inspect`, else crane.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
files=("$@")
[[ ${#files[@]} -gt 0 ]] || files=("$repo/operator/Dockerfile" "$repo/trainer-image/Dockerfile" "$repo/serving-image/Dockerfile")

digest() {
    if [[ -n "${DIGEST_CMD:-}" ]]; then $DIGEST_CMD "$1"
    elif command -v skopeo >/dev/null; then skopeo inspect --raw "docker://$1" | sha256sum | sed 's/^\([0-9a-f]*\).*/sha256:\1/'
    elif command -v docker >/dev/null && docker buildx version >/dev/null 2>&1; then
        docker buildx imagetools inspect --format '{{json .Manifest.Digest}}' "$1" | tr -d '"'
    elif command -v crane >/dev/null; then crane digest "$1"
    else echo "no resolver: install skopeo, docker buildx or crane, or set DIGEST_CMD" >&2; return 1
    fi
}

for file in "${files[@]}"; do
    while IFS= read -r line; do
        name="${line%%=*}"; name="${name#ARG }"
        ref="${line#*=}"; ref="${ref%%@*}"
        [[ "$ref" == *:* ]] || { echo "$file: $name=$ref has no tag" >&2; exit 1; }
        sha="$(digest "$ref")"
        [[ "$sha" =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "$ref: resolver printed '$sha', not a sha256 digest" >&2; exit 1; }
        python3 - "$file" "$name" "$ref@$sha" <<'PY'
import re, sys
path, name, value = sys.argv[1:]
text = open(path).read()
new, n = re.subn(rf"^ARG {name}=\S+$", f"ARG {name}={value}", text, count=1, flags=re.M)
assert n == 1, (path, name)
open(path, "w").write(new)
PY
        echo "$(basename "$(dirname "$file")")/$(basename "$file"): $name=$ref@$sha"
    done < <(grep -E '^ARG (BASE_IMAGE|UV_IMAGE)=' "$file")
done
