#!/usr/bin/env bash
# Smoke test of the OpenID provider fixture (tests/peers/oidc), no interceptor involved:
# throwaway CA + server cert, provider on HTTPS 127.0.0.1:<free port>, real client_credentials and
# authorization_code + PKCE tokens, RFC 9068 checks (typ, aud, iss, signature via JWKS), groups,
# client_id, discovery, JWKS, /test/mint, introspection of an opaque token, expiry, and key
# rotation by restart. Prints one line per check and a summary; exits non-zero on any failure.
#   tests/peers/oidc/smoke.sh
# Needs scripts/setup-peers.sh to have run (tests/peers/node/node_modules), openssl, curl, jq.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODE_MODULES="$HERE/../node/node_modules"
for f in "$NODE_MODULES/oidc-provider/package.json"; do
  [[ -e "$f" ]] || { echo "smoke: missing $f (run scripts/setup-peers.sh)" >&2; exit 2; }
done
for t in openssl curl jq node; do
  command -v "$t" >/dev/null || { echo "smoke: $t not found" >&2; exit 2; }
done

WORK="$(mktemp -d /tmp/oidc-smoke.XXXXXX)"
PID=""
cleanup() {
  if [[ -n "$PID" ]]; then kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); printf 'PASS  %s\n' "$1"; }
ko() { FAIL=$((FAIL + 1)); printf 'FAIL  %s%s\n' "$1" "${2:+ ($2)}"; }
# check NAME JSON JQ-FILTER: passes when the filter yields true.
check() {
  if [[ "$(jq -r "$3" <<<"$2" 2>/dev/null)" == "true" ]]; then ok "$1"; else ko "$1" "$(head -c 300 <<<"$2")"; fi
}

# ---- throwaway CA + server certificate for 127.0.0.1 / localhost --------------------------------
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=oidc smoke CA" \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1 &&
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$WORK/srv.key" \
    -out "$WORK/srv.csr" >/dev/null 2>&1 &&
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$WORK/ext" &&
  openssl x509 -req -in "$WORK/srv.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 2 -extfile "$WORK/ext" -out "$WORK/srv.pem" >/dev/null 2>&1 ||
  { echo "smoke: openssl failed" >&2; exit 2; }

PORT="$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
ISSUER="https://127.0.0.1:$PORT"
RES="https://10.213.1.1:8080/mcp"
CA="$WORK/ca.pem"

# start_provider KEYS: starts the provider in the background, waits for READY.
start_provider() {
  : >"$WORK/out"
  node "$HERE/provider.mjs" --port "$PORT" --host 127.0.0.1 --issuer "$ISSUER" \
    --cert "$WORK/srv.pem" --key "$WORK/srv.key" --keys "$1" --enable-test-admin \
    --access-token-ttl 600 >"$WORK/out" 2>>"$WORK/err" &
  PID=$!
  for _ in $(seq 1 100); do
    grep -q '^READY ' "$WORK/out" && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "smoke: provider did not become ready:" >&2
  cat "$WORK/out" "$WORK/err" >&2
  exit 1
}
stop_provider() {
  kill -TERM "$PID"
  wait "$PID"
  local rc=$?
  PID=""
  return $rc
}
token() { node "$HERE/token.mjs" --issuer "$ISSUER" --cacert "$CA" --decode "$@"; }
verify() { node "$HERE/verify.mjs" --issuer "$ISSUER" --cacert "$CA" "$@"; }
at() { jq -r .access_token <<<"$1"; }

node "$HERE/provider.mjs" --gen-keys "$WORK/keys1.json" --kid-prefix k1 >/dev/null
start_provider "$WORK/keys1.json"
check "READY line names the issuer" "\"$(cat "$WORK/out")\"" ". == \"READY $ISSUER\""

