#!/usr/bin/env bash
# Builds the server image `hodei/server:latest` (docker/server/Dockerfile)
# FROM scratch with a fully static `hodei` (glibc with crt-static, as
# scripts/build-static-worker.sh builds the worker). Nothing is pulled.
#
# Usage: [REGISTRY=hodei] [VERSION=latest] [PUSH=true] scripts/build-server-image.sh
#   REGISTRY  image name prefix (default hodei: hodei/server:VERSION)
#   VERSION   tag (default latest)
#   PUSH      "true" pushes the tag after building
# Honours CARGO_TARGET_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."
REGISTRY=${REGISTRY:-"hodei"}
VERSION=${VERSION:-"latest"}
target=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-target}

RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p hodei-server --bin hodei --target "$target" >&2

built="$target_dir/$target/release/hodei"
if command -v file >/dev/null && ! file -b "$built" | grep -q "static"; then
    echo "error: $built is not statically linked: $(file -b "$built")" >&2
    exit 1
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$built" "$context/hodei"
strip "$context/hodei" 2>/dev/null || true
cp docker/server/Dockerfile "$context/Dockerfile"

image="$REGISTRY/server:$VERSION"
docker build -q -t "$image" "$context" >&2
echo "built $image" >&2
if [ "${PUSH:-}" = "true" ]; then
    docker push "$image"
fi
echo "$image"
