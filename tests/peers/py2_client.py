#!/usr/bin/env python3
"""MCP test client on the official Python SDK 2.x (mcp==2.3.0, `mcp.Client`, httpx2).

Run with tests/peers/.venv-mcp2/bin/python. Prints one JSON document on stdout;
exit 0 when the scenario got its results (a tool result with isError=true
included), 1 on a JSON-RPC error or transport failure (the error is printed as JSON).

--mode auto (SDK default) first POSTs `server/discover` at 2026-07-28 and falls back
to the initialize handshake (2025-11-25) if the server is not modern;
--mode legacy goes straight to initialize; --mode 2026-07-28 never handshakes.
"""

import os
import sys
import time
from importlib import metadata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import anyio  # noqa: E402
import httpx2  # noqa: E402
import json  # noqa: E402

import client_common as cc  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.sse import sse_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402
from mcp.types import PromptReference  # noqa: E402


SDK = f"python mcp {metadata.version('mcp')}"


def make_factory(args, http_versions: set[str]):
    extra = cc.headers(args)

    async def record(response: httpx2.Response) -> None:
        http_versions.add(response.http_version)

    def factory(headers=None, timeout=None, auth=None) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            headers={**(headers or {}), **extra},
            timeout=timeout or httpx2.Timeout(30.0, read=args.timeout),
            auth=auth,
            verify=cc.verify(args),
            http2=args.http2,
            # httpx2 only negotiates h2 via ALPN; on cleartext --http2 means prior knowledge (h2c).
            http1=not (args.http2 and args.url.startswith("http://")),
            event_hooks={"response": [record]},
        )

    return factory


async def run(args) -> dict:
    http_versions: set[str] = set()
    factory = make_factory(args, http_versions)
    if args.transport == "sse":
        transport = sse_client(args.url, timeout=30.0, sse_read_timeout=args.timeout, httpx_client_factory=factory)
        mode = "legacy"  # the HTTP+SSE transport only carries the initialize-handshake era
    else:
        transport = streamable_http_client(args.url, http_client=factory())
        mode = args.mode
    events = cc.Events()

    async def on_log(params) -> None:
        events.add("log", level=params.level, data=params.data, logger=params.logger)

    out: dict = {"ok": True, "sdk": SDK, "transport": args.transport, "scenario": args.scenario}
    async with Client(
        transport,
        mode=mode,
        logging_callback=on_log,
        log_level="debug",  # 2026-07-28: opt in to notifications/message per request
        read_timeout_seconds=args.timeout,
        cache=None,
    ) as client:
        out["protocol_version"] = client.protocol_version
        out["server_info"] = cc.dump(client.server_info)
        if args.scenario == "basic":
            out["tools"] = cc.dump((await client.list_tools()).tools)
            out["echo"] = cc.dump(await client.call_tool("echo", {"text": "hello from py2"}))
            out["add"] = cc.dump(await client.call_tool("add", {"a": 2, "b": 3}))
            out["resources"] = cc.dump((await client.list_resources()).resources)
            out["resource_templates"] = cc.dump((await client.list_resource_templates()).resource_templates)
            out["readme"] = cc.dump(await client.read_resource("file:///crm/readme.txt"))
            out["customer_resource"] = cc.dump(await client.read_resource("customers://42"))
            out["prompts"] = cc.dump((await client.list_prompts()).prompts)
            out["prompt"] = cc.dump(await client.get_prompt("summarize_customer", {"id": "42"}))
        elif args.scenario == "lists":
            # Only list calls: what the caller is shown (used by the policy tests).
            out["tools"] = cc.dump((await client.list_tools()).tools)
            out["resources"] = cc.dump((await client.list_resources()).resources)
            out["resource_templates"] = cc.dump((await client.list_resource_templates()).resource_templates)
            out["prompts"] = cc.dump((await client.list_prompts()).prompts)
        elif args.scenario == "progress":

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                events.add("progress", progress=progress, total=total, message=message)

            events.t0 = time.monotonic()
            result = await client.call_tool(
                "slow_progress", {"steps": args.steps, "delay_ms": args.delay_ms}, progress_callback=on_progress
            )
            out["result"] = cc.dump(result)
            out["events"] = events.items
        elif args.scenario == "call":
            if not args.tool:
                raise SystemExit("--scenario call needs --tool")
            out["result"] = cc.dump(await client.call_tool(args.tool, json.loads(args.args)))
            out["events"] = events.items
        elif args.scenario == "pii":
            # Personal data in every kind of answer: tool result (content, embedded resource,
            # resource link, structuredContent), log and progress notifications, a tool error,
            # a JSON-RPC error, a resource, a prompt, completion values.
            async def on_pii_progress(progress: float, total: float | None, message: str | None) -> None:
                events.add("progress", progress=progress, total=total, message=message)

            out["result"] = cc.dump(
                await client.call_tool(
                    "pii_everywhere", {"email": "jane.doe@example.com"}, progress_callback=on_pii_progress
                )
            )
            # The SDK may resolve the result before it has run the notification callbacks of
            # the same stream (when they arrive in one read): let them run.
            await anyio.sleep(0.3)
            out["tool_error"] = cc.dump(
                await client.call_tool("fail", {"message": "no mailbox for jane.doe@example.com"})
            )
            try:
                await client.call_tool("fail_rpc", {"message": "lookup of jane.doe@example.com failed"})
                out["rpc_error"] = None
            except MCPError as exc:
                out["rpc_error"] = {"code": exc.error.code, "message": exc.error.message, "data": exc.error.data}
            out["resource"] = cc.dump(await client.read_resource("customers://42"))
            out["prompt"] = cc.dump(await client.get_prompt("summarize_customer", {"id": "42"}))
            out["completion"] = cc.dump(
                await client.complete(PromptReference(type="ref/prompt", name="summarize_customer"), {"name": "id", "value": "4"})
            )
            out["events"] = events.items
        elif args.scenario == "export":
            t0 = time.monotonic()
            result = await client.call_tool("export_customers", {"limit": args.limit})
            out["export"] = cc.export_summary(args.limit, result, time.monotonic() - t0)
        elif args.scenario == "big":
            t0 = time.monotonic()
            result = await client.call_tool("big_result", {"mb": args.mb})
            out["big"] = cc.big_summary(args.mb, result, time.monotonic() - t0)
    out["http_versions"] = sorted(http_versions)
    return out


def main() -> None:
    p = cc.parser(__doc__, ["streamable-http", "sse"])
    p.add_argument("--mode", default="auto", help="auto | legacy | 2026-07-28 (streamable-http only)")
    args = p.parse_args()
    try:
        out = anyio.run(run, args)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - report every failure as JSON
        cc.fail(exc, sdk=SDK, scenario=args.scenario)
    cc.emit(out)


if __name__ == "__main__":
    main()
