#!/usr/bin/env bash
# Builds the Hodei worker images (docker/*/Dockerfile), each with the static
# hodei-worker from scripts/build-static-worker.sh and docker/base/entrypoint.sh.
#
# Usage: [REGISTRY=hodei] [VERSION=latest] [PUSH=true] scripts/build-images.sh
#   REGISTRY  image name prefix (default hodei: hodei/worker:...)
#   VERSION   tag suffix (default latest)
#   PUSH      "true" pushes every tag after building
#
# Tags, as the built-in templates name them:
#   $REGISTRY/worker:base-$VERSION         and :base, :$VERSION (the image the
#                                          Kubernetes backend's init container
#                                          copies the worker from)
#   $REGISTRY/worker:java-maven-$VERSION   and :java-maven-latest
#   $REGISTRY/worker:node-18-$VERSION      and :node-18-latest
#   $REGISTRY/worker:docker-dind-$VERSION  and :docker-dind-latest
#   $REGISTRY/worker:python-3.11-$VERSION  and :python-3.11-latest
#   $REGISTRY/worker:go-1.21-$VERSION      and :go-1.21-latest
# The base images (debian, node, docker, python, golang) are pulled from
# their registry; for an offline test image see scripts/build-test-image.sh.
set -euo pipefail

cd "$(dirname "$0")/.."
REGISTRY=${REGISTRY:-"hodei"}
VERSION=${VERSION:-"latest"}

echo "Building the static worker..."
worker=$(scripts/build-static-worker.sh target/static | tail -n 1)

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT

# build NAME TAG [docker build args...]: builds docker/NAME with a context
# holding its files, the worker and the common entrypoint.
build() {
    local name=$1 tag=$2
    shift 2
    local context="$workdir/$name"
    mkdir -p "$context"
    cp -R "docker/$name/." "$context/"
    cp docker/base/entrypoint.sh "$context/entrypoint.sh"
    cp "$worker" "$context/hodei-worker"
    docker build -t "$REGISTRY/worker:$tag-$VERSION" "$@" "$context"
}

echo "Building Hodei Worker Images..."
echo "Building base worker image..."
build base base
docker tag "$REGISTRY/worker:base-$VERSION" "$REGISTRY/worker:base"
docker tag "$REGISTRY/worker:base-$VERSION" "$REGISTRY/worker:$VERSION"

echo "Building Java Maven worker image..."
build java-maven java-maven --build-arg "BASE=$REGISTRY/worker:base-$VERSION"
docker tag "$REGISTRY/worker:java-maven-$VERSION" "$REGISTRY/worker:java-maven-latest"

echo "Building Node.js worker image..."
build node-npm node-18
docker tag "$REGISTRY/worker:node-18-$VERSION" "$REGISTRY/worker:node-18-latest"

echo "Building Docker-in-Docker worker image..."
build docker-dind docker-dind
docker tag "$REGISTRY/worker:docker-dind-$VERSION" "$REGISTRY/worker:docker-dind-latest"

echo "Building Python worker image..."
build python-pip python-3.11
docker tag "$REGISTRY/worker:python-3.11-$VERSION" "$REGISTRY/worker:python-3.11-latest"

echo "Building Go worker image..."
build go-build go-1.21
docker tag "$REGISTRY/worker:go-1.21-$VERSION" "$REGISTRY/worker:go-1.21-latest"

echo "All images built successfully!"

if [ "${PUSH:-}" = "true" ]; then
    echo "Pushing images to registry..."
    for image in base java-maven node-18 docker-dind python-3.11 go-1.21; do
        docker push "$REGISTRY/worker:$image-$VERSION"
    done
    docker push "$REGISTRY/worker:base"
    docker push "$REGISTRY/worker:$VERSION"
    for image in java-maven node-18 docker-dind python-3.11 go-1.21; do
        docker push "$REGISTRY/worker:$image-latest"
    done
    echo "Images pushed successfully!"
fi