# ---- discovery and JWKS ---------------------------------------------------------------------
DISC="$(curl -sS --cacert "$CA" "$ISSUER/.well-known/openid-configuration")"
check "discovery over HTTPS (private CA): issuer, jwks_uri, S256, introspection" "$DISC" \
  ".issuer == \"$ISSUER\" and .jwks_uri == \"$ISSUER/jwks\" and .code_challenge_methods_supported == [\"S256\"]
   and .introspection_endpoint == \"$ISSUER/token/introspection\"
   and (.grant_types_supported | index(\"client_credentials\") != null)"
JWKS1="$(curl -sS --cacert "$CA" "$ISSUER/jwks")"
check "JWKS: k1 kids, RS256 first, ES256/PS256/EdDSA, public only" "$JWKS1" \
  '[.keys[].kid] == ["k1-rs256","k1-es256","k1-ps256","k1-eddsa"] and ([.keys[].alg] == ["RS256","ES256","PS256","EdDSA"]) and ([.keys[] | has("d")] | any | not)'

# ---- client_credentials -------------------------------------------------------------------------
CC="$(token --grant client_credentials --client-id crm-batch --client-secret crm-batch-secret --resource "$RES" --scope "mcp:read")"
check "client_credentials: typ at+jwt, kid k1-rs256, aud = resource" "$CC" \
  ".access_token_header.typ == \"at+jwt\" and .access_token_header.kid == \"k1-rs256\" and .access_token_claims.aud == \"$RES\""
check "client_credentials: client_id = sub = crm-batch, groups/roles, scope, iss" "$CC" \
  ".access_token_claims.client_id == \"crm-batch\" and .access_token_claims.sub == \"crm-batch\"
   and .access_token_claims.groups == [\"crm-batch\"] and .access_token_claims.roles == [\"crm-reader\"]
   and .access_token_claims.scope == \"mcp:read\" and .access_token_claims.iss == \"$ISSUER\" and .expires_in == 600"
check "client_credentials: token verifies (jose, JWKS, RFC 9068 typ)" \
  "$(verify --audience "$RES" --token "$(at "$CC")")" '.ok'
OLD_TOKEN="$(at "$CC")"
BAD="$(token --grant client_credentials --client-id crm-batch --client-secret nope --resource "$RES")"
check "client_credentials with a wrong secret: exit 1, invalid_client" "$BAD" '.error == "invalid_client"'

# ---- authorization_code + PKCE ------------------------------------------------------------------
AC="$(token --grant authorization_code --client-id mcp-cli --user alice --resource "$RES" --scope "openid mcp")"
check "auth code + PKCE (alice): typ at+jwt, aud = resource, sub alice, client_id mcp-cli" "$AC" \
  ".access_token_header.typ == \"at+jwt\" and .access_token_claims.aud == \"$RES\"
   and .access_token_claims.sub == \"alice\" and .access_token_claims.client_id == \"mcp-cli\""
check "auth code (alice): groups [support], scope mcp, id_token present" "$AC" \
  '.access_token_claims.groups == ["support"] and .access_token_claims.scope == "mcp" and (.id_token | length > 0)'
check "auth code (alice): token verifies" "$(verify --audience "$RES" --token "$(at "$AC")")" '.ok'
check "auth code (alice): verify with another audience fails" \
  "$(verify --audience "https://other/mcp" --token "$(at "$AC")")" '.ok == false and .claim == "aud"'
BOB="$(token --grant authorization_code --client-id mcp-cli --user bob --resource "http://127.0.0.1:9/mcp")"
check "auth code (bob): groups [analytics], http resource as aud" "$BOB" \
  '.access_token_claims.groups == ["analytics"] and .access_token_claims.aud == "http://127.0.0.1:9/mcp"'
MAL="$(token --grant authorization_code --client-id mcp-cli --user mallory --resource "$RES")"
check "auth code (mallory): groups []" "$MAL" '.access_token_claims.groups == []'
NOBODY="$(token --grant authorization_code --client-id mcp-cli --user nobody --resource "$RES")"
check "auth code (unknown user): exit 1, login stage error" "$NOBODY" '.error == "access_denied" and .stage == "login"'

# ---- opaque token + introspection (RFC 7662) ----------------------------------------------------
OP="$(token --grant client_credentials --client-id crm-batch-opaque --client-secret crm-batch-opaque-secret --resource "$RES" --scope mcp)"
INTRO="$(curl -sS --cacert "$CA" -u interceptor:interceptor-secret -d "token=$(at "$OP")" "$ISSUER/token/introspection")"
check "introspection of an opaque token: active, aud, client_id, groups" "$INTRO" \
  ".active and .aud == \"$RES\" and .client_id == \"crm-batch-opaque\" and .groups == [\"crm-batch\"] and .iss == \"$ISSUER\""
INTRO_BAD="$(curl -sS --cacert "$CA" -u interceptor:interceptor-secret -d "token=not-a-token" "$ISSUER/token/introspection")"
check "introspection of garbage: active false" "$INTRO_BAD" '.active == false'

# ---- /test/mint -------------------------------------------------------------------------------
MINT="$(curl -sS --cacert "$CA" -H 'content-type: application/json' \
  -d "{\"claims\":{\"sub\":\"alice\",\"client_id\":\"mcp-cli\",\"aud\":\"https://wrong.example/mcp\",\"groups\":[\"crm-admins\"]}}" \
  "$ISSUER/test/mint")"
check "mint: current key k1-rs256, typ at+jwt, overrides applied" "$MINT" \
  '.header.kid == "k1-rs256" and .header.typ == "at+jwt" and .claims.aud == "https://wrong.example/mcp"'
check "mint: wrong-aud token has a valid signature but fails aud" \
  "$(verify --audience "$RES" --token "$(jq -r .token <<<"$MINT")")" '.ok == false and .claim == "aud"'
for alg in ES256 PS256 EdDSA; do
  M="$(curl -sS --cacert "$CA" -H 'content-type: application/json' \
    -d "{\"alg\":\"$alg\",\"claims\":{\"sub\":\"bob\",\"client_id\":\"mcp-cli\",\"aud\":\"$RES\"}}" "$ISSUER/test/mint")"
  check "mint $alg: verifies against the JWKS" "$(verify --audience "$RES" --token "$(jq -r .token <<<"$M")")" \
    ".ok and .header.alg == \"$alg\""
done
M="$(curl -sS --cacert "$CA" -H 'content-type: application/json' \
  -d "{\"claims\":{\"sub\":\"bob\",\"client_id\":\"mcp-cli\",\"aud\":\"$RES\",\"nbf\":$(($(date +%s) + 3600))}}" "$ISSUER/test/mint")"
check "mint not-yet-valid (nbf +1h): rejected on nbf" "$(verify --audience "$RES" --token "$(jq -r .token <<<"$M")")" \
  '.ok == false and .claim == "nbf"'
M="$(curl -sS --cacert "$CA" -H 'content-type: application/json' \
  -d "{\"header\":{\"typ\":\"JWT\"},\"claims\":{\"sub\":\"bob\",\"client_id\":\"mcp-cli\",\"aud\":\"$RES\"}}" "$ISSUER/test/mint")"
check "mint typ JWT: rejected on typ" "$(verify --audience "$RES" --token "$(jq -r .token <<<"$M")")" \
  '.ok == false and .claim == "typ"'
M="$(curl -sS --cacert "$CA" -H 'content-type: application/json' \
  -d "{\"claims\":{\"iss\":\"https://evil.example\",\"sub\":\"bob\",\"client_id\":\"mcp-cli\",\"aud\":\"$RES\"}}" "$ISSUER/test/mint")"
check "mint wrong iss: rejected on iss" "$(verify --audience "$RES" --token "$(jq -r .token <<<"$M")")" \
  '.ok == false and .claim == "iss"'
M="$(curl -sS --cacert "$CA" -H 'content-type: application/json' \
  -d "{\"ttl\":-120,\"claims\":{\"sub\":\"bob\",\"client_id\":\"mcp-cli\",\"aud\":\"$RES\"}}" "$ISSUER/test/mint")"
check "mint expired (ttl -120): rejected on exp" "$(verify --audience "$RES" --token "$(jq -r .token <<<"$M")")" \
  '.ok == false and .claim == "exp"'
M="$(curl -sS --cacert "$CA" -H 'content-type: application/json' \
  -d "{\"foreign_key\":true,\"claims\":{\"sub\":\"bob\",\"client_id\":\"mcp-cli\",\"aud\":\"$RES\"}}" "$ISSUER/test/mint")"
check "mint foreign_key (same kid, other key): bad signature" \
  "$(verify --audience "$RES" --token "$(jq -r .token <<<"$M")")" '.ok == false and .code == "ERR_JWS_SIGNATURE_VERIFICATION_FAILED"'
M="$(curl -sS --cacert "$CA" -H 'content-type: application/json' \
  -d "{\"header\":{\"alg\":\"none\"},\"claims\":{\"sub\":\"bob\",\"client_id\":\"mcp-cli\",\"aud\":\"$RES\"}}" "$ISSUER/test/mint")"
check "mint alg none: empty signature, rejected" \
  "$(jq -c --arg v "$(verify --audience "$RES" --token "$(jq -r .token <<<"$M")")" '{t: .token, v: ($v | fromjson)}' <<<"$M")" \
  '(.t | endswith(".")) and .v.ok == false'
M="$(curl -sS --cacert "$CA" -H 'content-type: application/json' \
  -d "{\"hs256_with_public_key\":true,\"claims\":{\"sub\":\"bob\",\"client_id\":\"mcp-cli\",\"aud\":\"$RES\"}}" "$ISSUER/test/mint")"
check "mint HS256 keyed with the public key (alg confusion): rejected" \
  "$(verify --audience "$RES" --token "$(jq -r .token <<<"$M")")" '.ok == false'

# ---- rotation: restart with new keys first, old keys after --------------------------------------
node "$HERE/provider.mjs" --gen-keys "$WORK/keys2.json" --kid-prefix k2 --keep "$WORK/keys1.json" >/dev/null
if stop_provider; then ok "SIGTERM: provider exits 0"; else ko "SIGTERM: provider exits 0"; fi
start_provider "$WORK/keys2.json"
JWKS2="$(curl -sS --cacert "$CA" "$ISSUER/jwks")"
check "rotated JWKS: k2 kids first, k1 kids after" "$JWKS2" \
  '[.keys[].kid] == ["k2-rs256","k2-es256","k2-ps256","k2-eddsa","k1-rs256","k1-es256","k1-ps256","k1-eddsa"]'
CC2="$(token --grant client_credentials --client-id crm-batch --client-secret crm-batch-secret --resource "$RES")"
check "after rotation: new tokens signed with k2-rs256" "$CC2" '.access_token_header.kid == "k2-rs256"'
check "after rotation: new token verifies" "$(verify --audience "$RES" --token "$(at "$CC2")")" '.ok'
check "after rotation: pre-rotation token (k1) still verifies" "$(verify --audience "$RES" --token "$OLD_TOKEN")" '.ok'
MINT2="$(curl -sS --cacert "$CA" -H 'content-type: application/json' -d '{"claims":{"aud":"x"}}' "$ISSUER/test/mint")"
check "after rotation: mint uses k2-rs256" "$MINT2" '.header.kid == "k2-rs256"'
stop_provider

# ---- short TTL ---------------------------------------------------------------------------------
: >"$WORK/out"
node "$HERE/provider.mjs" --port "$PORT" --host 127.0.0.1 --issuer "$ISSUER" --cert "$WORK/srv.pem" \
  --key "$WORK/srv.key" --keys "$WORK/keys2.json" --access-token-ttl 1 >"$WORK/out" 2>>"$WORK/err" &
PID=$!
for _ in $(seq 1 100); do grep -q '^READY ' "$WORK/out" && break; sleep 0.1; done
SHORT="$(token --grant client_credentials --client-id crm-batch --client-secret crm-batch-secret --resource "$RES")"
check "--access-token-ttl 1: expires_in 1, exp = iat + 1" "$SHORT" \
  '.expires_in == 1 and (.access_token_claims.exp - .access_token_claims.iat) == 1'
sleep 2.1
check "--access-token-ttl 1: expired after 2 s" "$(verify --audience "$RES" --token "$(at "$SHORT")")" \
  '.ok == false and .claim == "exp"'
MINTOFF="$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$CA" -X POST -H 'content-type: application/json' -d '{}' "$ISSUER/test/mint")"
check "without --enable-test-admin: /test/mint is 404" "\"$MINTOFF\"" '. == "404"'
stop_provider

if [[ -s "$WORK/err" ]]; then
  echo "--- provider stderr ---"
  cat "$WORK/err"
fi
echo "oidc smoke: $PASS passed, $FAIL failed"
[[ $FAIL -eq 0 ]]
