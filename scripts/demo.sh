#!/usr/bin/env bash
# Sets everything up and runs the interceptor on a demo "MCP host" built from network
# namespaces, so the demo never touches this machine's own ports:
#
#   icpt-demo-cli (10.213.250.2) --veth--> icpt-demo (10.213.250.1)
#                                           |- MCP server on :8080 (official Python SDK)
#                                           '- interceptor agent (eBPF attached, pinned)
#
# It builds the agent (installing the toolchain and the MCP SDK peers first), starts a real
# MCP server (Python SDK) and the agent, has a remote MCP client (2026-07-28 revision) and a
# local one (2025-11-25, Python SDK 1.x) call tools, resources and prompts through it, and shows
# the agent's per-exchange log and `interceptor status`; a bulk export is held until the DPO
# approves it from the CLI; after the agent stops (ports refused), the audit log is verified
# offline and the Art. 30 record exported. The agent then keeps running until Ctrl-C (DEMO_ONCE=1: stop at once).
# Everything it creates is removed on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (eBPF, network namespaces)" >&2; exit 1; }

bash scripts/setup.sh
echo "== building the agent (release)"
cargo build --release -p interceptor-user --bin interceptor
BIN="$ROOT/target/release/interceptor"

NS=icpt-demo; CLI=icpt-demo-cli; RUN=/run/interceptor-demo
# The on-call DPO of the example policy ([[approvers]] dpo-oncall, uid 1500) approves from the
# CLI as that uid; the control socket is opened to this group for the demo.
DPO_UID=1500; DPO_GID=1500
SERVER_PID=""; AGENT_PID=""; IDP_PID=""; HELD_PID=""
cleanup() {
  set +e
  [ -n "$HELD_PID" ] && kill "$HELD_PID" 2>/dev/null && wait "$HELD_PID" 2>/dev/null
  [ -n "$IDP_PID" ] && kill "$IDP_PID" 2>/dev/null && wait "$IDP_PID" 2>/dev/null
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [ -f "$RUN/interceptor.toml" ] && "$BIN" detach --config "$RUN/interceptor.toml" >/dev/null
  mountpoint -q "$RUN/bpf" && umount "$RUN/bpf"
  mountpoint -q "$RUN/cg2" && umount "$RUN/cg2"
  ip netns del "$NS" 2>/dev/null; ip netns del "$CLI" 2>/dev/null
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cleanup; trap cleanup EXIT

mkdir -p "$RUN/bpf" "$RUN/cg2" "$RUN/state"
mount -t bpf bpf "$RUN/bpf"
mount -t cgroup2 none "$RUN/cg2"
ip netns add "$NS"; ip netns add "$CLI"
ip link add icptd0 netns "$NS" type veth peer name icptd1 netns "$CLI"
ip -n "$NS" addr add 10.213.250.1/24 dev icptd0
ip -n "$CLI" addr add 10.213.250.2/24 dev icptd1
for n in "$NS" "$CLI"; do ip -n "$n" link set lo up; done
ip -n "$NS" link set icptd0 up; ip -n "$CLI" link set icptd1 up

P="$ROOT/tests/peers"
ISSUER="https://10.213.250.1:9443"
RESOURCE="http://10.213.250.1:8080/mcp"
echo "== starting a real OpenID provider (oidc-provider) at $ISSUER"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$RUN/ca.key" \
  -out "$RUN/ca.pem" -days 1 -subj "/CN=interceptor demo CA" 2>/dev/null
printf 'subjectAltName=IP:10.213.250.1\n' > "$RUN/ext.cnf"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$RUN/idp.key" \
  -out "$RUN/idp.csr" -subj "/CN=idp" 2>/dev/null
openssl x509 -req -in "$RUN/idp.csr" -CA "$RUN/ca.pem" -CAkey "$RUN/ca.key" -CAcreateserial \
  -out "$RUN/idp.pem" -days 1 -extfile "$RUN/ext.cnf" 2>/dev/null
node "$P/oidc/provider.mjs" --gen-keys "$RUN/keys.json" --kid-prefix demo >/dev/null
nsenter --net="/run/netns/$NS" node "$P/oidc/provider.mjs" --host 10.213.250.1 --port 9443 \
  --issuer "$ISSUER" --cert "$RUN/idp.pem" --key "$RUN/idp.key" --keys "$RUN/keys.json" \
  >"$RUN/idp.log" 2>&1 &
IDP_PID=$!
for _ in $(seq 200); do grep -q '^READY' "$RUN/idp.log" 2>/dev/null && break; sleep 0.1; done
grep -q '^READY' "$RUN/idp.log" || { echo "OpenID provider did not start" >&2; cat "$RUN/idp.log" >&2; exit 1; }

# The example configuration and policy, pointed at the demo's namespaces and provider.
sed -e "s|^instance = .*|instance = \"demo\"|" \
    -e "s|^bpffs = .*|bpffs = \"$RUN/bpf\"|" \
    -e "s|^# cgroup2 = .*|cgroup2 = \"$RUN/cg2\"|" \
    -e "s|^runtime_dir = .*|runtime_dir = \"$RUN\"|" \
    -e "s|^log_format = .*|log_format = \"text\"|" \
    -e "s|/etc/interceptor/policies|$ROOT/policies/crm.policy.toml|" \
    -e "s|https://login.example.com|$ISSUER|" \
    -e "s|https://mcp.example.com:8080/mcp|$RESOURCE|g" \
    -e "s|^# ca_file = .*|ca_file = \"$RUN/ca.pem\"|" \
    -e "s|^state_dir = .*|state_dir = \"$RUN/state\"|" \
    -e "s|^signing_key = .*|signing_key = \"$RUN/audit-signing.key\"|" \
    -e "s|^# \[approvals\]|[approvals]|" \
    -e "s|^# control_group = .*|control_group = $DPO_GID|" \
    policies/interceptor.toml > "$RUN/interceptor.toml"

echo "== starting the MCP server on 10.213.250.1:8080 (network namespace $NS)"
nsenter --net="/run/netns/$NS" "$P/.venv-mcp2/bin/python" "$P/py2_server.py" --host 0.0.0.0 --port 8080 \
  --no-dns-rebinding-protection >"$RUN/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 200); do grep -q '^READY' "$RUN/server.log" 2>/dev/null && break; sleep 0.1; done
grep -q '^READY' "$RUN/server.log" || { echo "MCP server did not start" >&2; cat "$RUN/server.log" >&2; exit 1; }

echo "== starting the interceptor agent"
nsenter --net="/run/netns/$NS" "$BIN" run --config "$RUN/interceptor.toml" 2> >(tee "$RUN/agent.log" >&2) &
AGENT_PID=$!
for _ in $(seq 100); do grep -q "interceptor agent ready" "$RUN/agent.log" 2>/dev/null && break; sleep 0.1; done
grep -q "interceptor agent ready" "$RUN/agent.log" || { echo "agent did not become ready" >&2; exit 1; }

summary() {
  python3 -c '
import json, sys
d = json.load(sys.stdin); r = d.get("result") or {}
err = (d.get("error") or {}).get("message", "")
print("   ok=%s protocol=%s tools=%s %s" % (d.get("ok"), d.get("protocol_version"), [t["name"] for t in d.get("tools", [])], err or ("isError=%s" % r.get("isError") if r else "")))
text = " ".join(c.get("text", "") for c in r.get("content", []) if isinstance(c, dict))
if text:
    print("   the client got: %s%s" % (text[:150].replace("\n", " | "), "..." if len(text) > 150 else ""))
'
}
token() { # token <grant args...>: a real access token for the CRM resource
  ip netns exec "$CLI" node "$P/oidc/token.mjs" --issuer "$ISSUER" --cacert "$RUN/ca.pem" \
    --resource "$RESOURCE" "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
py2() { ip netns exec "$CLI" "$P/.venv-mcp2/bin/python" "$P/py2_client.py" --url "$RESOURCE" "$@" 2>/dev/null; }

echo "== no token: 401 with the RFC 9728 metadata that leads MCP clients to the provider"
ip netns exec "$CLI" curl -sS -o /dev/null -D - -X POST -H 'content-type: application/json' \
  -d '{"jsonrpc":"2.0","id":1,"method":"tools/list"}' "$RESOURCE" | grep -i -E '^HTTP|^www-authenticate'
ip netns exec "$CLI" curl -sS http://10.213.250.1:8080/.well-known/oauth-protected-resource/mcp; echo

ALICE=$(token --grant authorization_code --client-id mcp-cli --user alice)
BATCH=$(token --grant client_credentials --client-id crm-batch --client-secret crm-batch-secret)
echo "== alice (group support, authorization code + PKCE) lists tools: filtered to her role"
py2 --scenario lists --header "Authorization: Bearer $ALICE" | summary
echo "== alice calls customer_lookup (allowed) and export_customers (denied by policy)"
py2 --scenario call --tool customer_lookup --args '{"id":"42"}' --header "Authorization: Bearer $ALICE" | summary
py2 --scenario call --tool export_customers --args '{"limit":10}' --header "Authorization: Bearer $ALICE" | summary
echo "== the crm-batch service account (client credentials) exports 10 customers"
py2 --scenario call --tool export_customers --args '{"limit":10}' --header "Authorization: Bearer $BATCH" | summary
echo "== a local MCP client (Python SDK 1.x, 2025-11-25) on the host calls http://127.0.0.1:8080/mcp as alice"
nsenter --net="/run/netns/$NS" "$P/.venv-mcp1/bin/python" "$P/py1_client.py" --url http://127.0.0.1:8080/mcp \
  --scenario call --tool customer_lookup --args '{"id":"7"}' --header "Authorization: Bearer $ALICE" 2>/dev/null | summary

echo "== crm-batch asks for 2000 customers: more than 1000, so held for approval (rule bulk-export)"
py2 --scenario call --tool export_customers --args '{"limit":2000}' --header "Authorization: Bearer $BATCH" \
  > "$RUN/held.json" &
HELD_PID=$!
as_dpo() { setpriv --reuid "$DPO_UID" --regid "$DPO_GID" --clear-groups "$BIN" approvals --config "$RUN/interceptor.toml" "$@"; }
ID=""
for _ in $(seq 150); do
  ID=$(as_dpo list --json 2>/dev/null | python3 -c 'import json,sys; a=json.load(sys.stdin).get("approvals") or []; print(a[0]["id"] if a else "")' || true)
  [ -n "$ID" ] && break; sleep 0.1
done
[ -n "$ID" ] || { echo "demo: the export was not held" >&2; exit 1; }
as_dpo list
echo "== the DPO (uid $DPO_UID) approves it; the held call then reaches the server"
as_dpo approve "$ID" --reason "quarterly report"
wait "$HELD_PID"; HELD_PID=""
summary < "$RUN/held.json"
sleep 0.3
echo "== interceptor status"
"$BIN" status --config "$RUN/interceptor.toml"

echo "== stopping the agent: protected ports now refuse connections"
kill "$AGENT_PID"; wait "$AGENT_PID" || true; AGENT_PID=""
if ip netns exec "$CLI" curl -sS -m 5 -o /dev/null http://10.213.250.1:8080/mcp 2>/dev/null; then
  echo "demo: FAILED: a request reached the server without the agent" >&2; exit 1
fi
echo "(refused, as it must be)"
"$BIN" status --config "$RUN/interceptor.toml" | tail -3

echo "== the audit log: every exchange and approval step, verified offline against the signed checkpoints"
"$BIN" audit pubkey --config "$RUN/interceptor.toml" --out "$RUN/audit.pub" >/dev/null
"$BIN" audit verify --config "$RUN/interceptor.toml" --pubkey "$RUN/audit.pub" | tail -4
"$BIN" audit tail -n 12 --config "$RUN/interceptor.toml"
echo "== GDPR Art. 30 record of processing activities, from the policy and the observed traffic"
"$BIN" audit export --format art30-md --from "$(date -u +%F)" --to "$(date -u -d tomorrow +%F)" \
  --config "$RUN/interceptor.toml" | head -40

if [ "${DEMO_ONCE:-0}" = 1 ] || ! [ -t 0 ]; then
  echo "== demo done"
  exit 0
fi
echo "== restarting the agent; try:"
echo "   ip netns exec $CLI $P/.venv-mcp2/bin/python $P/py2_client.py --url http://10.213.250.1:8080/mcp --scenario basic"
echo "   (Ctrl-C to stop and clean up)"
nsenter --net="/run/netns/$NS" "$BIN" run --config "$RUN/interceptor.toml" &
AGENT_PID=$!
wait "$AGENT_PID"
