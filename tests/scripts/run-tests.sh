#!/usr/bin/env bash
# The test command: sets up a fresh Debian machine (as root) and runs every test.
#
#   bash tests/scripts/run-tests.sh
#
# Idempotent and quick on re-runs: apt and pip run only when something is missing.
# Steps:
#   1. system packages the tests need (apt-get, only when missing)
#   2. $REPO/.venv with the MCP Python SDK and python-zeroconf (tests/fixtures/requirements.txt),
#      and $REPO/.venv-zen with the Zen MCP server from PyPI (tests/fixtures/requirements-zen.txt)
#   3. cargo build --workspace --bins (tests run the real target/debug/craftmesh)
#   4. cargo nextest run --workspace --no-fail-fast (or cargo test --workspace)
# Extra arguments go to nextest (or cargo test), e.g. `-E 'test(closed_port)'`.
# With CI=true, tests that lack a prerequisite (python MCP SDK, docker) fail instead of skipping.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }

# ---------------------------------------------------------------------------------------
step "1/4 system packages"
# What the tests use, as "command-or-check:package":
#   python3 + venv/ensurepip  -> the MCP fixture's virtualenv
#   cc + libc.a               -> linking craftmesh, and the static stub_http for the docker test
#   ip (iproute2)             -> the network-namespace rig (tests/src/netns/), as root
#   nft (nftables)            -> packet loss in that rig (Rig::set_loss)
#   avahi-daemon, avahi-browse, dbus-daemon, unshare
#                             -> DNS-SD interop with Avahi (tests/tests/mesh_avahi.rs); the
#                                daemon runs only inside a test namespace, never as a service
#   docker                    -> preinstalled and running (not installed here)
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
# Debian's python3 makes venvs with pip only when python3-venv is installed; try one for real.
if command -v python3 >/dev/null 2>&1 && [ ! -x "$REPO/.venv/bin/python" ]; then
    probe="$(mktemp -d)"
    python3 -m venv "$probe/venv" >/dev/null 2>&1 || missing+=(python3-venv)
    rm -rf "$probe"
fi
command -v cc >/dev/null 2>&1 || missing+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
# pgrep: the shared-server rig counts the MCP children on the machine
command -v pgrep >/dev/null 2>&1 || missing+=(procps)
command -v dbus-daemon >/dev/null 2>&1 || missing+=(dbus)
command -v avahi-daemon >/dev/null 2>&1 || [ -x /usr/sbin/avahi-daemon ] || missing+=(avahi-daemon)
command -v avahi-browse >/dev/null 2>&1 || missing+=(avahi-utils)
if [ "${#missing[@]}" -gt 0 ]; then
    info "installing: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: need root to install ${missing[*]} (or install them yourself)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # Packages must not start their services (avahi-daemon would send mDNS on the host's
    # real network): policy-rc.d refuses every start while apt runs.
    policy=/usr/sbin/policy-rc.d
    had_policy=0
    [ -e "$policy" ] && had_policy=1
    if [ "$had_policy" -eq 0 ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    if [ "$had_policy" -eq 0 ]; then
        rm -f "$policy"
        trap - EXIT
    fi
else
    info "all present (python3, python3-venv, cc, libc6-dev, iproute2, nftables, dbus, avahi)"
fi
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    info "docker: engine $(docker info --format '{{.ServerVersion}}') running"
else
    info "docker: not available (docker tests will skip, or fail when CI=true)"
fi

# ---------------------------------------------------------------------------------------
step "2/4 python venvs: the MCP SDK and zeroconf ($REPO/.venv), the Zen MCP server ($REPO/.venv-zen)"
# venv DIR REQUIREMENTS CHECK: makes the venv DIR when missing and pip-installs
# REQUIREMENTS (a path under the repo) into it unless the python snippet CHECK already
# succeeds there; then prints what CHECK prints.
venv() {
    local dir="$1" req="$2" check="$3"
    if [ ! -x "$dir/bin/python" ]; then
        info "creating $dir with $(python3 --version)"
        python3 -m venv "$dir"
    fi
    if "$dir/bin/python" -c "$check" >/dev/null 2>&1; then
        info "already installed in $dir: $("$dir/bin/python" -c "$check")"
    else
        info "pip install -r $req (into $dir)"
        "$dir/bin/python" -m pip install --disable-pip-version-check -q -r "$REPO/$req"
    fi
    info "import check: $("$dir/bin/python" -c "$check")"
}
venv "$REPO/.venv" tests/fixtures/requirements.txt \
    'import importlib.metadata as m; from mcp.server.fastmcp import FastMCP; import zeroconf; v = m.version("mcp"); assert v.split(".")[0] == "1", v; print("mcp", v, "zeroconf", zeroconf.__version__)'
export CRAFTMESH_TEST_PYTHON="$REPO/.venv/bin/python"
# The Zen MCP server from PyPI for the sharing test (tests/fixtures/ZEN.md), in a venv of
# its own: its wheel puts modules named server, config, tools... at the top of site-packages.
venv "$REPO/.venv-zen" tests/fixtures/requirements-zen.txt \
    'import importlib.metadata as m, os, sys; assert os.access(os.path.join(os.path.dirname(sys.executable), "zen-mcp-server"), os.X_OK); print("zen", m.version("iflow-mcp-zen-mcp-server"), "mcp", m.version("mcp"))'
export CRAFTMESH_TEST_ZEN="$REPO/.venv-zen/bin/zen-mcp-server"

# ---------------------------------------------------------------------------------------
step "3/4 lint (rustfmt, clippy -D warnings) and cargo build --workspace --bins"
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all --check
else
    info "rustfmt not installed: format check skipped"
fi
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets --quiet -- -D warnings
else
    info "clippy not installed: lint skipped"
fi
cargo build --workspace --bins
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$REPO/$TARGET_DIR" ;; esac
export CRAFTMESH_BIN="$TARGET_DIR/debug/craftmesh"
[ -x "$CRAFTMESH_BIN" ] || { echo "error: $CRAFTMESH_BIN was not built" >&2; exit 1; }
info "CRAFTMESH_BIN=$CRAFTMESH_BIN"
# The static binary the deployment image holds (tests/tests/deploy.rs), unoptimised and
# without debug info to keep the build and the image small.
RUSTFLAGS='-C target-feature=+crt-static -C debuginfo=0' \
    cargo build -p craftmesh --bin craftmesh --target x86_64-unknown-linux-gnu
export CRAFTMESH_STATIC_BIN="$TARGET_DIR/x86_64-unknown-linux-gnu/debug/craftmesh"
[ -x "$CRAFTMESH_STATIC_BIN" ] || { echo "error: $CRAFTMESH_STATIC_BIN was not built" >&2; exit 1; }
info "CRAFTMESH_STATIC_BIN=$CRAFTMESH_STATIC_BIN"
info "CRAFTMESH_TEST_PYTHON=$CRAFTMESH_TEST_PYTHON"
info "CRAFTMESH_TEST_ZEN=$CRAFTMESH_TEST_ZEN"
info "CI=${CI:-}"

# ---------------------------------------------------------------------------------------
if cargo nextest --version >/dev/null 2>&1; then
    # Slow runs (#[ignore = "slow"]) are included on purpose: CI is where they run.
    step "4/4 cargo nextest run --workspace --no-fail-fast --run-ignored all"
    cargo nextest run --workspace --no-fail-fast --run-ignored all --config-file "$REPO/tests/nextest.toml" "$@"
else
    step "4/4 cargo test --workspace --no-fail-fast (cargo-nextest not installed)"
    cargo test --workspace --no-fail-fast "$@" -- --include-ignored
fi
