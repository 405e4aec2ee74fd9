#!/usr/bin/env node
// MCP test server on the official TypeScript SDK (@modelcontextprotocol/sdk, pinned in package.json).
//
// The TS SDK 1.x speaks the initialize-handshake revisions only (2024-10-07 .. 2025-11-25;
// no 2026-07-28 / server/discover).
//   --transport streamable-http (default): POST/GET/DELETE /mcp, one McpServer per Mcp-Session-Id
//       (--stateless: no session id, a fresh server per request; --json-response: JSON answers, no SSE)
//   --transport sse: legacy 2024-11-05 HTTP+SSE (GET /sse -> `endpoint` event, POST /messages?sessionId=...)
//   --http2: serve with node:http2 (TLS: ALPN h2 + HTTP/1.1 fallback; cleartext: h2c prior knowledge only)
// Prints `READY <url>` once listening; exits 0 on SIGTERM/SIGINT.

import fs from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import { parseArgs } from 'node:util';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { McpServer, ResourceTemplate } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { SSEServerTransport } from '@modelcontextprotocol/sdk/server/sse.js';
import { McpError, ErrorCode } from '@modelcontextprotocol/sdk/types.js';
import * as cat from './catalogue.mjs';

const SDK_VERSION = JSON.parse(
  fs.readFileSync(new URL('./node_modules/@modelcontextprotocol/sdk/package.json', import.meta.url)),
).version;

const { values: opt } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
    certfile: { type: 'string' },
    keyfile: { type: 'string' },
    transport: { type: 'string', default: 'streamable-http' },
    'json-response': { type: 'boolean', default: false },
    stateless: { type: 'boolean', default: false },
    http2: { type: 'boolean', default: false },
  },
});
if (!['streamable-http', 'sse'].includes(opt.transport)) die(`unknown --transport ${opt.transport}`);
if (!!opt.certfile !== !!opt.keyfile) die('--certfile and --keyfile go together');

function die(msg) {
  console.error(msg);
  process.exit(2);
}

const text = (t) => ({ content: [{ type: 'text', text: t }] });

function buildServer() {
  const server = new McpServer({ name: 'peer-node', version: SDK_VERSION }, { capabilities: { logging: {} } });

  server.registerTool('echo', { description: 'Return text unchanged.', inputSchema: { text: z.string() } }, ({ text: t }) =>
    text(t),
  );
  server.registerTool('add', { description: 'Return a + b.', inputSchema: { a: z.number(), b: z.number() } }, ({ a, b }) =>
    text(cat.num(a + b)),
  );
  server.registerTool(
    'slow_progress',
    {
      description: 'Send one progress notification (and one log message) per step, delay_ms apart.',
      inputSchema: { steps: z.number().int(), delay_ms: z.number().int() },
    },
    async ({ steps, delay_ms }, extra) => {
      const token = extra._meta?.progressToken;
      for (let i = 1; i <= steps; i++) {
        await sleep(delay_ms);
        await extra.sendNotification({
          method: 'notifications/message',
          params: { level: 'info', data: `slow_progress step ${i}/${steps}` },
        });
        if (token !== undefined) {
          await extra.sendNotification({
            method: 'notifications/progress',
            params: { progressToken: token, progress: i, total: steps, message: `step ${i}` },
          });
        }
      }
      return text('done');
    },
  );
  server.registerTool(
    'big_result',
    { description: 'Return one text content of mb MiB (64-byte numbered lines).', inputSchema: { mb: z.number().int() } },
    ({ mb }) => text(cat.bigText(mb)),
  );
  server.registerTool(
    'customer_lookup',
    { description: 'Customer record with personal data, as text and structuredContent.', inputSchema: { id: z.string() } },
    ({ id }) => ({ ...text(cat.customerText(id)), structuredContent: cat.customer(id) }),
  );
  server.registerTool(
    'export_customers',
    { description: 'limit JSONL customer records with personal data.', inputSchema: { limit: z.number().int() } },
    ({ limit }) => text(cat.exportJsonl(limit)),
  );
  server.registerTool(
    'fail',
    { description: 'Tool execution error: result with isError=true.', inputSchema: { message: z.string() } },
    ({ message }) => {
      throw new Error(message);
    },
  );
  server.registerTool(
    'fail_rpc',
    {
      description: 'Protocol error: JSON-RPC error -32042 (the only error McpServer lets escape a tool).',
      inputSchema: { message: z.string() },
    },
    ({ message }) => {
      throw new McpError(ErrorCode.UrlElicitationRequired, message, {
        elicitations: [{ mode: 'url', message, url: 'https://crm.example.com/consent', elicitationId: 'fail-rpc' }],
      });
    },
  );
  server.registerResource(
    'customer_resource',
    new ResourceTemplate('customers://{id}', { list: undefined }),
    { description: 'A customer record.', mimeType: 'application/json' },
    (uri, { id }) => ({ contents: [{ uri: uri.href, mimeType: 'application/json', text: cat.customerJson(id) }] }),
  );
  server.registerResource('readme', cat.README_URI, { description: 'CRM readme.', mimeType: 'text/plain' }, (uri) => ({
    contents: [{ uri: uri.href, mimeType: 'text/plain', text: cat.README_TEXT }],
  }));
  server.registerPrompt(
    'summarize_customer',
    { description: 'Ask for a summary of a customer (message contains PII).', argsSchema: { id: z.string() } },
    ({ id }) => ({ messages: [{ role: 'user', content: { type: 'text', text: cat.promptText(id) } }] }),
  );
  return server;
}

