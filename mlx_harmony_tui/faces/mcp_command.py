"""``mlx-harmony-tui mcp list``: start the configured MCP servers, show each one's state and tools, stop them.

The quickest way to check an ``[[mcp.servers]]`` entry before chatting: a server that cannot start shows
why, and its stderr is in the log file named below.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlx_harmony_tui import paths


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("mcp", help="MCP servers from the config: their state and tools")
    p.add_argument("--config", type=Path, default=None, help="config file (default: the app's config.toml)")
    p.add_argument("--profile", default=None, help="config profile")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    after = argparse.ArgumentParser(add_help=False)  # also after the action, as `models list --config F`
    after.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="config file")
    after.add_argument("--profile", default=argparse.SUPPRESS, help="config profile")
    a = sub.add_parser("list", help="start every configured server, list its tools, stop it", parents=[after])
    a.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the servers to start")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    from mlx_harmony_tui.faces.common import load_app_config
    from mlx_harmony_tui.tools.mcp import McpHub

    cfg = load_app_config(args)
    servers = [s for s in cfg.mcp.servers if s.enabled]
    if not servers:
        where = cfg.source or paths.config_file()
        print(f"no MCP servers configured (add [[mcp.servers]] to {where}; see docs/tools.md)")
        return 0
    log_dir = paths.cache_dir() / "mcp-logs"
    hub = McpHub(servers, log_dir=log_dir).start()
    try:
        hub.wait_ready(args.timeout)
        states = hub.states()
    finally:
        hub.close()
    if args.json:
        out = [
            {"name": s.name, "transport": s.transport, "status": s.status, "error": s.error,
             "tools": [{"name": t.function_name, "description": t.description} for t in s.tools]}
            for s in states
        ]  # fmt: skip
        print(json.dumps(out, indent=2))
    else:
        for s in states:
            status = "starting (no answer yet)" if s.status == "starting" else s.status
            print(f"{s.name} [{s.transport}]: {status}" + (f": {s.error}" if s.error else ""))
            for t in s.tools:
                desc = t.description.strip().splitlines()[0] if t.description.strip() else ""
                print(f"  functions.{t.function_name}" + (f"  {desc}" if desc else ""))
            if s.status != "ready" and s.transport == "stdio":
                print(f"  (its stderr: {log_dir / (s.name + '.log')})")
    return 0 if all(s.status == "ready" for s in states) else 1


__all__ = ["register"]
