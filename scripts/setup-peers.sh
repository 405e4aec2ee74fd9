#!/usr/bin/env bash
# Installs the real MCP SDK test peers (tests/peers/, see tests/peers/README.md). Idempotent:
# a second run only compares lock-file hashes with markers and prints nothing.
#   tests/peers/.venv-mcp2       Python SDK 2.x  (tests/peers/requirements-mcp2.txt, full pin list)
#   tests/peers/.venv-mcp1       Python SDK 1.x  (tests/peers/requirements-mcp1.txt, full pin list)
#   tests/peers/node/node_modules  TypeScript SDK + oidc-provider + undici (npm ci of package-lock.json)
# Env: PYTHON (default python3, needs >= 3.11), PIP_FIND_LINKS (honoured by pip as usual).
# Exits non-zero with a message naming what failed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PEERS="$ROOT/tests/peers"
PYTHON="${PYTHON:-python3}"
log() { printf '[setup-peers] %s\n' "$*" >&2; }
die() {
  printf '[setup-peers] ERROR: %s\n' "$*" >&2
  exit 1
}
sha() { sha256sum "$@" | sha256sum | cut -c1-64; }

command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "$PYTHON is $("$PYTHON" -V 2>&1); the MCP Python SDK 2.x (httpx2) needs Python >= 3.11"
command -v node >/dev/null || die "node not found (need Node.js >= 20.18.1)"
command -v npm >/dev/null || die "npm not found"
node -e 'const [a,b,c]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&(b>18||(b==18&&c>=1)))?0:1)' ||
  die "node $(node --version) is too old; undici 7 needs >= 20.18.1"

# venv DIR REQUIREMENTS: (re)build the venv when the pin list or the interpreter changed.
venv() {
  local dir="$1" req="$2" want have
  want="$(sha "$req") $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
  have="$(cat "$dir/.peers-installed" 2>/dev/null || true)"
  if [[ "$want" == "$have" && -x "$dir/bin/python" ]] && "$dir/bin/python" -c 'import mcp' 2>/dev/null; then
    return 0
  fi
  log "installing $(basename "$dir") from $(basename "$req")"
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir" || die "python -m venv $dir failed (Debian: apt-get install python3-venv)"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req" ||
    die "pip install -r $req failed"
  "$dir/bin/python" -c 'import mcp, uvicorn, hypercorn, h2' || die "$dir: imports failed after install"
  printf '%s\n' "$want" >"$dir/.peers-installed"
}

venv "$PEERS/.venv-mcp2" "$PEERS/requirements-mcp2.txt"
venv "$PEERS/.venv-mcp1" "$PEERS/requirements-mcp1.txt"

NODE_DIR="$PEERS/node"
[[ -f "$NODE_DIR/package-lock.json" ]] || die "$NODE_DIR/package-lock.json missing"
want="$(sha "$NODE_DIR/package.json" "$NODE_DIR/package-lock.json") $(node --version)"
have="$(cat "$NODE_DIR/node_modules/.peers-installed" 2>/dev/null || true)"
if [[ "$want" != "$have" ]]; then
  log "npm ci in tests/peers/node"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>"$NODE_DIR/.npm-ci.log") ||
    die "npm ci failed in $NODE_DIR (see $NODE_DIR/.npm-ci.log)"
  rm -f "$NODE_DIR/.npm-ci.log"
  (cd "$NODE_DIR" && node -e "require.resolve('@modelcontextprotocol/sdk/package.json'); require.resolve('undici')") ||
    die "node_modules incomplete after npm ci"
  printf '%s\n' "$want" >"$NODE_DIR/node_modules/.peers-installed"
fi
