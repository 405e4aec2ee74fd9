#!/usr/bin/env python3
"""MCP test client on the official Python SDK 1.x (latest 1.x, `ClientSession`, httpx).

Run with tests/peers/.venv-mcp1/bin/python. Always does the initialize handshake
offering 2025-11-25 (1.x knows no 2026-07-28). Prints one JSON document on stdout;
exit 0 when the scenario got its results (a tool result with isError=true included),
1 on a JSON-RPC error or transport failure (the error is printed as JSON).
"""

import json
import os
import sys
import time
from datetime import timedelta
from importlib import metadata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import anyio  # noqa: E402
import httpx  # noqa: E402

import client_common as cc  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.sse import sse_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from pydantic import AnyUrl  # noqa: E402

SDK = f"python mcp {metadata.version('mcp')}"


def make_factory(args, http_versions: set[str]):
    extra = cc.headers(args)

    async def record(response: httpx.Response) -> None:
        http_versions.add(response.http_version)

    def factory(headers=None, timeout=None, auth=None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers={**(headers or {}), **extra},
            timeout=timeout or httpx.Timeout(30.0, read=args.timeout),
            auth=auth,
            verify=cc.verify(args),
            http2=args.http2,
            # httpx only negotiates h2 via ALPN; on cleartext --http2 means prior knowledge (h2c).
            http1=not (args.http2 and args.url.startswith("http://")),
            event_hooks={"response": [record]},
        )

    return factory


async def run(args) -> dict:
    http_versions: set[str] = set()
    factory = make_factory(args, http_versions)
    if args.transport == "sse":
        transport = sse_client(args.url, timeout=30.0, sse_read_timeout=args.timeout, httpx_client_factory=factory)
    else:
        transport = streamable_http_client(args.url, http_client=factory())
    events = cc.Events()

    async def on_log(params) -> None:
        events.add("log", level=params.level, data=params.data, logger=params.logger)

    out: dict = {"ok": True, "sdk": SDK, "transport": args.transport, "scenario": args.scenario}
    async with transport as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(
            read, write, read_timeout_seconds=timedelta(seconds=args.timeout), logging_callback=on_log
        ) as session:
            init = await session.initialize()
            out["protocol_version"] = init.protocolVersion
            out["server_info"] = cc.dump(init.serverInfo)
            if args.scenario == "basic":
                out["tools"] = cc.dump((await session.list_tools()).tools)
                out["echo"] = cc.dump(await session.call_tool("echo", {"text": "hello from py1"}))
                out["add"] = cc.dump(await session.call_tool("add", {"a": 2, "b": 3}))
                out["resources"] = cc.dump((await session.list_resources()).resources)
                out["resource_templates"] = cc.dump((await session.list_resource_templates()).resourceTemplates)
                out["readme"] = cc.dump(await session.read_resource(AnyUrl("file:///crm/readme.txt")))
                out["customer_resource"] = cc.dump(await session.read_resource(AnyUrl("customers://42")))
                out["prompts"] = cc.dump((await session.list_prompts()).prompts)
                out["prompt"] = cc.dump(await session.get_prompt("summarize_customer", {"id": "42"}))
            elif args.scenario == "progress":

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    events.add("progress", progress=progress, total=total, message=message)

                events.t0 = time.monotonic()
                result = await session.call_tool(
                    "slow_progress", {"steps": args.steps, "delay_ms": args.delay_ms}, progress_callback=on_progress
                )
                out["result"] = cc.dump(result)
                out["events"] = events.items
            elif args.scenario == "call":
                if not args.tool:
                    raise SystemExit("--scenario call needs --tool")
                out["result"] = cc.dump(await session.call_tool(args.tool, json.loads(args.args)))
                out["events"] = events.items
            elif args.scenario == "big":
                t0 = time.monotonic()
                result = await session.call_tool("big_result", {"mb": args.mb})
                out["big"] = cc.big_summary(args.mb, result, time.monotonic() - t0)
    out["http_versions"] = sorted(http_versions)
    return out


def main() -> None:
    args = cc.parser(__doc__, ["streamable-http", "sse"]).parse_args()
    try:
        out = anyio.run(run, args)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - report every failure as JSON
        cc.fail(exc, sdk=SDK, scenario=args.scenario)
    cc.emit(out)


if __name__ == "__main__":
    main()
