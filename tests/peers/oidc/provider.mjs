#!/usr/bin/env node
// A real OpenID provider (panva/oidc-provider, OpenID Certified) for the interceptor's
// integration tests. See README.md in this directory for the contract.
//
//   node provider.mjs --port P [--host H] [--issuer URL] [--cert C --key K]
//        [--keys JWKS] [--clients FILE] [--accounts FILE] [--access-token-ttl S]
//        [--at-alg RS256] [--resource-scopes "mcp mcp:read ..."] [--resources URL,URL]
//        [--default-resource URL] [--enable-test-admin]
//   node provider.mjs --gen-keys FILE [--kid-prefix X] [--keep OLD.json]
//
// Prints "READY <issuer>" on stdout once listening; exits 0 on SIGTERM/SIGINT.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

// Dependencies live in ../node/node_modules (installed by scripts/setup-peers.sh).
const here = path.dirname(fileURLToPath(import.meta.url));
const nodeRequire = createRequire(path.join(here, '..', 'node', 'package.json'));
// oidc-provider's development-time advice (console.info goes to stdout, which must carry only
// READY): dropped, or sent to stderr with --verbose. Installed before the import, which warns.
{
  const verbose = process.argv.includes('--verbose');
  const advice = (a) => typeof a[0] === 'string' && /oidc-provider (WARNING|NOTICE)/.test(a[0]);
  for (const m of ['info', 'warn']) {
    const orig = console[m];
    console[m] = (...a) => {
      if (!advice(a)) return orig(...a);
      if (verbose) process.stderr.write(`${a.join(' ')}\n`);
    };
  }
}
const { default: Provider, errors: oidcErrors } = await import(nodeRequire.resolve('oidc-provider'));

const SIGN_ALGS = ['RS256', 'ES256', 'PS256', 'EdDSA'];

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

function genKey(alg, kid) {
  let kp;
  switch (alg) {
    case 'RS256':
    case 'PS256':
      kp = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
      break;
    case 'ES256':
      kp = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
      break;
    case 'EdDSA':
      kp = crypto.generateKeyPairSync('ed25519');
      break;
    default:
      throw new Error(`unsupported alg ${alg}`);
  }
  return { ...kp.privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

/** A fresh private JWKS: RS256 first (the default signing key), then ES256, PS256, EdDSA. */
export function genKeySet(prefix) {
  return { keys: SIGN_ALGS.map((alg) => genKey(alg, `${prefix}-${alg.toLowerCase()}`)) };
}

function readJson(file, what) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    fail(`cannot read ${what} ${file}: ${e.message}`);
  }
}

function fail(msg) {
  process.stderr.write(`[oidc-provider] ERROR: ${msg}\n`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------------

const { values: opt } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
    issuer: { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    keys: { type: 'string' },
    'gen-keys': { type: 'string' },
    'kid-prefix': { type: 'string' },
    keep: { type: 'string' },
    clients: { type: 'string' },
    accounts: { type: 'string' },
    'access-token-ttl': { type: 'string', default: '600' },
    'at-alg': { type: 'string', default: 'RS256' },
    'resource-scopes': { type: 'string', default: 'mcp mcp:read mcp:write mcp:admin' },
    resources: { type: 'string' },
    'default-resource': { type: 'string' },
    'enable-test-admin': { type: 'boolean', default: false },
    verbose: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
  strict: true,
});

if (opt.help) {
  process.stdout.write(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 12)
    .map((l) => l.replace(/^\/\/ ?/, '')).join('\n') + '\n');
  process.exit(0);
}

if (opt['gen-keys']) {
  const prefix = opt['kid-prefix'] || `k${Date.now().toString(36)}`;
  const jwks = genKeySet(prefix);
  if (opt.keep) {
    const old = readJson(opt.keep, 'key set');
    const kids = new Set(jwks.keys.map((k) => k.kid));
    for (const k of old.keys || []) {
      if (kids.has(k.kid)) fail(`kid ${k.kid} of ${opt.keep} collides with the new key set`);
      jwks.keys.push(k);
    }
  }
  fs.writeFileSync(opt['gen-keys'], `${JSON.stringify(jwks, null, 2)}\n`, { mode: 0o600 });
  process.stdout.write(`${JSON.stringify({ file: opt['gen-keys'], kids: jwks.keys.map((k) => k.kid) })}\n`);
  process.exit(0);
}

