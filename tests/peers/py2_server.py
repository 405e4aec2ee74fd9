#!/usr/bin/env python3
"""MCP test server on the official Python SDK 2.x (mcp==2.3.0, `MCPServer`).

Run with tests/peers/.venv-mcp2/bin/python. Streamable HTTP serves both protocol
eras on one endpoint: 2026-07-28 (stateless, `server/discover`) and the
initialize-handshake revisions 2024-11-05 .. 2025-11-25. `--transport sse` is the
legacy 2024-11-05 HTTP+SSE transport (GET /sse, POST /messages/?session_id=...).
"""

import argparse
import json
import os
import sys

import anyio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import catalogue as cat  # noqa: E402
from mcp.server.mcpserver import Context, MCPServer  # noqa: E402
from mcp.server.mcpserver.exceptions import ToolError  # noqa: E402
from mcp.server.transport_security import TransportSecuritySettings  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402
from mcp.types import (  # noqa: E402
    CallToolResult,
    Completion,
    EmbeddedResource,
    ResourceLink,
    TextContent,
    TextResourceContents,
)
from mcp_types import INTERNAL_ERROR  # noqa: E402
from serve_asgi import add_server_args, serve  # noqa: E402

mcp = MCPServer("peer-py2", version="2.3.0")

# --log-calls: one JSON line on stdout per call of `echo` / `export_customers`, so tests can see
# exactly which calls reached the server (e.g. none before an approval).
LOG_CALLS = False


def log_call(name: str, arguments: dict) -> None:
    if LOG_CALLS:
        print(json.dumps({"event": "tool_call", "name": name, "arguments": arguments}), flush=True)


@mcp.tool(structured_output=False)
def echo(text: str) -> str:
    """Return text unchanged."""
    log_call("echo", {"text": text})
    return text


@mcp.tool(structured_output=False)
def add(a: float, b: float) -> str:
    """Return a + b."""
    return cat.num(a + b)


@mcp.tool(structured_output=False)
async def slow_progress(steps: int, delay_ms: int, ctx: Context) -> str:
    """Send one progress notification (and one log message) per step, delay_ms apart."""
    for i in range(1, steps + 1):
        await anyio.sleep(delay_ms / 1000)
        await ctx.info(f"slow_progress step {i}/{steps}")
        await ctx.report_progress(i, steps, f"step {i}")
    return "done"


@mcp.tool(structured_output=False)
def big_result(mb: int) -> str:
    """Return one text content of mb MiB (64-byte numbered lines)."""
    return cat.big_text(mb)


@mcp.tool(structured_output=False)
def customer_lookup(id: str) -> CallToolResult:
    """Customer record with personal data, as text and structuredContent."""
    return CallToolResult(
        content=[TextContent(type="text", text=cat.customer_text(id))],
        structured_content=cat.customer(id),
    )


@mcp.tool(structured_output=False)
def export_customers(limit: int) -> str:
    """limit JSONL customer records with personal data."""
    log_call("export_customers", {"limit": limit})
    return cat.export_jsonl(limit)


@mcp.tool(structured_output=False)
def fail(message: str) -> str:
    """Tool execution error: result with isError=true."""
    raise ToolError(message)  # a plain exception would be reported without its message


@mcp.tool(structured_output=False)
def fail_rpc(message: str) -> str:
    """Protocol error: a JSON-RPC error response (code -32603) instead of a result."""
    raise MCPError(code=INTERNAL_ERROR, message=message, data={"tool": "fail_rpc"})


@mcp.tool(structured_output=False)
async def pii_everywhere(email: str, ctx: Context) -> CallToolResult:
    """Personal data in every place a tool answer can carry it: a log message, a progress
    message, text content, an embedded resource, a resource link and structuredContent."""
    await ctx.info(cat.pii_log(email))
    await ctx.report_progress(1, 2, cat.pii_progress(email))
    return CallToolResult(
        content=[
            TextContent(type="text", text=cat.customer_text("42")),
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri="customers://42", mime_type="application/json", text=cat.customer_json("42")
                ),
            ),
            ResourceLink(
                type="resource_link",
                uri="customers://42",
                name="customer-42",
                description=cat.pii_link_description(email),
            ),
        ],
        structured_content=cat.customer("42"),
    )


@mcp.completion()
async def complete(ref, argument, context):
    """Completion values carry personal data (customer e-mail addresses)."""
    return Completion(values=cat.completion_values(argument.value), total=None, has_more=False)


