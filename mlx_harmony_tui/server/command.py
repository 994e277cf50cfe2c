"""``mlx-harmony-tui serve``: the OpenAI-compatible server on loopback by default."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.server.request_log import LEVELS

API_KEY_ENV = "MLX_HARMONY_TUI_API_KEY"
DEFAULT_MAX_CONCURRENCY = 4  # requests decoded together (engine/batch.py); the rest wait in the queue


def _require_server_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("the server needs FastAPI and uvicorn: pip install 'mlx-harmony-tui[server]'") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    from mlx_harmony_tui.faces.common import add_model_flags, add_settings_flags

    p = subparsers.add_parser("serve", help="serve an OpenAI-compatible API (POST /v1/chat/completions)")
    add_model_flags(p, remote=False)
    add_settings_flags(p)
    for action in p._actions:  # the server's own default differs from the other faces'
        if "--tools" in action.option_strings:
            action.help = ("built-in tools the server runs itself for clients that do not declare them: python,"
                           "browser, mcp (the config's MCP servers) (default: none; clients run their own functions)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help=f"require this bearer token (or set {API_KEY_ENV})")
    p.add_argument("--name", action="append", default=[], metavar="NAME",
                   help="extra name clients may use for the model (repeatable)")
    p.add_argument("--max-body-mb", type=float, default=4.0, help="largest request body (default 4 MB)")
    p.add_argument("--max-queue", type=int, default=256, help="most requests waiting for the model")
    p.add_argument("--max-concurrency", type=int, default=DEFAULT_MAX_CONCURRENCY, metavar="N",
                   help=f"requests decoded together in one batch (default {DEFAULT_MAX_CONCURRENCY}; 1: one at a "
                        "time); more wait in the queue")
    p.add_argument("--max-kv-gb", type=float, default=None, metavar="GB",
                   help="KV-cache memory all concurrent requests may hold together (default: no cap beyond "
                        "--max-concurrency); a request waits while the running ones hold more")
    p.add_argument("--log-level", choices=LEVELS, default="info",
                   help="info (default): one line per request on stderr; warning: only problems; debug: more")
    p.add_argument("--quiet", "-q", action="store_true", help="no request lines (same as --log-level warning)")
    p.set_defaults(func=run)


def _take_mcp(args: argparse.Namespace) -> bool:
    """Whether ``--tools`` names ``mcp`` (the config's MCP servers, run here); the rest stays for the others."""
    tools = getattr(args, "tools", None)
    if not tools:
        return False
    names = [n.strip() for n in tools.split(",") if n.strip()]
    if "mcp" not in names:
        return False
    args.tools = ",".join(n for n in names if n != "mcp") or "none"
    return True


def build_app(args: argparse.Namespace) -> Any:
    """Load the configured model and build the app (separate from run() so tests can use it)."""
    _require_server_extra()
    from mlx_harmony_tui.backends.local import LocalBackend
    from mlx_harmony_tui.faces.common import attach_trace, load_app_config, resolve_settings_from_args
    from mlx_harmony_tui.server.app import create_app

    if args.max_body_mb <= 0 or args.max_queue < 1 or args.max_concurrency < 1:
        raise UserError("--max-body-mb, --max-queue and --max-concurrency must be positive")
    if args.max_kv_gb is not None and args.max_kv_gb <= 0:
        raise UserError("--max-kv-gb must be positive")
    kv_budget = None if args.max_kv_gb is None else int(args.max_kv_gb * 1e9)
    cfg = load_app_config(args)
    serve_mcp = _take_mcp(args)
    settings, model = resolve_settings_from_args(args, cfg)
    backend = LocalBackend.load(model, progress=lambda f, msg: print(f"[{f:4.0%}] {msg}", file=sys.stderr),
                                app_config=cfg, force=args.force, context=settings.context_limit)
    attach_trace(backend, args)
    # clients may use the name the model was given by (e.g. a repo id) as well as its resolved name
    names = list(dict.fromkeys([backend.model_name, model, *args.name]))
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    backend.enable_batching(args.max_concurrency, kv_budget)
    run_tools = settings.builtin_tools if getattr(args, "tools", None) is not None else []  # only when asked
    if serve_mcp:
        if not cfg.mcp.servers:
            raise UserError("--tools mcp: the config has no [[mcp.servers]] (docs/tools.md)")
        run_tools = [*run_tools, "mcp"]
    return create_app({n: backend for n in names}, settings, api_key=api_key,
                      max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_waiting=args.max_queue,
                      run_tools=run_tools)


def listen(host: str, port: int) -> socket.socket:
    """Bind the server's socket before the model loads, so a taken port is a clear error at once."""
    if not 0 < port < 65536:
        raise UserError(f"--port must be 1..65535, not {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--host {host!r}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        hint = "; is another server running there? choose another with --port N" if e.errno in (
            errno.EADDRINUSE, errno.EACCES) else ""
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}{hint}") from None
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    _require_server_extra()
    import uvicorn

    from mlx_harmony_tui.server.request_log import RequestLog, setup_logging

    sock = listen(args.host, args.port)
    try:
        app = build_app(args)
        app.add_middleware(RequestLog)
        setup_logging("warning" if args.quiet else args.log_level)
        if args.host not in ("127.0.0.1", "localhost", "::1") and not (args.api_key or os.environ.get(API_KEY_ENV)):
            print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use the model",
                  file=sys.stderr)
        print(f"serving {', '.join(app.state.backends)} on http://{args.host}:{args.port}/v1", file=sys.stderr)
        uvicorn_level = "debug" if args.log_level == "debug" else "warning"
        # SIGTERM: open requests get 3 s, then are cancelled (their turns stop; docs/server.md)
        config = uvicorn.Config(app, log_level=uvicorn_level, timeout_graceful_shutdown=3)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_in_thread(app: Any, port: int | None = None) -> Iterator[str]:
    """Run the app with uvicorn on a loopback port in a background thread; yields the base URL (``.../v1``).
    The socket is bound here and handed to uvicorn: a port looked up free and bound later could be taken in
    between (by another process's outgoing connection: the tests' servers failed so, two runs at once)."""
    import uvicorn

    sock = listen("127.0.0.1", port) if port else socket.create_server(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
