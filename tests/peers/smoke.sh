#!/usr/bin/env bash
# Smoke test of the MCP test peers, directly (no interceptor): every server variant on a loopback
# port, every client that speaks its transport, `--scenario basic`, plain HTTP and TLS, plus the
# HTTP/2 variants. Prints one line per pair and a summary; exits non-zero if any pair failed.
#   tests/peers/smoke.sh            # full matrix (~1-2 min)
#   tests/peers/smoke.sh --quick    # plain HTTP only
# Needs scripts/setup-peers.sh to have run, and openssl (for the throwaway CA).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY2="$HERE/.venv-mcp2/bin/python"
PY1="$HERE/.venv-mcp1/bin/python"
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1

for f in "$PY2" "$PY1" "$HERE/node/node_modules/@modelcontextprotocol/sdk/package.json"; do
  [[ -e "$f" ]] || { echo "smoke: missing $f (run scripts/setup-peers.sh)" >&2; exit 2; }
done

WORK="$(mktemp -d /tmp/mcp-peers-smoke.XXXXXX)"
SERVER_PID=""
cleanup() {
  [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# ---- throwaway CA + server certificate for 127.0.0.1 / localhost ----------------------------------
make_certs() {
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=peers smoke CA" \
    -keyout "$WORK/ca.key" -out "$WORK/ca.pem" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1 &&
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$WORK/srv.key" -out "$WORK/srv.csr" \
      >/dev/null 2>&1 &&
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$WORK/ext" &&
    openssl x509 -req -in "$WORK/srv.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 2 \
      -extfile "$WORK/ext" -out "$WORK/srv.pem" >/dev/null 2>&1
}

# ---- server lifecycle -----------------------------------------------------------------------------
SERVER_URL=""
NSERVER=0
start_server() { # name cmd...  -> sets SERVER_PID, SERVER_URL
  local name="$1"
  shift
  NSERVER=$((NSERVER + 1))
  local out="$WORK/server$NSERVER.out" err="$WORK/server$NSERVER.err"
  "$@" >"$out" 2>"$err" &
  SERVER_PID=$!
  for _ in $(seq 1 200); do
    if grep -q '^READY ' "$out" 2>/dev/null; then
      SERVER_URL="$(sed -n 's/^READY //p' "$out" | head -1)"
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "  server $name did not print READY; stderr:" >&2
  tail -5 "$err" >&2
  kill "$SERVER_PID" 2>/dev/null
  SERVER_PID=""
  return 1
}

stop_server() { # -> 0 if it exited 0 on SIGTERM within 5s
  local pid="$SERVER_PID" rc
  SERVER_PID=""
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 1
  fi
  wait "$pid"
  rc=$?
  return "$rc"
}

# ---- checks ---------------------------------------------------------------------------------------
PASS=0
FAIL=0
XFAIL=0
FAILED=()
# Known incompatibilities between real SDK stacks (see README "Findings"): reported as XFAIL, not
# counted as failures; an XPASS means the finding no longer holds and the README needs an update.
KNOWN_BAD=(
  "node/server streamable-http h2 <- py2 *" # httpx2/httpcore2 h2 + node:http2: POST stalls while GET stream open
  "node/server streamable-http h2 <- py1 *" # httpx/httpcore h2 + node:http2: same
)
record() { # label ok detail
  local known=0 k
  for k in "${KNOWN_BAD[@]}"; do [[ "$1" == $k ]] && known=1; done
  if [[ $known == 1 ]]; then
    if [[ "$2" == 0 ]]; then
      FAIL=$((FAIL + 1))
      FAILED+=("$1 (XPASS: known incompatibility is gone, update README)")
      printf 'XPASS %-58s %s\n' "$1" "$3"
    else
      XFAIL=$((XFAIL + 1))
      printf 'XFAIL %-58s %s\n' "$1" "$3"
    fi
  elif [[ "$2" == 0 ]]; then
    PASS=$((PASS + 1))
    printf 'PASS  %-58s %s\n' "$1" "$3"
  else
    FAIL=$((FAIL + 1))
    FAILED+=("$1")
    printf 'FAIL  %-58s %s\n' "$1" "$3"
  fi
}

# Validates a basic-scenario JSON document; prints "<protocol> <http versions>" or the problem.
CHECK_BASIC='
import json, sys
want_h2 = sys.argv[1] == "h2"
try:
    d = json.load(sys.stdin)
except Exception as e:
    print("no JSON on stdout:", e); sys.exit(1)
def text(r): return "".join(c.get("text", "") for c in r["content"]) if "content" in r else "".join(c.get("text", "") for c in r["contents"])
try:
    assert d.get("ok") is True, d.get("error")
    names = sorted(t["name"] for t in d["tools"])
    assert names == sorted(["add","big_result","customer_lookup","echo","export_customers","fail","fail_rpc","slow_progress"]), names
    assert text(d["echo"]).startswith("hello from "), d["echo"]
    assert text(d["add"]) == "5", d["add"]
    assert "dpo@crm.example.com" in text(d["readme"]), d["readme"]
    assert "GB82WEST12345698765432" in text(d["customer_resource"]), d["customer_resource"]
    assert [t["uriTemplate"] for t in d["resource_templates"]] == ["customers://{id}"], d["resource_templates"]
    assert "jane.doe@example.com" in d["prompt"]["messages"][0]["content"]["text"], d["prompt"]
    hv = d.get("http_versions")
    if want_h2 and hv is not None:
        assert hv == ["HTTP/2"], f"expected HTTP/2, got {hv}"
except Exception as e:
    print("bad result:", repr(e)[:300]); sys.exit(1)
print(d["protocol_version"], "http=" + (",".join(d["http_versions"]) if d.get("http_versions") else "?"))
'

run_client() { # label client-kind url transport [extra args...]
  local label="$1" kind="$2" url="$3" transport="$4"
  shift 4
  local want="h1" out rc detail
  for a in "$@"; do [[ "$a" == "--http2" ]] && want="h2"; done
  case "$kind" in
    py2) out="$(timeout 60 "$PY2" "$HERE/py2_client.py" --url "$url" --transport "$transport" "$@" 2>"$WORK/client.err")" ;;
    py1) out="$(timeout 60 "$PY1" "$HERE/py1_client.py" --url "$url" --transport "$transport" "$@" 2>"$WORK/client.err")" ;;
    node) out="$(timeout 60 node "$HERE/node/client.mjs" --url "$url" --transport "$transport" "$@" 2>"$WORK/client.err")" ;;
  esac
  rc=$?
  detail="$(printf '%s' "$out" | python3 -c "$CHECK_BASIC" "$want")"
  local ok=$?
  [[ $rc -ne 0 && $ok -eq 0 ]] && { ok=1; detail="client exit $rc: $detail"; }
  record "$label" "$ok" "$detail"
}

