"""Model picker, first-run welcome and remote mode, through the real app."""

from __future__ import annotations

import argparse
from pathlib import Path

from tui_fakes import ScriptedBackend, simple_reply

from mlx_harmony_tui import paths
from mlx_harmony_tui.tui.app import HarmonyApp
from mlx_harmony_tui.tui.command import build_app, register

SIZE = (120, 40)


async def test_model_picker_lists_found_models_and_loads_choice(tmp_path: Path, tiny_model_dir: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "gpt-oss-20b").symlink_to(tiny_model_dir)
    loaded: list[str] = []

    def loader(model: str, progress) -> ScriptedBackend:
        progress(0.5, "half")
        loaded.append(model)
        return ScriptedBackend(simple_reply("", "ok"), name=Path(model).name)

    app = HarmonyApp(model="demo", loader=loader, models_dirs=[models])
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.press("ctrl+o")
        picker = app.screen
        assert picker.__class__.__name__ == "ModelPickerScreen"
        labels = [str(picker.query_one("OptionList").get_option_at_index(i).prompt)
                  for i in range(picker.query_one("OptionList").option_count)]
        assert labels[0].startswith("● demo") and "gpt-oss-20b" in labels[1]  # ● marks the current one
        picker.query_one("OptionList").focus()
        await pilot.press("down", "enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert loaded == ["demo", str(models / "gpt-oss-20b")]
        assert app.backend.model_name == "gpt-oss-20b" and "gpt-oss-20b" in app.sub_title
        assert app.screen.query_one("#load-bar").has_class("hidden")


async def test_typing_in_the_picker_goes_into_the_box_not_a_load_of_the_highlighted_model() -> None:
    """A newcomer opens ctrl+o and types a repo id, as the hint says: the letters used to vanish (the list had
    focus) and Enter loaded the highlighted model ("Model ready: demo")."""
    from textual.widgets import Input

    loaded: list[str] = []

    def loader(model: str, progress) -> ScriptedBackend:
        loaded.append(model)
        return ScriptedBackend(simple_reply("", "ok"), name=Path(model).name)

    app = HarmonyApp(model="demo", loader=loader, models_dirs=[])
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.press("ctrl+o")
        await pilot.pause()
        picker = app.screen
        await pilot.press(*"no-such-model")
        assert picker.query_one("#model-path", Input).value == "no-such-model"
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert loaded == ["demo"]  # nothing else was loaded
        assert app.screen is picker  # still open, saying why nothing happened
        assert "no-such-model" in str(picker.query_one("#model-hint").render())


async def test_errors_stay_on_screen_long_enough_to_read() -> None:
    """A background download that failed showed its error for Textual's default 5 s: gone while typing."""
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok"), name="demo"))
    async with app.run_test(size=SIZE) as pilot:
        app.notify("cannot reach https://huggingface.co", title="Download failed", severity="error")
        app.notify("Downloading x in the background")
        await pilot.pause()
        error, info = list(app._notifications)[-2:]
        assert error.timeout >= 15 and info.timeout == app.NOTIFICATION_TIMEOUT


async def test_first_run_shows_paths_and_how_to_use_a_real_model() -> None:
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok"), name="demo"))
    async with app.run_test(size=SIZE):
        text = str(app.screen.query_one("#welcome").render())
        assert str(paths.sessions_dir()) in text and str(paths.config_file()) in text
        assert "models pull openai/gpt-oss-20b" in text and "--model openai/gpt-oss-20b" in text and "model = " in text
        assert "Model: demo, tiny and built in" in text and "What is 37*12?" in text  # what to try first


async def test_remote_mode_unreachable_server_is_a_clear_error() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["tui", "--remote", "http://127.0.0.1:9/v1", "--api-key", "k"])
    app = build_app(args)
    assert app.model_ref == "http://127.0.0.1:9/v1"
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.backend is None
        errors = [n.message for n in app._notifications if n.severity == "error"]
        assert errors and "127.0.0.1:9" in errors[0]
