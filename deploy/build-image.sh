#!/usr/bin/env bash
# Builds the static craftmesh binary and a FROM-scratch image around it.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-craftmesh:local}"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p craftmesh --target x86_64-unknown-linux-gnu
cp target/x86_64-unknown-linux-gnu/release/craftmesh deploy/craftmesh
trap 'rm -f deploy/craftmesh' EXIT
docker build -t "$tag" deploy/
echo "built $tag"
