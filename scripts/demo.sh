#!/usr/bin/env bash
# Sets everything up and runs the interceptor on a demo "MCP host" built from network
# namespaces, so the demo never touches this machine's own ports:
#
#   icpt-demo-cli (10.213.250.2) --veth--> icpt-demo (10.213.250.1)
#                                           |- demo server on :8080 (the protected service)
#                                           '- interceptor agent (eBPF attached, pinned)
#
# It builds the agent (installing the toolchain first), starts the demo server and the
# agent, sends a remote and a local request through it, and shows the agent's log and
# `interceptor status`. The agent then keeps running until Ctrl-C (DEMO_ONCE=1: stop at once).
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
SERVER_PID=""; AGENT_PID=""
cleanup() {
  set +e
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

sed -e "s|^instance = .*|instance = \"demo\"|" \
    -e "s|^bpffs = .*|bpffs = \"$RUN/bpf\"|" \
    -e "s|^# cgroup2 = .*|cgroup2 = \"$RUN/cg2\"|" \
    -e "s|^runtime_dir = .*|runtime_dir = \"$RUN\"|" \
    policies/interceptor.toml > "$RUN/interceptor.toml"

echo "== starting the demo server on 10.213.250.1:8080 (network namespace $NS)"
mkdir -p "$RUN/www"; echo "hello from the protected demo service" > "$RUN/www/index.txt"
nsenter --net="/run/netns/$NS" python3 -m http.server 8080 --directory "$RUN/www" \
  >"$RUN/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
  nsenter --net="/run/netns/$NS" bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080' 2>/dev/null && break; sleep 0.1
done

echo "== starting the interceptor agent"
nsenter --net="/run/netns/$NS" "$BIN" run --config "$RUN/interceptor.toml" 2> >(tee "$RUN/agent.log" >&2) &
AGENT_PID=$!
for _ in $(seq 100); do grep -q "interceptor agent ready" "$RUN/agent.log" 2>/dev/null && break; sleep 0.1; done
grep -q "interceptor agent ready" "$RUN/agent.log" || { echo "agent did not become ready" >&2; exit 1; }

echo "== a remote client ($CLI) calls 10.213.250.1:8080"
ip netns exec "$CLI" curl -sS -m 5 http://10.213.250.1:8080/index.txt
echo "== a local process calls 127.0.0.1:8080"
nsenter --net="/run/netns/$NS" curl -sS -m 5 http://127.0.0.1:8080/index.txt
sleep 0.2
echo "== interceptor status"
"$BIN" status --config "$RUN/interceptor.toml"

echo "== stopping the agent: protected ports now refuse connections"
kill "$AGENT_PID"; wait "$AGENT_PID" || true; AGENT_PID=""
if ip netns exec "$CLI" curl -sS -m 5 -o /dev/null http://10.213.250.1:8080/index.txt 2>/dev/null; then
  echo "demo: FAILED: a request reached the server without the agent" >&2; exit 1
fi
echo "(refused, as it must be)"
"$BIN" status --config "$RUN/interceptor.toml" | tail -3

if [ "${DEMO_ONCE:-0}" = 1 ] || ! [ -t 0 ]; then
  echo "== demo done"
  exit 0
fi
echo "== restarting the agent; try: ip netns exec $CLI curl http://10.213.250.1:8080/index.txt"
echo "   (Ctrl-C to stop and clean up)"
nsenter --net="/run/netns/$NS" "$BIN" run --config "$RUN/interceptor.toml" &
AGENT_PID=$!
wait "$AGENT_PID"
