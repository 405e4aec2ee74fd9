#!/usr/bin/env node
// Verifies a JWT access token the way a resource server should (RFC 9068), with jose against the
// issuer's published JWKS: discovery -> jwks_uri, signature, iss, aud, exp/nbf, typ at+jwt.
//
//   node verify.mjs --issuer URL [--cacert CA] --audience R --token JWT [--typ at+jwt]
//        [--algs RS256,ES256,PS256,EdDSA] [--clock-tolerance 0]
//
// Prints {"ok":true,"header":{...},"claims":{...}} (exit 0) or {"ok":false,"code","error",...}
// (exit 1). Used by smoke.sh; handy to inspect a token by hand.
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
// jose is oidc-provider's own dependency: resolve it from there (no extra package to install).
const nodeRequire = createRequire(path.join(here, '..', 'node', 'package.json'));
const providerRequire = createRequire(nodeRequire.resolve('oidc-provider'));
const jose = await import(providerRequire.resolve('jose'));

const { values: opt } = parseArgs({
  options: {
    issuer: { type: 'string' },
    cacert: { type: 'string' },
    audience: { type: 'string' },
    token: { type: 'string' },
    typ: { type: 'string', default: 'at+jwt' },
    algs: { type: 'string', default: 'RS256,ES256,PS256,EdDSA' },
    'clock-tolerance': { type: 'string', default: '0' },
  },
  strict: true,
});
const ca = opt.cacert ? fs.readFileSync(opt.cacert) : undefined;

function getJson(url) {
  const mod = url.startsWith('https:') ? https : http;
  return new Promise((resolve, reject) => {
    mod.get(url, { ca, headers: { accept: 'application/json' } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
        } catch (e) {
          reject(new Error(`${url}: HTTP ${res.statusCode}, not JSON`));
        }
      });
    }).on('error', reject);
  });
}

try {
  const meta = await getJson(`${opt.issuer.replace(/\/$/, '')}/.well-known/openid-configuration`);
  const jwks = await getJson(meta.jwks_uri);
  const { payload, protectedHeader } = await jose.jwtVerify(opt.token, jose.createLocalJWKSet(jwks), {
    issuer: opt.issuer,
    audience: opt.audience,
    typ: opt.typ,
    algorithms: opt.algs.split(','),
    clockTolerance: Number(opt['clock-tolerance']),
    requiredClaims: ['iss', 'exp', 'aud', 'sub', 'client_id', 'iat', 'jti'],
  });
  process.stdout.write(`${JSON.stringify({ ok: true, header: protectedHeader, claims: payload })}\n`);
} catch (e) {
  process.stdout.write(`${JSON.stringify({ ok: false, code: e.code || e.name, error: e.message, claim: e.claim })}\n`);
  process.exit(1);
}
