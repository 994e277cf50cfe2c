"""The model picker (ctrl+o) with the catalog: a repo typed in the picker downloads in the background (a
real `models pull` child process against the local Hub-layout server) while the current model keeps
chatting, then shows up in the list, marked by whether it fits, and loads through the real engine."""

from __future__ import annotations

import time

from hub_server import REPO, SHARD2, FakeHub, Hold
from textual.widgets import Input, OptionList, ProgressBar

from mlx_harmony_tui.cli import build_parser
from mlx_harmony_tui.engine import memory
from mlx_harmony_tui.tui.command import build_app
from mlx_harmony_tui.tui.widgets.chat_input import ChatInput
from mlx_harmony_tui.tui.widgets.messages import AssistantMessage

SIZE = (120, 36)


def labels(app) -> list[str]:  # noqa: ANN001
    options = app.screen.query_one(OptionList)
    return [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]


async def wait_for(pilot, cond, what: str, timeout: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.1)


async def test_pull_from_the_picker_while_chatting_then_load_it(fake_hub: FakeHub, monkeypatch) -> None:  # noqa: ANN001
    fake_hub.hold = hold = Hold(SHARD2, at=3_000_000)  # keeps the download going while we chat
    app = build_app(build_parser().parse_args(["tui", "--model", "demo", "--max-tokens", "6"]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.backend is not None, "the demo model")
        await pilot.press("ctrl+o")
        assert "No GPT-OSS models" in str(app.screen.query_one("#model-hint").render())
        app.screen.query_one(Input).value = "acme/tiny-oss"
        app.screen.query_one(Input).focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: bool(app.screen.query("#pull-bar")), "the download bar")
        assert any("Downloading acme/tiny-oss in the background" in n.message for n in app._notifications)
        await wait_for(pilot, hold.reached.is_set, "the download to be under way")
        bar = app.screen.query_one("#pull-progress", ProgressBar)
        await wait_for(pilot, lambda: bool(bar.total) and bar.progress > 0, "byte counts on the bar")
        assert "pulling acme/tiny-oss" in str(app.screen.query_one("#pull-text").render())
        # the current model keeps chatting
        app.screen.query_one(ChatInput).focus()
        await pilot.press(*"hi", "enter")
        await app.wait_idle(60)
        await pilot.pause()
        assert app.screen.query(AssistantMessage) and app.screen.query("#pull-bar")
        hold.release.set()
        await wait_for(pilot, lambda: not app.screen.query("#pull-bar"), "the download to finish")
        assert any(f"Downloaded {REPO}" in n.message for n in app._notifications), [
            n.message for n in app._notifications
        ]
        # now it is in the list, marked as fitting, and loads
        await pilot.press("ctrl+o")
        rows = labels(app)
        assert rows[0].startswith("● demo") and REPO in rows[1] and rows[1].rstrip().endswith("fits")
        app.screen.query_one(OptionList).focus()
        await pilot.press("down", "enter")
        await wait_for(
            pilot, lambda: app.backend is not None and app.backend.model_name == REPO, "the pulled model"
        )
        await pilot.press("escape")
        # on a machine too small for it, the same row says so
        monkeypatch.setattr(memory, "memory_budget", lambda: memory.MemoryBudget(1 << 20, "test RAM"))
        await pilot.press("ctrl+o")
        assert labels(app)[1].rstrip().endswith("too big") and labels(app)[1].startswith("● ")


async def test_a_typed_name_that_is_nowhere_says_what_was_tried(tmp_path) -> None:  # noqa: ANN001
    app = build_app(build_parser().parse_args(["tui", "--model", "demo"]))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.backend is not None, "the demo model")
        await pilot.press("ctrl+o")
        app.screen.query_one(Input).value = "no-such-model"
        app.screen.query_one(Input).focus()
        await pilot.press("enter")
        hint = app.screen.query_one("#model-hint")
        assert "model 'no-such-model' not found; tried:" in str(hint.render()) and hint.has_class("error")
        assert app.screen.__class__.__name__ == "ModelPickerScreen"  # still open, nothing lost