# server_variant label transport server-cmd...   then the clients that speak that transport
matrix() { # tag(plain|tls|h2) label transport clients(space list) -- server cmd...
  local tag="$1" label="$2" transport="$3" clients="$4"
  shift 5
  local extra=()
  [[ "$tag" != plain ]] && extra+=(--cacert "$WORK/ca.pem")
  if ! start_server "$label" "$@"; then
    record "$label (server start)" 1 "no READY"
    return
  fi
  for c in $clients; do
    local cextra=("${extra[@]}")
    [[ "$tag" == h2 && "$c" != node ]] && cextra+=(--http2)
    [[ "$tag" == h2 && "$c" == node ]] && cextra+=(--http2)
    [[ "$c" == py2 && "$transport" == streamable-http ]] && cextra+=(--mode auto)
    run_client "$label <- $c${cextra[*]:+ ${cextra[*]//$WORK\//}}" "$c" "$SERVER_URL" "$transport" "${cextra[@]}" --timeout 10 --header "Authorization: Bearer smoke-token"
  done
  if stop_server; then record "$label: SIGTERM -> exit 0" 0 ""; else record "$label: SIGTERM -> exit 0" 1 "unclean exit"; fi
}

ALL="py2 py1 node"
variants() { # tag
  local tag="$1" t=()
  [[ "$tag" != plain ]] && t=(--certfile "$WORK/srv.pem" --keyfile "$WORK/srv.key")
  local hc=()
  [[ "$tag" == h2 ]] && hc=(--http-server hypercorn)
  matrix "$tag" "py2_server streamable-http $tag" streamable-http "$ALL" -- "$PY2" "$HERE/py2_server.py" --port 0 "${t[@]}" "${hc[@]}"
  [[ "$tag" == h2 ]] && {
    matrix "$tag" "node/server streamable-http $tag" streamable-http "$ALL" -- node "$HERE/node/server.mjs" --port 0 --http2 "${t[@]}"
    matrix "$tag" "py1_server streamable-http $tag" streamable-http "$ALL" -- "$PY1" "$HERE/py1_server.py" --port 0 "${t[@]}" "${hc[@]}"
    return
  }
  matrix "$tag" "py2_server streamable-http --json-response $tag" streamable-http "$ALL" -- "$PY2" "$HERE/py2_server.py" --port 0 --json-response "${t[@]}"
  matrix "$tag" "py2_server streamable-http --stateless $tag" streamable-http "$ALL" -- "$PY2" "$HERE/py2_server.py" --port 0 --stateless "${t[@]}"
  matrix "$tag" "py2_server sse $tag" sse "$ALL" -- "$PY2" "$HERE/py2_server.py" --port 0 --transport sse "${t[@]}"
  matrix "$tag" "py1_server streamable-http $tag" streamable-http "$ALL" -- "$PY1" "$HERE/py1_server.py" --port 0 "${t[@]}"
  matrix "$tag" "py1_server streamable-http --json-response $tag" streamable-http "$ALL" -- "$PY1" "$HERE/py1_server.py" --port 0 --json-response "${t[@]}"
  matrix "$tag" "py1_server sse $tag" sse "$ALL" -- "$PY1" "$HERE/py1_server.py" --port 0 --transport sse "${t[@]}"
  matrix "$tag" "node/server streamable-http $tag" streamable-http "$ALL" -- node "$HERE/node/server.mjs" --port 0 "${t[@]}"
  matrix "$tag" "node/server streamable-http --json-response $tag" streamable-http "$ALL" -- node "$HERE/node/server.mjs" --port 0 --json-response "${t[@]}"
  matrix "$tag" "node/server streamable-http --stateless $tag" streamable-http "$ALL" -- node "$HERE/node/server.mjs" --port 0 --stateless "${t[@]}"
  matrix "$tag" "node/server sse $tag" sse "$ALL" -- node "$HERE/node/server.mjs" --port 0 --transport sse "${t[@]}"
}

variants plain
if [[ $QUICK -eq 0 ]]; then
  if make_certs; then
    variants tls
    variants h2
  else
    record "openssl throwaway CA" 1 "openssl failed"
  fi
fi

echo
echo "smoke: $PASS passed, $FAIL failed, $XFAIL skipped"
for f in "${FAILED[@]}"; do echo "  failed: $f"; done
[[ $FAIL -eq 0 ]]