const ttl = Number(opt['access-token-ttl']);
if (!Number.isInteger(ttl) || ttl < 1) fail('--access-token-ttl must be a positive integer (seconds)');
const atAlg = opt['at-alg'];
if (!SIGN_ALGS.includes(atAlg)) fail(`--at-alg must be one of ${SIGN_ALGS.join(', ')}`);
if (!!opt.cert !== !!opt.key) fail('--cert and --key go together');
const resourceScopes = opt['resource-scopes'].split(/\s+/).filter(Boolean);
const allowedResources = opt.resources ? new Set(opt.resources.split(',').map((s) => s.trim()).filter(Boolean)) : null;

const jwks = opt.keys ? readJson(opt.keys, 'key set') : genKeySet(`eph${Date.now().toString(36)}`);
if (!Array.isArray(jwks.keys) || !jwks.keys.length) fail('key set has no keys');
for (const k of jwks.keys) {
  if (!k.kid || !k.d) fail('every key needs a kid and its private part (use --gen-keys)');
}

// ---------------------------------------------------------------------------------------------
// Accounts and clients
// ---------------------------------------------------------------------------------------------

const DEFAULT_ACCOUNTS = {
  alice: { groups: ['support'], email: 'alice@example.test', name: 'Alice' },
  bob: { groups: ['analytics'], email: 'bob@example.test', name: 'Bob' },
  carol: { groups: ['crm-admins'], email: 'carol@example.test', name: 'Carol' },
  mallory: { groups: [], email: 'mallory@example.test', name: 'Mallory' },
};

// Accounts file: { "<sub>": { "groups": [...], "roles": [...], "password": "...", "email", "name",
// "claims": { extra access-token claims } } }. A password is checked only when one is set.
const accounts = opt.accounts ? readJson(opt.accounts, 'accounts file') : DEFAULT_ACCOUNTS;

const DEFAULT_CLIENTS = [
  {
    // Service account (client_credentials), JWT access tokens.
    client_id: 'crm-batch',
    client_secret: 'crm-batch-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    groups: ['crm-batch'],
    roles: ['crm-reader'],
  },
  {
    // Second service account with no groups/roles.
    client_id: 'report-bot',
    client_secret: 'report-bot-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  },
  {
    // Service account whose access tokens are opaque (introspect them, RFC 7662).
    client_id: 'crm-batch-opaque',
    client_secret: 'crm-batch-opaque-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    groups: ['crm-batch'],
    access_token_format: 'opaque',
  },
  {
    // The resource server (the interceptor) authenticating at the introspection endpoint.
    client_id: 'interceptor',
    client_secret: 'interceptor-secret',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  },
  {
    // Public client: authorization_code + PKCE (S256), loopback redirect (RFC 8252).
    client_id: 'mcp-cli',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback'],
  },
];
const clients = opt.clients ? readJson(opt.clients, 'clients file') : DEFAULT_CLIENTS;
if (!Array.isArray(clients)) fail('clients file must hold a JSON array of client metadata');

function accountExtraClaims(sub) {
  const a = accounts[sub];
  if (!a) return {};
  return {
    ...(a.claims || {}),
    groups: a.groups || [],
    ...(a.roles ? { roles: a.roles } : {}),
  };
}

function strList(v) {
  return Array.isArray(v) && v.every((x) => typeof x === 'string');
}

// ---------------------------------------------------------------------------------------------
// Server (listen first so that --port 0 works and the issuer can name the real port)
// ---------------------------------------------------------------------------------------------

let app = (req, res) => {
  res.statusCode = 503;
  res.end();
};
const tls = opt.cert ? { cert: fs.readFileSync(opt.cert), key: fs.readFileSync(opt.key) } : null;
const server = tls
  ? https.createServer(tls, (req, res) => app(req, res))
  : http.createServer((req, res) => app(req, res));

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(opt.port), opt.host, resolve);
});
const port = server.address().port;
const hostForUrl = opt.host.includes(':') ? `[${opt.host}]` : opt.host;
const issuer = (opt.issuer || `${tls ? 'https' : 'http'}://${hostForUrl}:${port}`).replace(/\/$/, '');
if (new URL(issuer).pathname !== '/') fail('--issuer must be an origin (no path)');

