"""The ``tui`` subcommand (the default when no command is given): the flags every face shares
(faces/common.py) plus --session and --theme; resolve config, settings and the backend loader, run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.faces.common import (
    add_model_flags,
    add_settings_flags,
    backend_loader,
    load_app_config_quietly,
    remote_url,
    resolve_settings_from_args,
    resume_overrides,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tui", help="full-screen chat (the default)", description="Full-screen chat.")
    add_model_flags(p)
    add_settings_flags(p)
    p.add_argument("--session", metavar="ID", help="resume a session (id or unique prefix)")
    p.add_argument("--theme", help="theme name (built-in or from a themes folder)")
    p.set_defaults(func=run)


def build_app(args: argparse.Namespace) -> Any:
    """The configured app, not yet running (tests and scripts/ui_latency.py use this). Config problems and a
    model that cannot be loaded are shown in the app, not raised here."""
    from mlx_harmony_tui import config as cfg
    from mlx_harmony_tui.tui.app import HarmonyApp

    config_path = Path(args.config).expanduser() if getattr(args, "config", None) else None
    config, problems = load_app_config_quietly(args)
    settings, model = resolve_settings_from_args(args, config, strict=False)

    def save_theme(name: str) -> None:
        """UserError when it cannot be saved (the theme still applies for this run)."""
        try:
            cfg.set_value(config_path, "theme", name)
        except cfg.ConfigError as e:
            raise UserError(f"Theme {name} is used until you quit, not saved: {e}") from None
        except OSError as e:
            raise UserError(f"Theme {name} is used until you quit, not saved: {e.strerror}") from None

    url = remote_url(args, config)
    return HarmonyApp(
        model=url or model,
        remote=url,
        loader=backend_loader(args, config),
        settings=settings,
        session_id=getattr(args, "session", None),
        keymap=config.keymap,
        theme=getattr(args, "theme", None) or config.theme,
        fallback_theme=config.theme,  # an unknown --theme falls back to the configured one
        models_dirs=config.models_dirs,
        on_theme_change=save_theme,
        startup_notes=problems,
        config_file=config_path,
        resumed_settings=resume_overrides(args),
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from mlx_harmony_tui.errors import UserError

    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        # full-screen escape codes into a file or a pipe help nobody, and keys cannot be read from one
        raise UserError("the full-screen chat needs a terminal (stdin and stdout); in pipes and scripts use "
                        "'mlx-harmony-tui chat' (line chat) or 'mlx-harmony-tui generate'")
    app = build_app(args)
    app.run()
    return 0
