#!/usr/bin/env node
// Obtains real tokens from an OpenID provider (made for provider.mjs, standard OAuth otherwise).
//
//   node token.mjs --issuer URL [--cacert CA] --grant client_credentials --client-id X
//        --client-secret S [--resource R] [--scope "mcp:read ..."] [--auth basic|post]
//   node token.mjs --issuer URL [--cacert CA] --grant authorization_code --client-id X
//        --user alice [--password P] [--resource R] [--scope "openid mcp"]
//        [--redirect-uri http://127.0.0.1/callback] [--client-secret S]
//   common: [--decode]  (adds access_token_header / access_token_claims to the output)
//           [--verbose] (trace of the HTTP steps on stderr)
//
// Prints the token endpoint's JSON response on stdout (exit 0), or {"error", "error_description",
// "stage", ...} on stdout (exit 1; exit 2 for bad arguments).
// authorization_code drives the whole flow headlessly: discovery, /auth with PKCE S256, the
// provider's login and consent interactions over HTTP with cookies, code exchange with
// code_verifier and resource.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { parseArgs } from 'node:util';

class Failure extends Error {
  constructor(stage, error, description, extra = {}) {
    super(description || error);
    Object.assign(this, { stage, error, description, extra });
  }
}

function out(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

let opt;
try {
  ({ values: opt } = parseArgs({
    options: {
      issuer: { type: 'string' },
      cacert: { type: 'string' },
      grant: { type: 'string' },
      'client-id': { type: 'string' },
      'client-secret': { type: 'string' },
      auth: { type: 'string', default: 'basic' },
      resource: { type: 'string', multiple: true },
      scope: { type: 'string' },
      user: { type: 'string' },
      password: { type: 'string', default: '' },
      'redirect-uri': { type: 'string', default: 'http://127.0.0.1/callback' },
      decode: { type: 'boolean', default: false },
      verbose: { type: 'boolean', default: false },
    },
    strict: true,
  }));
  if (!opt.issuer) throw new Error('--issuer is required');
  if (!opt['client-id']) throw new Error('--client-id is required');
  if (!['client_credentials', 'authorization_code'].includes(opt.grant)) {
    throw new Error('--grant must be client_credentials or authorization_code');
  }
  if (opt.grant === 'client_credentials' && !opt['client-secret']) throw new Error('--client-secret is required');
  if (opt.grant === 'authorization_code' && !opt.user) throw new Error('--user is required');
  if (!['basic', 'post'].includes(opt.auth)) throw new Error('--auth must be basic or post');
} catch (e) {
  out({ error: 'usage', error_description: e.message, stage: 'arguments' });
  process.exit(2);
}

const ca = opt.cacert ? fs.readFileSync(opt.cacert) : undefined;
const trace = (...a) => opt.verbose && process.stderr.write(`[token] ${a.join(' ')}\n`);

// ---------------------------------------------------------------------------------------------
// HTTP with a minimal cookie jar (name + path; path-prefix matching; host-only is enough here)
// ---------------------------------------------------------------------------------------------

const jar = new Map(); // `${name}\0${path}` -> { name, value, path }

function storeCookies(url, setCookie) {
  for (const line of setCookie || []) {
    const [pair, ...attrs] = line.split(';');
    const eq = pair.indexOf('=');
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    let cpath = '/';
    let expired = false;
    for (const a of attrs) {
      const [k, v = ''] = a.split('=');
      const key = k.trim().toLowerCase();
      if (key === 'path') cpath = v.trim() || '/';
      if (key === 'expires' && Date.parse(v) < Date.now()) expired = true;
      if (key === 'max-age' && Number(v) <= 0) expired = true;
    }
    const id = `${name}\0${cpath}`;
    if (expired || value === '') jar.delete(id);
    else jar.set(id, { name, value, path: cpath });
  }
}

function cookieHeader(url) {
  const p = new URL(url).pathname;
  return [...jar.values()]
    .filter((c) => p === c.path || p.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`))
    .sort((a, b) => b.path.length - a.path.length)
    .map((c) => `${c.name}=${c.value}`)
    .join('; ');
}

function request(method, url, { headers = {}, body, stage } = {}) {
  const u = new URL(url);
  const mod = u.protocol === 'https:' ? https : http;
  const h = { ...headers };
  const cookies = cookieHeader(url);
  if (cookies) h.cookie = cookies;
  if (body !== undefined) h['content-length'] = Buffer.byteLength(body);
  trace(method, url);
  return new Promise((resolve, reject) => {
    const req = mod.request(u, { method, headers: h, ca, timeout: 10_000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        storeCookies(url, res.headers['set-cookie']);
        const text = Buffer.concat(chunks).toString('utf8');
        trace('  ->', res.statusCode, res.headers.location || '');
        let json;
        try {
          json = text ? JSON.parse(text) : undefined;
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => reject(new Failure(stage, 'request_failed', `${method} ${url}: ${e.message}`)));
    if (body !== undefined) req.write(body);
    req.end();
  });
}

const form = (o) => new URLSearchParams(Object.entries(o).flatMap(([k, v]) => (
  v === undefined ? [] : [v].flat().map((x) => [k, x])))).toString();

const FORM = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };

// ---------------------------------------------------------------------------------------------
// Flows
// ---------------------------------------------------------------------------------------------

async function discover() {
  const url = `${opt.issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
  const r = await request('GET', url, { headers: { accept: 'application/json' }, stage: 'discovery' });
  if (r.status !== 200 || !r.json) throw new Failure('discovery', 'discovery_failed', `HTTP ${r.status}`);
  if (r.json.issuer !== opt.issuer.replace(/\/$/, '')) {
    throw new Failure('discovery', 'issuer_mismatch', `discovery says ${r.json.issuer}`);
  }
  return r.json;
}

function clientAuth(params) {
  const headers = { ...FORM };
  const secret = opt['client-secret'];
  if (!secret) return { headers, params: { ...params, client_id: opt['client-id'] } };
  if (opt.auth === 'post') {
    return { headers, params: { ...params, client_id: opt['client-id'], client_secret: secret } };
  }
  // RFC 6749 2.3.1: form-urlencode id and secret before base64.
  const enc = (s) => encodeURIComponent(s).replace(/%20/g, '+');
  headers.authorization = `Basic ${Buffer.from(`${enc(opt['client-id'])}:${enc(secret)}`).toString('base64')}`;
  return { headers, params };
}

async function tokenRequest(meta, params) {
  const a = clientAuth(params);
  const r = await request('POST', meta.token_endpoint, { headers: a.headers, body: form(a.params), stage: 'token' });
  if (r.status !== 200 || !r.json?.access_token) {
    throw new Failure('token', r.json?.error || 'token_failed', r.json?.error_description || `HTTP ${r.status}`,
      { status: r.status });
  }
  return r.json;
}

async function clientCredentials(meta) {
  return tokenRequest(meta, { grant_type: 'client_credentials', scope: opt.scope, resource: opt.resource });
}

function absolute(base, loc) {
  return new URL(loc, base).href;
}

async function authorizationCode(meta) {
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  const state = crypto.randomBytes(16).toString('base64url');
  const nonce = crypto.randomBytes(16).toString('base64url');
  const redirectUri = opt['redirect-uri'];
  const scope = opt.scope ?? 'openid mcp';
  const authUrl = new URL(meta.authorization_endpoint);
  authUrl.search = form({
    response_type: 'code',
    client_id: opt['client-id'],
    redirect_uri: redirectUri,
    scope,
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    resource: opt.resource,
  });

  // Follow redirects by hand; stop at the redirect_uri. At each interaction page: read the
  // prompt (JSON view), submit login or consent, follow the 303 back to /auth/<uid>.
  let url = authUrl.href;
  for (let step = 0; step < 20; step += 1) {
    if (url.startsWith(redirectUri.split('?')[0])) {
      const cb = new URL(url);
      const p = Object.fromEntries(cb.searchParams);
      if (p.error) throw new Failure('authorize', p.error, p.error_description);
      if (p.state !== state) throw new Failure('authorize', 'state_mismatch', 'state differs');
      if (p.iss && p.iss !== meta.issuer) throw new Failure('authorize', 'iss_mismatch', `iss ${p.iss}`);
      if (!p.code) throw new Failure('authorize', 'no_code', url);
      const tok = await tokenRequest(meta, {
        grant_type: 'authorization_code',
        code: p.code,
        redirect_uri: redirectUri,
        code_verifier: verifier,
        resource: opt.resource,
      });
      if (tok.id_token) {
        const claims = decodeJwt(tok.id_token).claims;
        if (claims.nonce !== nonce) throw new Failure('token', 'nonce_mismatch', 'id_token nonce differs');
      }
      return tok;
    }
    const r = await request('GET', url, { headers: { accept: 'application/json' }, stage: 'authorize' });
    if ([302, 303].includes(r.status) && r.headers.location) {
      url = absolute(url, r.headers.location);
      continue;
    }
    if (r.status === 200 && r.json?.prompt && r.json?.uid) {
      const it = r.json;
      let sub;
      if (it.prompt === 'login') {
        sub = await request('POST', absolute(url, it.login_action), {
          headers: FORM, body: form({ login: opt.user, password: opt.password }), stage: 'login',
        });
      } else if (it.prompt === 'consent') {
        sub = await request('POST', absolute(url, it.confirm_action), { headers: FORM, body: '', stage: 'consent' });
      } else {
        throw new Failure('interaction', 'unsupported_prompt', it.prompt);
      }
      if (![302, 303].includes(sub.status) || !sub.headers.location) {
        throw new Failure(it.prompt, sub.json?.error || 'interaction_failed',
          sub.json?.error_description || `HTTP ${sub.status}`, { status: sub.status });
      }
      url = absolute(url, sub.headers.location);
      continue;
    }
    throw new Failure('authorize', r.json?.error || 'unexpected_response',
      r.json?.error_description || `HTTP ${r.status} at ${url}`, { status: r.status });
  }
  throw new Failure('authorize', 'too_many_redirects', url);
}

function decodeJwt(t) {
  const [h, p] = t.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url')),
    claims: JSON.parse(Buffer.from(p, 'base64url')),
  };
}

try {
  const meta = await discover();
  const tok = opt.grant === 'client_credentials' ? await clientCredentials(meta) : await authorizationCode(meta);
  if (opt.decode && tok.access_token.split('.').length === 3) {
    const d = decodeJwt(tok.access_token);
    tok.access_token_header = d.header;
    tok.access_token_claims = d.claims;
  }
  out(tok);
} catch (e) {
  if (e instanceof Failure) {
    out({ error: e.error, error_description: e.description, stage: e.stage, ...e.extra });
  } else {
    out({ error: 'internal', error_description: e.message, stage: 'token.mjs' });
  }
  process.exit(1);
}