// ---------------------------------------------------------------------------------------------
// oidc-provider configuration
// ---------------------------------------------------------------------------------------------

const configuration = {
  clients,
  jwks,
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups', ...resourceScopes],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email'],
    groups: ['groups'],
  },
  // Subject = account key (public identifiers; no pairwise).
  async findAccount(ctx, sub) {
    if (!accounts[sub]) return undefined;
    const a = accounts[sub];
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          name: a.name,
          preferred_username: sub,
          email: a.email,
          groups: a.groups || [],
        };
      },
    };
  },
  extraClientMetadata: {
    properties: ['groups', 'roles', 'access_token_format'],
    validator(ctx, key, value) {
      if (value === undefined) return;
      if ((key === 'groups' || key === 'roles') && !strList(value)) {
        throw new oidcErrors.InvalidClientMetadata(`${key} must be an array of strings`);
      }
      if (key === 'access_token_format' && !['jwt', 'opaque'].includes(value)) {
        throw new oidcErrors.InvalidClientMetadata('access_token_format must be "jwt" or "opaque"');
      }
    },
  },
  // Claims added to every access token (JWT payload, or introspection response when opaque).
  async extraTokenClaims(ctx, token) {
    if (token.accountId) return accountExtraClaims(token.accountId);
    const client = token.client || (token.clientId && await ctx.oidc.provider.Client.find(token.clientId));
    if (!client) return undefined;
    return {
      groups: client.groups || [],
      ...(client.roles ? { roles: client.roles } : {}),
    };
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // Any confidential client may introspect (the interceptor uses "interceptor").
      async allowedPolicy(ctx, client, token) {
        return client.clientAuthMethod !== 'none' || token.clientId === client.clientId;
      },
    },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      async defaultResource(ctx, client, oneOf) {
        return oneOf || opt['default-resource'] || undefined;
      },
      async useGrantedResource() {
        return true;
      },
      async getResourceServerInfo(ctx, resourceIndicator, client) {
        if (allowedResources && !allowedResources.has(resourceIndicator)) {
          throw new oidcErrors.InvalidTarget(`resource ${resourceIndicator} is not registered`);
        }
        const format = client?.access_token_format || 'jwt';
        return {
          scope: resourceScopes.join(' '),
          audience: resourceIndicator,
          accessTokenTTL: ttl,
          accessTokenFormat: format,
          ...(format === 'jwt' ? { jwt: { sign: { alg: atAlg } } } : {}),
        };
      },
    },
  },
  pkce: { required: () => true },
  clientBasedCORS: () => true,
  ttl: {
    AccessToken: ttl,
    ClientCredentials: ttl,
    AuthorizationCode: 60,
    IdToken: ttl,
    RefreshToken: 86400,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
  },
  interactions: {
    url(ctx, interaction) {
      return `/interaction/${interaction.uid}`;
    },
  },
  async renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
};

const provider = new Provider(issuer, configuration);
provider.on('server_error', (ctx, err) => process.stderr.write(`[oidc-provider] server_error: ${err.stack}\n`));
if (opt.verbose) {
  for (const ev of ['grant.error', 'introspection.error', 'authorization.error', 'interaction.started']) {
    provider.on(ev, (ctx, e) => process.stderr.write(`[oidc-provider] ${ev}: ${e?.message || JSON.stringify(e)}\n`));
  }
}

// ---------------------------------------------------------------------------------------------
// Interactions (login + consent), headless-friendly: JSON for Accept: application/json,
// minimal HTML forms otherwise.
// ---------------------------------------------------------------------------------------------

async function readBody(ctx, limit = 1 << 20) {
  const chunks = [];
  let n = 0;
  for await (const c of ctx.req) {
    n += c.length;
    if (n > limit) ctx.throw(413, 'body too large');
    chunks.push(c);
  }
  const raw = Buffer.concat(chunks).toString('utf8');
  const type = ctx.get('content-type') || '';
  if (type.includes('application/json')) return raw ? JSON.parse(raw) : {};
  return Object.fromEntries(new URLSearchParams(raw));
}

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function wantsJson(ctx) {
  return (ctx.get('accept') || '').includes('application/json');
}

