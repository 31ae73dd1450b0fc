#!/usr/bin/env bash
# Builds the offline test images `hodei/worker:test` and
# `hodei/worker:test-alt` (same content, /etc/hodei-image says which) FROM
# scratch with the static hodei-worker and Debian's busybox-static. Needs no
# registry: nothing is pulled.
#
# Usage: scripts/build-test-image.sh
#   Needs: docker, and busybox-static (apt-get install -y busybox-static)
#   for /bin/busybox (or BUSYBOX=/path/to/static/busybox).
#   Honours CARGO_TARGET_DIR. Prints the worker binary's absolute path on
#   its last line (the docker tests bind-mount it; export HODEI_DOCKER_WORKER_BINARY
#   to that path to be explicit).
set -euo pipefail

cd "$(dirname "$0")/.."
busybox=${BUSYBOX:-/bin/busybox}
if [ ! -x "$busybox" ]; then
    echo "error: no $busybox: apt-get install -y busybox-static (or set BUSYBOX)" >&2
    exit 1
fi
if command -v file >/dev/null && ! file -b "$busybox" | grep -q "static"; then
    echo "error: $busybox is not statically linked: apt-get install -y busybox-static" >&2
    exit 1
fi
worker=$(scripts/build-static-worker.sh target/static | tail -n 1)

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$busybox" "$context/busybox"
cp "$worker" "$context/hodei-worker"
cp docker/test/Dockerfile "$context/Dockerfile"

docker build -q -t hodei/worker:test --build-arg VARIANT=test "$context" >&2
docker build -q -t hodei/worker:test-alt --build-arg VARIANT=test-alt "$context" >&2
echo "built hodei/worker:test and hodei/worker:test-alt" >&2
echo "$worker"
