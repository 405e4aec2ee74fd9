#!/usr/bin/env bash
# Installs everything the interceptor needs to build and test on Debian 12 (idempotent).
#   - Debian's matched Rust toolchain for eBPF (rustc-web + rust-web-src + llvm-22-dev)
#   - bpf-linker 0.13.0 built against LLVM 22, installed into $CARGO_HOME/bin (on PATH)
#   - a rustup toolchain link "debian-web" to /usr, so aya-build can call it
#   - system tools the tests use (iproute2, sqlite3, ...)
# A second run only checks and takes seconds. Exits non-zero naming what is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
TOOLS="$CARGO_HOME"
mkdir -p "$TOOLS/bin"
log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

APT_PKGS=(rustc-web cargo-web rust-web-src llvm-22-dev iproute2 sqlite3 procps psmisc openssl curl util-linux)
missing=()
for p in "${APT_PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || die "apt-get update failed"
  $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi
[ -x /usr/bin/rustc ] || die "/usr/bin/rustc missing after installing rustc-web"
[ -d /usr/lib/rustlib/src/rust/library ] || die "rust-web-src missing (/usr/lib/rustlib/src/rust/library)"
[ -d /usr/lib/llvm-22 ] || die "llvm-22-dev missing (/usr/lib/llvm-22)"

BPF_LINKER="$TOOLS/bin/bpf-linker"
if ! [ -x "$BPF_LINKER" ] || ! "$BPF_LINKER" --version 2>/dev/null | grep -q '0.13.0'; then
  log "building bpf-linker 0.13.0 against LLVM 22 (about 70 s)"
  build_dir="$(mktemp -d)"
  LLVM_PREFIX=/usr/lib/llvm-22 RUSTC=/usr/bin/rustc CARGO_TARGET_DIR="$build_dir" \
    /usr/bin/cargo install bpf-linker@0.13.0 --locked --no-default-features --features llvm-22 \
    --root "$TOOLS" || die "bpf-linker build failed"
  rm -rf "$build_dir"
fi
"$BPF_LINKER" --version >/dev/null || die "bpf-linker does not run"

command -v cargo >/dev/null 2>&1 || die "cargo (rustup stable) is not on PATH"
if command -v rustup >/dev/null 2>&1; then
  if ! rustup toolchain list | grep -q '^debian-web'; then
    log "linking rustup toolchain debian-web -> /usr"
    rustup toolchain link debian-web /usr
  fi
fi
# Test peers: official MCP SDKs (Python 1.x/2.x, TypeScript) and oidc-provider.
if [ "${INTERCEPTOR_SKIP_PEERS:-0}" != 1 ]; then
  bash "$ROOT/scripts/setup-peers.sh" || die "installing the MCP test peers failed (scripts/setup-peers.sh)"
fi
case ":$PATH:" in *":$TOOLS/bin:"*) ;; *) log "note: add $TOOLS/bin to PATH (bpf-linker lives there)";; esac
log "toolchain ready: $(/usr/bin/rustc --version), $("$BPF_LINKER" --version)"