@mcp.resource("customers://{id}", mime_type="application/json")
def customer_resource(id: str) -> str:
    """A customer record."""
    return cat.customer_json(id)


@mcp.resource(cat.README_URI, name="readme", mime_type="text/plain")
def readme() -> str:
    """CRM readme."""
    return cat.README_TEXT


@mcp.prompt()
def summarize_customer(id: str) -> str:
    """Ask for a summary of a customer (message contains PII)."""
    return cat.prompt_text(id)


def debug_routes(app, compress: str):
    """--debug-routes: plain HTTP answers beside MCP that carry personal data, for the
    redaction tests: GET /debug (text/plain) and GET /mcp?debug=1 (JSON, not an SSE stream),
    named in a Content-Disposition; and on every answer, MCP ones too, an X-Debug-Caller
    header with an e-mail address.
    --compress gzip: when the request accepts gzip (`accept`), or whatever it accepts
    (`always`). Each such request prints one JSON line: its path and Accept-Encoding."""
    import gzip

    async def with_debug_header(send, message):
        # Every answer also names the last caller in a header, as a careless server might.
        if message["type"] == "http.response.start":
            message = dict(message, headers=list(message.get("headers", [])) + [(b"x-debug-caller", cat.debug_caller().encode())])
        await send(message)

    async def wrapped(scope, receive, send_plain):
        async def send(message):
            await with_debug_header(send_plain, message)

        path = scope.get("path", "")
        debug_get = path == "/mcp" and scope.get("method") == "GET" and b"debug=1" in scope.get("query_string", b"")
        if scope["type"] != "http" or not (path in ("/debug", "/debug.png", "/debug16") or debug_get):
            await app(scope, receive, send if scope["type"] == "http" else send_plain)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        accept = headers.get("accept-encoding", "")
        print(json.dumps({"event": "debug_request", "path": path, "accept_encoding": accept}), flush=True)
        if path == "/debug":
            body, ctype = cat.debug_text().encode(), b"text/plain; charset=utf-8"
        elif path == "/debug.png":
            # Not text: bytes that are no UTF-8, with the text inside.
            body, ctype = b"\x89PNG\r\n\x1a\n\xff\xfe" + cat.debug_text().encode(), b"image/png"
        elif path == "/debug16":
            body, ctype = cat.debug_text().encode("utf-16-le"), b"text/plain; charset=utf-16le"
        else:
            # (A BSN sent as a JSON number, as a careless server serialises a numeric column, and
            # a map keyed by e-mail address.)
            body = {"error": cat.debug_text(), "bsn": 111222333, "count": 111222333, "by_caller": {cat.debug_caller(): 1}}
            body, ctype = json.dumps(body).encode(), b"application/json"
        out = [(b"content-type", ctype), (b"content-disposition", f'attachment; filename="{cat.debug_caller()}.txt"'.encode())]
        if compress == "always" or (compress == "accept" and "gzip" in accept):
            body = gzip.compress(body)
            if compress == "always":
                # Two header lines: the second one says what the body is.
                out.append((b"content-encoding", b"identity"))
            out.append((b"content-encoding", b"gzip"))
        out.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": out})
        await send({"type": "http.response.body", "body": body})

    return wrapped


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_args(p)
    p.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    p.add_argument("--json-response", action="store_true", help="streamable-http: answer POSTs with JSON, not SSE")
    p.add_argument("--stateless", action="store_true", help="streamable-http: no Mcp-Session-Id (stateless_http)")
    p.add_argument("--log-calls", action="store_true", help="print a JSON line per echo/export_customers call")
    p.add_argument("--debug-routes", action="store_true", help="GET /debug and GET /mcp?debug=1: plain answers with personal data")
    p.add_argument("--compress", choices=["never", "accept", "always"], default="never", help="--debug-routes: gzip them")
    args = p.parse_args()
    global LOG_CALLS
    LOG_CALLS = args.log_calls
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False) if args.no_dns_rebinding_protection else None
    if args.transport == "sse":
        app = mcp.sse_app(transport_security=security, host=args.host)
        path = "/sse"
    else:
        app = mcp.streamable_http_app(
            json_response=args.json_response,
            stateless_http=args.stateless,
            transport_security=security,
            host=args.host,
        )
        path = "/mcp"
    if args.debug_routes:
        app = debug_routes(app, args.compress)
    serve(app, args, path)


if __name__ == "__main__":
    main()
