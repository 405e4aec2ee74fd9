#!/usr/bin/env python3
"""MCP test server on the official Python SDK 1.x (latest 1.x, `FastMCP`).

Run with tests/peers/.venv-mcp1/bin/python. Speaks only the initialize-handshake
revisions (2024-11-05 .. 2025-11-25; no 2026-07-28 / server/discover).
--transport streamable-http (default, POST/GET/DELETE /mcp, SSE or --json-response answers)
--transport sse: legacy 2024-11-05 HTTP+SSE (GET /sse -> `endpoint` event, POST /messages/?session_id=...)
"""

import argparse
import os
import sys

import anyio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import catalogue as cat  # noqa: E402
from mcp.server.fastmcp import Context, FastMCP  # noqa: E402
from mcp.server.fastmcp.exceptions import ToolError  # noqa: E402
from mcp.server.transport_security import TransportSecuritySettings  # noqa: E402
from mcp.shared.exceptions import UrlElicitationRequiredError  # noqa: E402
from mcp.types import CallToolResult, ElicitRequestURLParams, TextContent  # noqa: E402
from serve_asgi import add_server_args, serve  # noqa: E402


def build(args: argparse.Namespace) -> FastMCP:
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False) if args.no_dns_rebinding_protection else None
    mcp = FastMCP(
        "peer-py1",
        host=args.host,  # FastMCP turns on Host/Origin checks for loopback hosts
        json_response=args.json_response,
        stateless_http=args.stateless,
        transport_security=security,
        log_level=args.log_level.upper(),
    )
    tool = mcp.tool(structured_output=False)

    @tool
    def echo(text: str) -> str:
        """Return text unchanged."""
        return text

    @tool
    def add(a: float, b: float) -> str:
        """Return a + b."""
        return cat.num(a + b)

    @tool
    async def slow_progress(steps: int, delay_ms: int, ctx: Context) -> str:
        """Send one progress notification (and one log message) per step, delay_ms apart."""
        for i in range(1, steps + 1):
            await anyio.sleep(delay_ms / 1000)
            await ctx.info(f"slow_progress step {i}/{steps}")
            await ctx.report_progress(i, steps, f"step {i}")
        return "done"

    @tool
    def big_result(mb: int) -> str:
        """Return one text content of mb MiB (64-byte numbered lines)."""
        return cat.big_text(mb)

    @tool
    def customer_lookup(id: str) -> CallToolResult:
        """Customer record with personal data, as text and structuredContent."""
        return CallToolResult(
            content=[TextContent(type="text", text=cat.customer_text(id))],
            structuredContent=cat.customer(id),
        )

    @tool
    def export_customers(limit: int) -> str:
        """limit JSONL customer records with personal data."""
        return cat.export_jsonl(limit)

    @tool
    def fail(message: str) -> str:
        """Tool execution error: result with isError=true."""
        raise ToolError(message)

    @tool
    def fail_rpc(message: str) -> str:
        """Protocol error: JSON-RPC error -32042 (the only error FastMCP 1.x lets escape a tool)."""
        raise UrlElicitationRequiredError(
            [
                ElicitRequestURLParams(
                    mode="url", message=message, url="https://crm.example.com/consent", elicitationId="fail-rpc"
                )
            ],
            message=message,
        )

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

    return mcp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_args(p)
    p.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    p.add_argument("--json-response", action="store_true", help="streamable-http: answer POSTs with JSON, not SSE")
    p.add_argument("--stateless", action="store_true", help="streamable-http: no Mcp-Session-Id (stateless_http)")
    args = p.parse_args()
    mcp = build(args)
    if args.transport == "sse":
        serve(mcp.sse_app(), args, "/sse")
    else:
        serve(mcp.streamable_http_app(), args, "/mcp")


if __name__ == "__main__":
    main()