function interactionView(ctx, details, error) {
  const { uid, prompt, params } = details;
  const body = {
    uid,
    prompt: prompt.name,
    reasons: prompt.reasons,
    details: prompt.details,
    client_id: params.client_id,
    scope: params.scope,
    resource: params.resource,
    login_action: `/interaction/${uid}/login`,
    confirm_action: `/interaction/${uid}/confirm`,
    abort_action: `/interaction/${uid}/abort`,
    ...(error ? { error: 'access_denied', error_description: error } : {}),
  };
  if (wantsJson(ctx)) {
    ctx.type = 'json';
    ctx.body = body;
    return;
  }
  ctx.type = 'html';
  const form = prompt.name === 'login'
    ? `<form method="post" action="${body.login_action}"><input name="login" placeholder="user">`
      + '<input name="password" type="password" placeholder="password"><button>Sign in</button></form>'
    : `<p>${esc(params.client_id)} asks for: ${esc(params.scope || '')} on ${esc(params.resource || '')}</p>`
      + `<form method="post" action="${body.confirm_action}"><button>Allow</button></form>`;
  ctx.body = `<!doctype html><title>${esc(prompt.name)}</title>${error ? `<p>${esc(error)}</p>` : ''}${form}`
    + `<form method="post" action="${body.abort_action}"><button>Cancel</button></form>`;
}

async function finish(ctx, result) {
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
  ctx.status = 303;
  ctx.set('Location', returnTo);
  ctx.body = '';
}

async function handleInteraction(ctx, uid, action) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (details.uid !== uid) ctx.throw(400, 'interaction mismatch');
  const { prompt, params, session } = details;

  if (ctx.method === 'GET' && !action) return interactionView(ctx, details);
  if (ctx.method !== 'POST') ctx.throw(405);

  const form = await readBody(ctx);
  if (action === 'abort') {
    return finish(ctx, { error: 'access_denied', error_description: 'End-User aborted interaction' });
  }
  if (action === 'login') {
    if (prompt.name !== 'login') ctx.throw(400, `expected prompt ${prompt.name}`);
    const sub = form.login;
    const account = accounts[sub];
    if (!account || (account.password !== undefined && account.password !== form.password)) {
      ctx.status = 401;
      return interactionView(ctx, details, 'invalid user or password');
    }
    return finish(ctx, { login: { accountId: sub, amr: ['pwd'], acr: 'urn:test:pwd' } });
  }
  if (action === 'confirm') {
    if (prompt.name !== 'consent') ctx.throw(400, `expected prompt ${prompt.name}`);
    let { grantId } = details;
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    if (d.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    // A resource requested without any of its scopes still gets an (empty-scope) grant so the
    // code can be exchanged for a token for that audience.
    for (const r of [params.resource].flat().filter(Boolean)) {
      if (!grant.resources?.[r]) grant.addResourceScope(r, '');
    }
    grantId = await grant.save();
    return finish(ctx, { consent: details.grantId ? {} : { grantId } });
  }
  ctx.throw(404);
}

// ---------------------------------------------------------------------------------------------
// Test-only admin: POST /test/mint signs an arbitrary JWT with the CURRENT signing key.
// ---------------------------------------------------------------------------------------------

function b64u(x) {
  return Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url');
}

