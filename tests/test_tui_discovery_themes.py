"""Model discovery (folders and the HF cache) and theme files (package, repo, user config dir)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_harmony_tui import paths
from mlx_harmony_tui.backends.discovery import find_models, hf_hub_dir
from mlx_harmony_tui.tui.app import HarmonyApp
from mlx_harmony_tui.tui.themes import load_theme_file, load_themes


def fake_model(folder: Path, model_type: str = "gpt_oss", quant: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    cfg = {"model_type": model_type}
    if quant:
        cfg["quantization_config"] = quant
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").write_bytes(b"x" * 1000)
    return folder


def test_find_models_in_folders_and_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    models = tmp_path / "models"
    fake_model(models / "gpt-oss-20b", quant={"quant_method": "mxfp4"})
    fake_model(models / "openai" / "gpt-oss-120b")
    fake_model(models / "llama", model_type="llama")
    (models / "broken").mkdir()
    (models / "broken" / "config.json").write_text("{not json")
    snap = hf_hub_dir() / "models--openai--gpt-oss-20b" / "snapshots" / "abc123"
    fake_model(snap)
    found = find_models([models])
    by_name = {e.name: e for e in found}
    assert set(by_name) == {"gpt-oss-20b", "gpt-oss-120b", "openai/gpt-oss-20b"}
    assert by_name["gpt-oss-20b"].quantization == "mxfp4" and by_name["gpt-oss-20b"].size_bytes == 1000
    assert by_name["openai/gpt-oss-20b"].source == "hf-cache" and by_name["openai/gpt-oss-20b"].path == snap
    assert [e.name for e in find_models([models], include_hf_cache=False)] == ["gpt-oss-20b", "gpt-oss-120b"]
    assert find_models([tmp_path / "missing"], include_hf_cache=False) == []


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
