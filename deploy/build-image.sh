#!/usr/bin/env bash
# Builds the static craftmesh binary and a FROM-scratch image around it.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-craftmesh:local}"
bin="$(bash deploy/build-static.sh | tail -n 1)"
cp "$bin" deploy/craftmesh
trap 'rm -f deploy/craftmesh' EXIT
docker build -t "$tag" deploy/
echo "built $tag"
