"""Command line entry point. Each face registers its own subcommand; with none, the TUI starts."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from mlx_harmony_tui.errors import UserError

# (module, function) pairs: the function takes the subparsers object and adds its command.
# Imported lazily so `mlx-harmony-tui --help` does not import MLX or Textual.
COMMANDS: list[str] = [
    "mlx_harmony_tui.tui.command",
    "mlx_harmony_tui.faces.chat_command",
    "mlx_harmony_tui.faces.generate_command",
    "mlx_harmony_tui.sessions.command",
    "mlx_harmony_tui.engine.bench_command",
    "mlx_harmony_tui.server.command",
    "mlx_harmony_tui.faces.mcp_command",
    "mlx_harmony_tui.faces.models_command",
]


def build_parser() -> argparse.ArgumentParser:
    from mlx_harmony_tui import __version__

    parser = argparse.ArgumentParser(prog="mlx-harmony-tui", description="Chat with GPT-OSS models on MLX.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                continue  # that face is not built yet
            raise
        register: Callable[[argparse._SubParsersAction], None] = module.register
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from mlx_harmony_tui.faces import distributed

    argv, backend = distributed.take_flag(argv)
    parser = build_parser()
    known = set(parser._subparsers._group_actions[0].choices) if parser._subparsers else set()  # type: ignore[union-attr]
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        if "tui" in known:
            argv = ["tui", *argv]
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        if backend is not None and distributed.start(backend) != 0:
            return distributed.follow(args)
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a reader that went away is caught below, not at exit
        return rc
    except UserError as e:
        print(f"mlx-harmony-tui: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`... | head`): no traceback; point stdout at /dev/null so the interpreter's
        # final flush does not raise again, and exit as a process killed by SIGPIPE would (128 + 13)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
