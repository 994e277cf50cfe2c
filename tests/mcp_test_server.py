"""A real MCP server for the tests (stdio, the official SDK): one tool that echoes, one that fails, and one
that waits (for cancellation and death-in-flight tests). Run as ``python tests/mcp_test_server.py``."""

from __future__ import annotations

import time

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("testsrv")


@server.tool()
def echo(text: str) -> str:
    """Echo the text back, prefixed with 'echo:'."""
    return f"echo: {text}"


@server.tool()
def fail(reason: str = "on purpose") -> str:
    """Always fails."""
    raise ToolError(f"failed {reason}")


@server.tool()
def sleep(seconds: float = 30.0) -> str:
    """Sleep, then answer."""
    time.sleep(seconds)
    return "slept"


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:  # a port: serve streamable HTTP on 127.0.0.1:PORT/mcp instead of stdio
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]), streamable_http_path="/mcp")
    else:
        server.run()
