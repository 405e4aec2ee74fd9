#!/usr/bin/env node
// MCP test client on the official TypeScript SDK (@modelcontextprotocol/sdk, pinned in package.json).
//
// Always does the initialize handshake offering 2025-11-25 (the TS SDK 1.x knows no 2026-07-28).
// Prints one JSON document on stdout; exit 0 when the scenario got its results (a tool result
// with isError=true included), 1 on a JSON-RPC error or transport failure (error printed as JSON).
// Without --cacert/--http2 the SDK uses Node's global fetch; with them undici's fetch with an Agent
// (custom CA; --http2 = allowH2, i.e. ALPN h2 on https only).

import fs from 'node:fs';
import crypto from 'node:crypto';
import { parseArgs } from 'node:util';
import { Agent, fetch as undiciFetch } from 'undici';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { LoggingMessageNotificationSchema } from '@modelcontextprotocol/sdk/types.js';

const SDK_VERSION = JSON.parse(
  fs.readFileSync(new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url)),
).version;
const SDK = `typescript @modelcontextprotocol/sdk ${SDK_VERSION}`;

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    transport: { type: 'string', default: 'streamable-http' },
    cacert: { type: 'string' },
    header: { type: 'string', multiple: true, default: [] },
    http2: { type: 'boolean', default: false },
    timeout: { type: 'string', default: '60' },
    scenario: { type: 'string', default: 'basic' },
    tool: { type: 'string' },
    args: { type: 'string', default: '{}' },
    mb: { type: 'string', default: '1' },
    steps: { type: 'string', default: '3' },
    'delay-ms': { type: 'string', default: '200' },
  },
});

// Resolves once the output is written: process.exit() would cut a pipe off after 128 KiB.
function emit(obj) {
  return new Promise((resolve) => process.stdout.write(JSON.stringify(obj, null, 2) + '\n', resolve));
}

function fail(err) {
  const error = { type: err?.constructor?.name ?? 'Error', message: err?.message ?? String(err) };
  if (typeof err?.code === 'number') error.code = err.code;
  if (err?.data !== undefined) error.data = err.data;
  console.error(err);
  emit({ ok: false, error, sdk: SDK, scenario: opt.scenario }).then(() => process.exit(1));
}

function headers() {
  const out = {};
  for (const h of opt.header) {
    const i = h.indexOf(':');
    if (i <= 0) throw new Error(`bad --header ${JSON.stringify(h)}, expected 'Name: value'`);
    out[h.slice(0, i).trim()] = h.slice(i + 1).trim();
  }
  return out;
}

function customFetch() {
  if (!opt.cacert && !opt.http2) return undefined; // SDK default: global fetch
  if (opt.http2 && new URL(opt.url).protocol === 'http:') {
    // undici's H2CClient + fetch hung on the first POST against both hypercorn and node:http2 h2c servers.
    throw new Error('--http2 needs an https:// URL in the node client (h2c is not supported)');
  }
  const dispatcher = new Agent({ allowH2: opt.http2, connect: opt.cacert ? { ca: fs.readFileSync(opt.cacert) } : {} });
  return (input, init) => undiciFetch(input, { ...init, dispatcher });
}

async function main() {
  if (!opt.url) throw new Error('--url is required');
  if (!['streamable-http', 'sse'].includes(opt.transport)) throw new Error(`unknown --transport ${opt.transport}`);
  const url = new URL(opt.url);
  const fetch = customFetch();
  const requestInit = { headers: headers() };
  const transport =
    opt.transport === 'sse'
      ? new SSEClientTransport(url, { requestInit, fetch, eventSourceInit: fetch ? { fetch } : undefined })
      : new StreamableHTTPClientTransport(url, { requestInit, fetch });
  let protocolVersion;
  const setVersion = transport.setProtocolVersion?.bind(transport);
  transport.setProtocolVersion = (v) => {
    protocolVersion = v;
    setVersion?.(v);
  };

  const client = new Client({ name: 'peer-node-client', version: SDK_VERSION });
  const t0 = performance.now();
  const events = [];
  const event = (type, fields) =>
    events.push({ type, t: Date.now() / 1000, dt_ms: Math.round((performance.now() - t0) * 10) / 10, ...fields });
  client.setNotificationHandler(LoggingMessageNotificationSchema, (n) =>
    event('log', { level: n.params.level, data: n.params.data, logger: n.params.logger ?? null }),
  );
  const reqOpts = { timeout: Number(opt.timeout) * 1000 };

  await client.connect(transport, reqOpts);
  const out = {
    ok: true,
    sdk: SDK,
    transport: opt.transport,
    scenario: opt.scenario,
    protocol_version: protocolVersion ?? null,
    server_info: client.getServerVersion() ?? null,
  };
  if (opt.scenario === 'basic') {
    out.tools = (await client.listTools(undefined, reqOpts)).tools;
    out.echo = await client.callTool({ name: 'echo', arguments: { text: 'hello from node' } }, undefined, reqOpts);
    out.add = await client.callTool({ name: 'add', arguments: { a: 2, b: 3 } }, undefined, reqOpts);
    out.resources = (await client.listResources(undefined, reqOpts)).resources;
    out.resource_templates = (await client.listResourceTemplates(undefined, reqOpts)).resourceTemplates;
    out.readme = await client.readResource({ uri: 'file:///crm/readme.txt' }, reqOpts);
    out.customer_resource = await client.readResource({ uri: 'customers://42' }, reqOpts);
    out.prompts = (await client.listPrompts(undefined, reqOpts)).prompts;
    out.prompt = await client.getPrompt({ name: 'summarize_customer', arguments: { id: '42' } }, reqOpts);
  } else if (opt.scenario === 'progress') {
    events.length = 0;
    const args = { steps: Number(opt.steps), delay_ms: Number(opt['delay-ms']) };
    out.result = await client.callTool({ name: 'slow_progress', arguments: args }, undefined, {
      ...reqOpts,
      onprogress: (p) => event('progress', { progress: p.progress, total: p.total ?? null, message: p.message ?? null }),
    });
    out.events = events;
  } else if (opt.scenario === 'call') {
    if (!opt.tool) throw new Error('--scenario call needs --tool');
    out.result = await client.callTool({ name: opt.tool, arguments: JSON.parse(opt.args) }, undefined, reqOpts);
    out.events = events;
  } else if (opt.scenario === 'big') {
    const mb = Number(opt.mb);
    const start = performance.now();
    const result = await client.callTool({ name: 'big_result', arguments: { mb } }, undefined, reqOpts);
    const data = Buffer.from(result.content.map((c) => c.text ?? '').join(''), 'utf8');
    out.big = {
      mb,
      is_error: !!result.isError,
      bytes: data.length,
      sha256: crypto.createHash('sha256').update(data).digest('hex'),
      elapsed_ms: Math.round((performance.now() - start) * 10) / 10,
    };
  } else {
    throw new Error(`unknown --scenario ${opt.scenario}`);
  }
  out.http_versions = null; // not observable through fetch
  if (transport.terminateSession) await transport.terminateSession().catch(() => {});
  await client.close();
  await emit(out);
}

main().then(
  () => process.exit(0),
  (err) => fail(err),
);