function sendJsonRpcError(res, status, code, message) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

// ---- streamable HTTP -------------------------------------------------------------------------
const sessions = new Map(); // Mcp-Session-Id -> transport

async function handleStreamable(req, res) {
  if (opt.stateless) {
    const server = buildServer();
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: undefined,
      enableJsonResponse: opt['json-response'],
    });
    res.on('close', () => server.close()); // closes the transport too
    await server.connect(transport);
    return transport.handleRequest(req, res);
  }
  const sid = req.headers['mcp-session-id'];
  if (sid) {
    const transport = sessions.get(sid);
    if (!transport) return sendJsonRpcError(res, 404, -32001, 'Session not found');
    return transport.handleRequest(req, res);
  }
  if (req.method !== 'POST') return sendJsonRpcError(res, 400, -32000, 'Bad Request: No valid session ID provided');
  // No session id: must be an initialize request (the transport rejects anything else with 400).
  const server = buildServer();
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: () => randomUUID(),
    enableJsonResponse: opt['json-response'],
    onsessioninitialized: (id) => sessions.set(id, transport),
  });
  // (connect() chains this; calling server.close() from here would recurse)
  transport.onclose = () => {
    if (transport.sessionId) sessions.delete(transport.sessionId);
  };
  await server.connect(transport);
  return transport.handleRequest(req, res);
}

// ---- legacy HTTP+SSE -------------------------------------------------------------------------
const sseSessions = new Map(); // sessionId -> SSEServerTransport

async function handleSse(req, res, url) {
  if (req.method === 'GET' && url.pathname === '/sse') {
    const transport = new SSEServerTransport('/messages', res);
    sseSessions.set(transport.sessionId, transport);
    res.on('close', () => sseSessions.delete(transport.sessionId));
    await buildServer().connect(transport);
    return;
  }
  if (req.method === 'POST' && url.pathname === '/messages') {
    const transport = sseSessions.get(url.searchParams.get('sessionId') ?? '');
    if (!transport) return sendJsonRpcError(res, 404, -32001, 'Session not found');
    return transport.handlePostMessage(req, res);
  }
  res.writeHead(404).end();
}

// ---- HTTP server -----------------------------------------------------------------------------
async function onRequest(req, res) {
  try {
    const url = new URL(req.url, 'http://localhost');
    if (opt.transport === 'sse') return await handleSse(req, res, url);
    if (url.pathname !== '/mcp') return res.writeHead(404).end();
    return await handleStreamable(req, res);
  } catch (err) {
    console.error(err);
    if (!res.headersSent) sendJsonRpcError(res, 500, -32603, 'Internal server error');
    else res.end();
  }
}

const tls = opt.certfile ? { cert: fs.readFileSync(opt.certfile), key: fs.readFileSync(opt.keyfile) } : null;
let httpServer;
if (opt.http2) {
  httpServer = tls ? http2.createSecureServer({ ...tls, allowHTTP1: true }, onRequest) : http2.createServer(onRequest);
} else {
  httpServer = tls ? https.createServer(tls, onRequest) : http.createServer(onRequest);
}

httpServer.listen(Number(opt.port), opt.host, () => {
  const { port } = httpServer.address();
  const host = opt.host.includes(':') ? `[${opt.host}]` : opt.host;
  const path = opt.transport === 'sse' ? '/sse' : '/mcp';
  process.stdout.write(`READY ${tls ? 'https' : 'http'}://${host}:${port}${path}\n`);
});

function shutdown() {
  for (const t of sessions.values()) t.close().catch(() => {});
  for (const t of sseSessions.values()) t.close().catch(() => {});
  httpServer.close(() => process.exit(0));
  httpServer.closeAllConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
