"""Serve an ASGI app for the Python peer servers (SDK-independent).

- binds the listening socket first (so `--port 0` works and READY carries the real port),
- uvicorn (HTTP/1.1) or hypercorn (HTTP/1.1 + HTTP/2: h2 via ALPN on TLS, h2c prior knowledge on cleartext),
- optional TLS (--certfile/--keyfile),
- prints exactly one `READY <url>` line on stdout once listening,
- exits 0 on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys


def add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (see the READY line)")
    p.add_argument("--certfile", help="PEM certificate (chain) to serve TLS")
    p.add_argument("--keyfile", help="PEM private key for --certfile")
    p.add_argument(
        "--http-server",
        choices=["uvicorn", "hypercorn"],
        default="uvicorn",
        help="uvicorn speaks HTTP/1.1 only; hypercorn adds HTTP/2 (ALPN h2 with TLS, h2c prior knowledge without)",
    )
    p.add_argument(
        "--no-dns-rebinding-protection",
        action="store_true",
        help="the SDK enables Host/Origin checks when --host is a loopback address; this turns them off",
    )
    p.add_argument("--log-level", default="warning")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # An explicit IPPROTO_TCP: asyncio only disables Nagle (TCP_NODELAY) on sockets whose
    # protocol number says TCP, and create_server() leaves it 0 (44 ms stalls on keep-alive).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _url(args: argparse.Namespace, port: int, path: str) -> str:
    scheme = "https" if args.certfile else "http"
    host = f"[{args.host}]" if ":" in args.host else args.host
    return f"{scheme}://{host}:{port}{path}"


def serve(app, args: argparse.Namespace, path: str) -> None:
    if bool(args.certfile) != bool(args.keyfile):
        sys.exit("--certfile and --keyfile go together")
    sock = _bind(args.host, args.port)
    url = _url(args, sock.getsockname()[1], path)
    if args.http_server == "hypercorn":
        asyncio.run(_hypercorn(app, args, sock, url))
    else:
        asyncio.run(_uvicorn(app, args, sock, url))
    sys.exit(0)


def _ready(url: str) -> None:
    print(f"READY {url}", flush=True)


async def _uvicorn(app, args, sock, url) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        # uvicorn re-raises the captured signal after a graceful shutdown (exit status 143);
        # we want a clean exit 0 instead.
        @contextlib.contextmanager
        def capture_signals(self):
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self.handle_exit)
            yield

    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
        timeout_graceful_shutdown=1,
        lifespan="on",
    )
    server = Server(config)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.01)
        _ready(url)

    task = asyncio.create_task(announce())
    await server.serve(sockets=[sock])
    task.cancel()


async def _hypercorn(app, args, sock, url) -> None:
    from hypercorn.asyncio import serve as hserve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    if args.certfile:
        config.certfile, config.keyfile = args.certfile, args.keyfile
        config.alpn_protocols = ["h2", "http/1.1"]
    config.loglevel = args.log_level.upper()
    config.accesslog = None
    config.graceful_timeout = 1.0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The socket is already listening: connections queue in its backlog until hypercorn accepts them.
    _ready(url)
    await hserve(app, config, shutdown_trigger=stop.wait)
