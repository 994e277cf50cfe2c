"""The ``tui`` subcommand (the default when no command is given): resolve config, backend and settings, run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from mlx_harmony_tui.faces.common import add_trace_flags, attach_trace, check_profile


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tui", help="full-screen chat (the default)", description="Full-screen chat.")
    p.add_argument("--model", help="model folder, or 'demo' (default: config 'model', else demo)")
    p.add_argument("--remote", metavar="URL", help="use an OpenAI-compatible server instead of a local model")
    p.add_argument("--api-key", help="API key for --remote (default: the env var named in config remote)")
    p.add_argument("--session", metavar="ID", help="resume a session (id or unique prefix)")
    p.add_argument("--profile", help="config profile to use")
    p.add_argument("--config", metavar="PATH", help="config file (default: the user config file)")
    p.add_argument("--theme", help="theme name (built-in or from a themes folder)")
    add_trace_flags(p)
    p.set_defaults(func=run)


def build_app(args: argparse.Namespace) -> Any:
    """The configured app, not yet running (tests and scripts/ui_latency.py use this)."""
    from mlx_harmony_tui import config as cfg
    from mlx_harmony_tui.tui.app import HarmonyApp

    config_path = Path(args.config).expanduser() if getattr(args, "config", None) else None
    config, problems = cfg.load_config(config_path, getattr(args, "profile", None))
    check_profile(config, getattr(args, "profile", None))
    model = getattr(args, "model", None) or config.model or "demo"
    if model == "demo":  # the shipped demo folder holds its generation_config.json defaults
        from mlx_harmony_tui.demo import demo_model_path

        model_dir: Path | None = demo_model_path()
    else:
        model_dir = Path(model).expanduser() if model != "tiny" else None
    settings = cfg.settings_from_config(
        config, model_dir=model_dir if model_dir is not None and model_dir.is_dir() else None
    )
    remote = getattr(args, "remote", None) or (config.remote.endpoint or None)
    loader = None
    if remote:
        api_key = getattr(args, "api_key", None) or os.environ.get(config.remote.api_key_env or "")
        remote_model = getattr(args, "model", None) or config.remote.model or None

        def loader(_model: str, progress: Any) -> Any:
            from mlx_harmony_tui.backends.remote import RemoteBackend

            progress(0.2, f"connecting to {remote}")
            backend = RemoteBackend(remote, api_key=api_key, model=remote_model, app_config=config)  # its tools
            _ = backend.model_name  # fails here, clearly, if the server cannot be reached
            return backend

        model = remote
    else:

        def loader(model_name: str, progress: Any) -> Any:
            from mlx_harmony_tui.backends.local import LocalBackend

            backend = LocalBackend.load(model_name, progress=progress, app_config=config)  # config's tools too
            attach_trace(backend, args)
            return backend

    def save_theme(name: str) -> None:
        try:
            cfg.set_value(config_path, "theme", name)
        except (OSError, cfg.ConfigError):
            pass  # the theme still applies for this run

    return HarmonyApp(
        model=model,
        loader=loader,
        settings=settings,
        session_id=getattr(args, "session", None),
        keymap=config.keymap,
        theme=getattr(args, "theme", None) or config.theme,
        models_dirs=config.models_dirs,
        on_theme_change=save_theme,
        startup_notes=[str(p) for p in problems],
        config_file=config_path,
    )


def run(args: argparse.Namespace) -> int:
    app = build_app(args)
    app.run()
    return 0
