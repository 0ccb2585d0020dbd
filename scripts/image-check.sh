#!/usr/bin/env bash
# Builds docker/Dockerfile for real without a Docker engine: a Debian 12 minbase made by
# mmdebstrap (cached), imported into podman, then `podman build --isolation=chroot` of the
# runtime image and of its `smoke` stage, which starts the server inside the image and answers one
# Detect. Prints the image sizes. Too slow for CI (it compiles the project inside the build stage).
#
#   scripts/image-check.sh     env: ANOCLIP_IMAGE_CACHE (base tarball, default ~/.cache/anoclip-image)
#                                   ANOCLIP_REFERENCE_DIR (holds bpe_simple_vocab_16e6.txt.gz)
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in podman mmdebstrap; do
  if ! command -v "$tool" >/dev/null; then
    echo "image-check: installing $tool"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool"
  fi
done

CACHE=${ANOCLIP_IMAGE_CACHE:-$HOME/.cache/anoclip-image}
REFERENCE=${ANOCLIP_REFERENCE_DIR:-$(cd .. && pwd)/shared/reference}
BASE_TAR=$CACHE/bookworm-minbase.tar
BASE_IMAGE=localhost/debian:bookworm-local
mkdir -p "$CACHE"
test -f "$REFERENCE/bpe_simple_vocab_16e6.txt.gz" || { echo "image-check: no vocabulary in $REFERENCE"; exit 1; }

if [ ! -s "$BASE_TAR" ]; then
  echo "image-check: making $BASE_TAR"
  mmdebstrap --variant=minbase --format=tar bookworm "$BASE_TAR.part" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  mv "$BASE_TAR.part" "$BASE_TAR"
fi
if ! podman image exists "$BASE_IMAGE"; then
  podman import "$BASE_TAR" "$BASE_IMAGE"
fi

# The host's ccache, when there is one, turns most of the compile into cache hits (paths in it
# are relative to the source folder).
ccache_args=()
host_ccache=$(ccache -k cache_dir 2>/dev/null || true)
if [ -n "$host_ccache" ]; then
  mkdir -p "$host_ccache"
  ccache_args=(--volume "$host_ccache:/ccache" --build-arg CCACHE_DIR=/ccache)
fi

build() {  # target tag
  podman build --isolation=chroot --build-arg BASE="$BASE_IMAGE" "${ccache_args[@]}" \
    --build-context vocab="$REFERENCE" --target "$1" -t "$2" -f docker/Dockerfile .
}
start=$SECONDS
build runtime localhost/anoclip-serve:cpu
build smoke localhost/anoclip-serve:smoke
echo "image-check: smoke stage passed ($((SECONDS - start)) s for both builds)"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'anoclip-serve|bookworm-local'
size=$(podman image inspect localhost/anoclip-serve:cpu --format '{{.Size}}')
echo "image-check: runtime image localhost/anoclip-serve:cpu is $size bytes ($((size / 1000000)) MB, no model inside)"
limit=1200000000
[ "$size" -lt "$limit" ] || { echo "image-check: the runtime image is over 1.2 GB"; exit 1; }
