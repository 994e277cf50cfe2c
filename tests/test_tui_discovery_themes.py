"""Theme files (package, repo, user config dir); model discovery is tested in test_catalog.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_harmony_tui import paths
from mlx_harmony_tui.tui.app import HarmonyApp
from mlx_harmony_tui.tui.themes import load_theme_file, load_themes


def test_theme_files_load_and_bad_ones_are_reported(tmp_path: Path) -> None:
    themes, problems = load_themes()
    names = {t.name for t in themes}
    assert {"harmony-dusk", "harmony-paper", "harmony-terminal"} <= names and problems == []
    user = paths.config_dir() / "themes"
    user.mkdir(parents=True)
    (user / "mine.toml").write_text('primary = "#ff0000"\ndark = false\n')
    (user / "typo.toml").write_text('primary = "#ff0000"\nprimery = "#00ff00"\n')
    themes, problems = load_themes()
    assert "mine" in {t.name for t in themes}
    assert len(problems) == 1 and "primery" in problems[0]
    with pytest.raises(ValueError, match="primary"):
        (tmp_path / "x.toml").write_text('accent = "#fff"\n')
        load_theme_file(tmp_path / "x.toml")


async def test_theme_applied_and_change_saved() -> None:
    from tui_fakes import ScriptedBackend, simple_reply

    saved: list[str] = []
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok")), theme="harmony-paper",
                     on_theme_change=saved.append)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.theme == "harmony-paper" and saved == []
        app.theme = "harmony-dusk"
        await pilot.pause()
        assert saved == ["harmony-dusk"]


def test_tui_command_saves_theme_to_config(tmp_path: Path) -> None:
    import argparse

    from mlx_harmony_tui.config import load_config
    from mlx_harmony_tui.tui.command import build_app, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('theme = "harmony-dusk"\n[keymap]\n"chat.regenerate" = "ctrl+b"\n')
    args = parser.parse_args(["tui", "--config", str(cfg_file), "--model", "demo"])
    app = build_app(args)
    assert app._theme_name == "harmony-dusk" and app._keymap == {"chat.regenerate": "ctrl+b"}
    app._on_theme_change("harmony-paper")
    assert load_config(cfg_file)[0].theme == "harmony-paper"


async def test_welcome_and_help_show_the_config_file_in_use(tmp_path: Path) -> None:
    """With --config the app says that file is the config, not the default location it did not read."""
    import argparse

    from textual.widgets import Static

    from mlx_harmony_tui import paths
    from mlx_harmony_tui.tui.app import welcome_text
    from mlx_harmony_tui.tui.command import build_app, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    cfg_file = tmp_path / "mine.toml"
    cfg_file.write_text("garbage\n")  # invalid: the app still starts, on defaults, and names this file
    app = build_app(parser.parse_args(["tui", "--config", str(cfg_file), "--model", "demo"]))
    assert app.config_file == cfg_file and any(str(cfg_file) in n for n in app.startup_notes)
    assert f"Config:   {cfg_file}" in welcome_text("demo", app.config_file)
    assert str(paths.config_file()) in welcome_text("demo")
    app.backend = None
    app.loader = lambda *_: (_ for _ in ()).throw(RuntimeError("no model in this test"))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f1")
        await pilot.pause(0.2)
        texts = [str(s.render()) for s in app.screen.query(Static)]
        assert any(f"Config: {cfg_file}" in t for t in texts)
