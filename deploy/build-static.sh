#!/usr/bin/env bash
# Builds the static craftmesh binary that deployments run (the FROM-scratch image and the
# systemd install): glibc linked in, no shared libraries mapped at run time, so an idle
# node stays at about 7 MB resident instead of about 8.5 MB for the dynamic build.
# Prints the binary's path on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
triple=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p craftmesh --bin craftmesh --features lean-logs --target "$triple" >&2
echo "${CARGO_TARGET_DIR:-target}/$triple/release/craftmesh"
