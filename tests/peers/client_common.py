"""SDK-independent parts of py1_client.py and py2_client.py: CLI, TLS context, JSON output."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import ssl
import sys
import time
import traceback
from typing import Any


def parser(doc: str, transports: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="MCP endpoint (…/mcp) or, for --transport sse, the SSE endpoint (…/sse)")
    p.add_argument("--transport", choices=transports, default=transports[0])
    p.add_argument("--cacert", help="PEM CA bundle that signs the server certificate")
    p.add_argument("--header", action="append", default=[], metavar="'K: V'", help="extra HTTP header, repeatable")
    p.add_argument("--http2", action="store_true", help="offer HTTP/2 (ALPN h2 on https; h2c prior knowledge on http)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request read timeout, seconds")
    p.add_argument("--scenario", choices=["basic", "progress", "call", "big", "lists", "pii", "export"], default="basic")
    p.add_argument("--tool", help="call: tool name")
    p.add_argument("--args", default="{}", help="call: tool arguments as a JSON object")
    p.add_argument("--mb", type=int, default=1, help="big: MiB to request")
    p.add_argument("--limit", type=int, default=1000, help="export: records to request")
    p.add_argument("--steps", type=int, default=3, help="progress: steps")
    p.add_argument("--delay-ms", type=int, default=200, help="progress: delay between steps")
    return p


def headers(args: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    for h in args.header:
        k, sep, v = h.partition(":")
        if not sep or not k.strip():
            sys.exit(f"bad --header {h!r}, expected 'Name: value'")
        out[k.strip()] = v.strip()
    return out


def verify(args: argparse.Namespace) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=args.cacert) if args.cacert else True


def dump(obj: Any) -> Any:
    """Pydantic models (both SDK generations) to JSON-ready data, wire field names."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(obj, (list, tuple)):
        return [dump(o) for o in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    return obj


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def big_summary(mb: int, result: Any, elapsed: float) -> dict[str, Any]:
    data = text_of(result).encode()
    return {
        "mb": mb,
        "is_error": bool(getattr(result, "is_error", None) or getattr(result, "isError", None)),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "elapsed_ms": round(elapsed * 1000, 1),
    }


EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def export_summary(limit: int, result: Any, elapsed: float) -> dict[str, Any]:
    """What an export result looked like, without printing megabytes: record count, e-mail
    addresses left in clear, masks seen."""
    text = text_of(result)
    lines = [line for line in text.split("\n") if line]
    return {
        "limit": limit,
        "is_error": bool(getattr(result, "is_error", None) or getattr(result, "isError", None)),
        "records": len(lines),
        "parsed": sum(1 for line in lines if _is_json(line)),
        "emails_in_clear": len(EMAIL_RE.findall(text)),
        "email_masks": text.count("[EMAIL"),
        "iban_masks": text.count("[IBAN"),
        "first": lines[0] if lines else None,
        "bytes": len(text.encode()),
        "elapsed_ms": round(elapsed * 1000, 1),
    }


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


class Events:
    """Progress and log notifications with their arrival times."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.items: list[dict[str, Any]] = []

    def add(self, kind: str, **fields: Any) -> None:
        now = time.monotonic()
        self.items.append({"type": kind, "t": time.time(), "dt_ms": round((now - self.t0) * 1000, 1), **fields})


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def fail(exc: BaseException, **extra: Any) -> None:
    """Print the failure as JSON on stdout and exit 1."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    err: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    inner = getattr(exc, "error", None)  # McpError (1.x) / MCPError (2.x) carry ErrorData
    if inner is not None and hasattr(inner, "code"):
        err["code"] = inner.code
        err["message"] = inner.message
        if getattr(inner, "data", None) is not None:
            err["data"] = inner.data
    emit({"ok": False, "error": err, **extra})
    traceback.print_exception(exc, file=sys.stderr)
    sys.exit(1)