function signRaw(alg, jwk, input) {
  const key = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
  const data = Buffer.from(input);
  switch (alg) {
    case 'RS256':
      return crypto.sign('sha256', data, key);
    case 'PS256':
      return crypto.sign('sha256', data, { key, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
    case 'ES256':
      return crypto.sign('sha256', data, { key, dsaEncoding: 'ieee-p1363' });
    case 'EdDSA':
      return crypto.sign(null, data, key);
    default:
      throw new Error(`unsupported alg ${alg}`);
  }
}

function applyOverrides(base, over) {
  const out = { ...base };
  for (const [k, v] of Object.entries(over || {})) {
    if (v === null) delete out[k];
    else out[k] = v;
  }
  return out;
}

// Body: { "claims": {...}, "header": {...}, "alg": "RS256", "kid": "...", "defaults": true,
//         "ttl": 600, "foreign_key": false, "hs256_with_public_key": false }
//  - alg picks the signing key: the FIRST key of that alg in the key set (the current one);
//    kid picks a specific key instead (e.g. an older, still-published key).
//  - defaults (true): start from {iss, iat, nbf?, exp: iat+ttl, jti} and header {alg, typ:"at+jwt", kid}.
//  - claims / header entries override; a null value removes the entry.
//  - foreign_key: sign with a freshly generated key (same kid/alg) => signature must not verify.
//  - header.alg "none": empty signature (unsecured JWT).
//  - hs256_with_public_key: header alg HS256, HMAC keyed with the selected key's public SPKI PEM.
async function mint(ctx) {
  const body = await readBody(ctx);
  const alg = body.alg || (body.kid ? jwks.keys.find((k) => k.kid === body.kid)?.alg : atAlg);
  let jwk = body.kid ? jwks.keys.find((k) => k.kid === body.kid) : jwks.keys.find((k) => k.alg === alg);
  if (!jwk) ctx.throw(400, `no key for ${body.kid ? `kid ${body.kid}` : `alg ${alg}`}`);
  if (!SIGN_ALGS.includes(jwk.alg)) ctx.throw(400, `key ${jwk.kid} has unsupported alg ${jwk.alg}`);
  if (body.foreign_key) jwk = genKey(jwk.alg, jwk.kid);
  const now = Math.floor(Date.now() / 1000);
  const useDefaults = body.defaults !== false;
  const claims = applyOverrides(useDefaults ? {
    iss: issuer,
    iat: now,
    exp: now + (Number.isFinite(body.ttl) ? body.ttl : ttl),
    jti: crypto.randomBytes(16).toString('base64url'),
  } : {}, body.claims);
  const header = applyOverrides(useDefaults ? { alg: jwk.alg, typ: 'at+jwt', kid: jwk.kid } : { alg: jwk.alg }, body.header);
  let signedWith = { kid: jwk.kid, alg: jwk.alg, foreign: !!body.foreign_key };
  if (body.hs256_with_public_key) {
    // Algorithm-confusion probe: HMAC-SHA256 keyed with the public key (SPKI PEM text).
    if (!body.header || !('alg' in body.header)) header.alg = 'HS256';
    signedWith = { kid: jwk.kid, alg: 'HS256', hmac_key: 'public key SPKI PEM' };
  }
  const input = `${b64u(header)}.${b64u(claims)}`;
  let sig;
  if (header.alg === 'none') {
    sig = '';
    signedWith = { alg: 'none' };
  } else if (body.hs256_with_public_key) {
    const pem = crypto.createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
    sig = crypto.createHmac('sha256', pem).update(input).digest('base64url');
  } else {
    sig = signRaw(jwk.alg, jwk, input).toString('base64url');
  }
  ctx.type = 'json';
  ctx.body = { token: `${input}.${sig}`, header, claims, signed_with: signedWith };
}

provider.use(async (ctx, next) => {
  const m = ctx.path.match(/^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/);
  if (m) {
    try {
      await handleInteraction(ctx, m[1], m[2]);
    } catch (e) {
      ctx.status = e.status || e.statusCode || 500;
      ctx.type = 'json';
      ctx.body = { error: e.error || e.name || 'error', error_description: e.error_description || e.message };
    }
    return;
  }
  if (ctx.path === '/test/mint' && opt['enable-test-admin']) {
    if (ctx.method !== 'POST') ctx.throw(405);
    try {
      await mint(ctx);
    } catch (e) {
      ctx.status = e.status || 400;
      ctx.type = 'json';
      ctx.body = { error: 'mint_failed', error_description: e.message };
    }
    return;
  }
  if (ctx.path === '/test/keys' && opt['enable-test-admin']) {
    // Public view of the key set in signing order (first of each alg signs).
    ctx.type = 'json';
    ctx.body = { keys: jwks.keys.map(({ kid, alg, kty, crv }) => ({ kid, alg, kty, crv })), at_alg: atAlg };
    return;
  }
  await next();
});

app = provider.callback();

// ---------------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------------

function shutdown(sig) {
  if (opt.verbose) process.stderr.write(`[oidc-provider] ${sig}, closing\n`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

process.stdout.write(`READY ${issuer}\n`);
