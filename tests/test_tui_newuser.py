"""What a new user met in the first minutes of the app (QA round of 2026-12-03), each test failing on the code
before its fix: the footer's last column, branch notes left behind, the parameters panel's ranges, damaged
session files skipped without a word."""

from __future__ import annotations

import threading

import pytest
from textual.widgets._footer import FooterKey
from tui_fakes import ScriptedBackend, simple_reply

from mlx_harmony_tui import paths
from mlx_harmony_tui.chat import events as ev
from mlx_harmony_tui.tui.app import HarmonyApp
from mlx_harmony_tui.tui.screens.params import NUMERIC as PARAMS

SMALL, LARGE = (80, 24), (200, 50)


def make_app(**kwargs) -> HarmonyApp:
    return HarmonyApp(backend=ScriptedBackend(simple_reply("Think.", "ok")), show_welcome=False, **kwargs)


@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_the_palette_key_covers_the_footer_to_its_last_column(size) -> None:
    """At 80 columns the keys that do not fit scroll under the palette key docked at the right; its margin
    left the last column uncovered, so a letter of a hidden key showed there ("^p palettea")."""
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        palette = next(k for k in app.screen.query(FooterKey) if k.has_class("-command-palette"))
        assert palette.region.right == size[0]


async def send(pilot, text: str) -> None:
    pilot.app.screen.query_one("ChatInput").focus()
    await pilot.press(*text, "enter")
    await pilot.app.wait_idle(10)
    await pilot.pause()


def shown(app: HarmonyApp) -> str:
    return "\n".join(str(w.render()) for w in app.conversation.query("Static"))


async def test_no_stale_earlier_versions_note_after_regenerate_or_edit() -> None:
    """ctrl+r and F2 take the old version back and show "earlier version(s) here: f5 brings one back" where
    it was; the new reply or message then takes that place (numbered 2/2), but the note stayed above it."""
    app = make_app()
    async with app.run_test(size=LARGE) as pilot:
        await send(pilot, "one")
        await pilot.press("ctrl+r")
        await app.wait_idle(10)
        await pilot.pause()
        assert "Assistant  ‹ 2/2 ›" in shown(app)
        assert "earlier version" not in shown(app)
        await pilot.press("f2")
        await pilot.pause()
        assert "earlier version" in shown(app)  # while the message is being edited, the note says where
        await pilot.press(*" more", "enter")
        await app.wait_idle(10)
        await pilot.pause()
        assert "You  ‹ 2/2 ›" in shown(app)
        assert "earlier version" not in shown(app)


@pytest.mark.parametrize(("field", "typed", "why"), [
    ("temperature", "50", "(0..10)"), ("temperature", "nan", "not a finite number"),
    ("top_p", "0", "0 < top_p <= 1"), ("top_p", "5", "0 < top_p <= 1"), ("min_p", "3", "(0..1)"),
    ("repetition_penalty", "inf", "not a finite number"), ("max_tokens", "0", "at least 1"),
    ("context_limit", "0", "at least 1"),
])
async def test_params_panel_refuses_what_the_flags_refuse(field, typed, why) -> None:
    """The panel took temperature 50, top_p 0 or 5, min_p 3, a nan penalty, max tokens 0: values that
    --temperature, /set and the server refuse (a nan or a zero top_p makes sampling meaningless)."""
    app = make_app()
    async with app.run_test(size=SMALL) as pilot:
        before = app.settings.value(field)
        await pilot.press("ctrl+g")
        app.screen.query_one(f"#p-{field}").value = typed
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen.__class__.__name__ == "ParamsScreen"  # still open, saying why
        error = str(app.screen.query_one("#params-error").render())
        label = next(p[1] for p in PARAMS if p[0] == field)
        assert why in error and error.startswith(label), error
        assert app.settings.value(field) == before


async def test_f10_takes_the_same_temperature_range_as_the_flags_and_the_panel() -> None:
    app = make_app()
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("f10")
        app.screen.query_one("Input").value = "3"  # refused by F10 alone ("0 to 2"), taken by --temperature
        await pilot.press("enter")
        await pilot.pause()
        assert app.settings.sampling.temperature == 3.0
        await pilot.press("f10")
        app.screen.query_one("Input").value = "11"
        await pilot.press("enter")
        await pilot.pause()
        assert app.settings.sampling.temperature == 3.0
        assert any("(0..10)" in n.message for n in app._notifications)


@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_session_browser_says_which_files_it_could_not_list(size) -> None:
    """A damaged session file (a hand edit, a full disk) was left out of ctrl+s without a word: the user saw
    a session missing. `sessions list` warns; the browser now says so too, and lists the good ones."""
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await send(pilot, "a good one")
        root = paths.sessions_dir()
        (root / "20261203-120000-bad001.json").write_text('{"schema": 4, "id": "x", "messages": [')
        await pilot.press("ctrl+s")
        await pilot.pause()
        problems = app.screen.query_one("#session-problems")
        text = str(problems.render())
        assert problems.display and "20261203-120000-bad001.json" in text and "sessions repair" in text
        assert "damaged" in text
        assert text.count("bad001") == 1  # once, however often the list is read
        await pilot.press(*"good")
        await pilot.pause()
        assert str(app.screen.query_one("#session-problems").render()).count("bad001") == 1
        assert len(app.screen.ids) == 1 and (root / "20261203-120000-bad001.json").exists()  # left as it was
        assert problems.region.bottom <= app.screen.query_one(".hint").region.y  # visible, above the hint


def layout(msg) -> list[str]:
    """What an assistant message shows, top to bottom: its parts by channel and its notices by text."""
    out = []
    for w in msg.children:
        if w.has_class("analysis"):
            out.append("thinking")
        elif w.has_class("notice") or w.has_class("error"):
            out.append(str(w.render()))
        elif w.has_class("final") or w.has_class("commentary"):
            out.append("final" if w.has_class("final") else "commentary")
    return out


async def test_a_reopened_reply_shows_its_tool_call_where_it_was_live() -> None:
    """Live, "⚙ calling python" sits between the thinking and the answer; a reopened session put it under the
    answer, as if the tool had run after it."""
    def script(request, handle) -> None:
        handle.put(ev.TurnStarted("t"))
        handle.put(ev.Delta("analysis", "Compute it."))
        handle.put(ev.MessageDone("analysis", "Compute it."))
        handle.put(ev.ToolCallStarted("c1", "python"))
        handle.put(ev.ToolCall("c1", "python", "print(37*12)"))
        handle.put(ev.ToolResult("c1", "python", "444\n", None, 0.1))
        handle.put(ev.Delta("analysis", "It printed 444."))
        handle.put(ev.Delta("final", "37 x 12 = 444"))
        handle.put(ev.TurnFinished("length", ev.Metrics(final=True)))

    app = HarmonyApp(backend=ScriptedBackend(script), show_welcome=False)
    async with app.run_test(size=LARGE) as pilot:
        await send(pilot, "What is 37*12?")
        live = layout(app.conversation.query_one("AssistantMessage"))
        sid = app.session_id
    assert live == ["thinking", "⚙ calling python", "final", "max tokens reached"]
    app = HarmonyApp(backend=ScriptedBackend(script), show_welcome=False, session_id=sid)
    async with app.run_test(size=LARGE) as pilot:
        for _ in range(100):
            await pilot.pause(0.05)
            if app.session_id == sid and list(app.conversation.query("AssistantMessage")):
                break
        assert layout(app.conversation.query_one("AssistantMessage")) == live


@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_attached_files_stay_in_sight_until_sent_and_can_be_removed(size, tmp_path) -> None:
    """ctrl+f said "Attached" in a toast that was gone seconds later; nothing showed that the next message
    would carry the file, and there was no way to take it back."""
    doc, other = tmp_path / "notes.txt", tmp_path / "todo.txt"
    doc.write_text("milk\neggs\n")
    other.write_text("call mum\n")
    app = make_app()
    async with app.run_test(size=size) as pilot:
        box = app.screen.query_one("ChatInput")
        for path in (doc, other):
            await pilot.press("ctrl+f")
            app.screen.query_one("Input").value = str(path)
            await pilot.press("enter")
            await pilot.pause()
        assert "notes.txt, todo.txt" in str(box.border_title)
        assert "Remove attached files" in palette(app)
        await app.run_action("detach")
        await pilot.pause()
        assert not box.border_title and app.chat.attachments == []
        await pilot.press("ctrl+f")
        app.screen.query_one("Input").value = str(doc)
        await pilot.press("enter")
        await pilot.pause()
        await send(pilot, "what is on my list?")
        assert not box.border_title and "Remove attached files" not in palette(app)  # it went with this message
        sent = app.backend.requests[-1].messages[-1].text
        assert "milk" in sent and "call mum" not in sent


def palette(app: HarmonyApp) -> list[str]:
    return [c.title for c in app.get_system_commands(app.screen)]


async def test_a_theme_that_cannot_be_saved_says_so(tmp_path) -> None:
    """With a config file that is not valid TOML (which the app never overwrites), choosing a theme in the
    palette applied it and said nothing; after a restart it was gone."""
    import argparse

    from mlx_harmony_tui.tui.command import build_app, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text("[sampling\ntemperature = 0.3\n")
    app = build_app(parser.parse_args(["tui", "--config", str(cfg_file), "--model", "demo"]))
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause()
        app.theme = "harmony-dusk"
        await pilot.pause()
        said = [n.message for n in app._notifications if "harmony-dusk" in n.message]
        assert said and "not saved" in said[0] and "not valid TOML" in said[0]
        assert app.theme == "harmony-dusk"
    assert cfg_file.read_text() == "[sampling\ntemperature = 0.3\n"  # the user's file, untouched


MARKUP = "close [/b] tags [keymap]"  # text a user or a model writes, which Textual would read as markup


def toasts(app: HarmonyApp) -> str:
    """The notifications' text as their toasts draw it (textual/widgets/_toast.py)."""
    from textual.content import Content

    return "\n".join(str(Content.from_markup(n.message) if n.markup else Content(n.message))
                     for n in app._notifications)


async def test_brackets_in_titles_paths_and_tool_names_show_as_written() -> None:
    """A session titled "How do I close [/b] tags?" crashed the app on ctrl+s (MarkupError in the session
    table); a model path with "[/x]" crashed it while loading; "[keymap] ..." warnings lost "[keymap]"."""
    from mlx_harmony_tui.errors import UserError

    def script(request, handle) -> None:
        handle.put(ev.ToolCallStarted("c1", f"functions.{MARKUP}"))
        handle.put(ev.ToolResult("c1", f"functions.{MARKUP}", "ok", None, 0.1))
        handle.put(ev.Delta("final", "ok"))
        handle.put(ev.TurnFinished("stop", ev.Metrics(final=True)))

    app = HarmonyApp(backend=ScriptedBackend(script), show_welcome=False,
                     keymap={"chat.nope": "f6"})
    async with app.run_test(size=LARGE) as pilot:
        await pilot.pause()
        assert "[keymap] 'chat.nope'" in toasts(app)
        await send(pilot, f"How do I {MARKUP}?")
        assert MARKUP in str(app.screen.query_one("ToolEntry").title)
        await pilot.press("ctrl+n", "ctrl+s")
        await pilot.pause()
        table = app.screen.query_one("DataTable")
        assert MARKUP in str(table.get_row_at(0)[0])
        await pilot.press("down", "ctrl+d")
        await pilot.pause()
        assert MARKUP in str(app.screen.query_one("#confirm-title").render())
        await pilot.press("n", "f2")
        await pilot.pause()
        assert app.screen.query_one("Input").value == f"How do I {MARKUP}?"

        await pilot.press("escape", "escape")
        await app.run_action("help_quit")  # ctrl+c where it does not copy: Textual's own hint, plain too
        await pilot.pause()
        assert "Press ctrl+q to quit the app" in toasts(app)

    path = f"/nowhere/{MARKUP}"

    def loader(model, progress):
        progress(0.1, f"loading {model}")
        raise UserError(f"model not found: {model}")

    app = HarmonyApp(model=path, loader=loader)
    async with app.run_test(size=LARGE) as pilot:
        for _ in range(100):
            await pilot.pause(0.05)
            if not app.loading:
                break
        assert f"model not found: {path}" in toasts(app)
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert app.screen.__class__.__name__ == "ModelPickerScreen"


class ClosesAfterItsTurn(ScriptedBackend):
    """Like LocalBackend: close() finishes the running turn first (here it gives up after 5 s)."""

    def __init__(self, script, name: str) -> None:
        super().__init__(script, name)
        self.turn_done = threading.Event()
        self.closed_during_turn = False

    def close(self) -> None:
        if not self.turn_done.is_set():
            self.closed_during_turn = True
            self.turn_done.wait(5)
        super().close()


async def test_a_model_loaded_while_a_reply_streams_takes_over_after_it() -> None:
    """A model picked with ctrl+o finished loading while a reply streamed: closing the old model waited for
    that reply on the UI thread, and the app froze (40 s for a long prompt on the demo) until it ended."""
    release = threading.Event()

    def script(request, handle) -> None:
        handle.put(ev.TurnStarted("t"))
        handle.put(ev.Delta("final", "part one, "))
        release.wait(20)
        handle.put(ev.Delta("final", "part two"))
        handle.put(ev.TurnFinished("stop", ev.Metrics(final=True)))
        old.turn_done.set()

    old = ClosesAfterItsTurn(script, "old-model")
    new = ScriptedBackend(simple_reply("", "from the new one"), name="new-model")
    app = HarmonyApp(backend=old, loader=lambda model, progress: new, show_welcome=False)
    async with app.run_test(size=SMALL) as pilot:
        app.screen.query_one("ChatInput").focus()
        await pilot.press(*"hi", "enter")
        for _ in range(100):
            await pilot.pause(0.05)
            if "part one" in app.conversation.query_one("AssistantMessage").final_text:
                break
        app.start_loading("new-model")
        for _ in range(100):
            await pilot.pause(0.05)
            if not app.loading:
                break
        assert not old.closed_during_turn
        assert app.backend is old and app.generating  # the reply goes on with the model that started it
        assert any("takes over when this reply ends" in n.message for n in app._notifications)
        release.set()
        await app.wait_idle(10)
        await pilot.pause()
        assert app.backend is new and old.closed and "new-model" in app.sub_title
        assert "part one, part two" in app.conversation.query_one("AssistantMessage").final_text
        await send(pilot, "again")
        assert list(app.conversation.query("AssistantMessage"))[-1].final_text == "from the new one"


async def test_the_first_run_panel_reads_in_whole_lines_at_80_columns() -> None:
    """The first thing a new user reads wrapped mid-sentence at 80 columns ("...models pull" / "openai/
    gpt-oss-20b, then start with" / "--model ..."): its lines were written for a wider terminal."""
    from mlx_harmony_tui.tui.app import welcome_text

    app = HarmonyApp(backend=ScriptedBackend(simple_reply("", "ok")), model="demo")
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause()
        room = app.screen.query_one("#welcome").content_size.width
    lines = [line for line in welcome_text("demo").splitlines() if not line.startswith(("Sessions:", "Config:"))]
    assert max(len(line) for line in lines) <= room, (room, lines)
    assert "models pull openai/gpt-oss-20b" in welcome_text("demo") and "F1" in welcome_text("demo")


async def test_with_a_server_ctrl_o_reconnects_instead_of_listing_local_models() -> None:
    """--remote URL with the server down: the app said "Pick a model with ctrl+o, or start with --model
    PATH", and ctrl+o listed local models, though whatever was picked connected to the same server."""
    from mlx_harmony_tui.errors import UserError

    url = "http://127.0.0.1:9/v1"
    calls: list[str] = []

    def loader(model, progress):
        calls.append(model)
        if len(calls) == 1:
            raise UserError(f"cannot reach {url}: Connection refused")
        return ScriptedBackend(simple_reply("", "ok"), name="served-model")

    app = HarmonyApp(model=url, remote=url, loader=loader)
    async with app.run_test(size=SMALL) as pilot:
        for _ in range(100):
            await pilot.pause(0.05)
            if not app.loading:
                break
        assert "Is the server at http://127.0.0.1:9/v1 running? ctrl+o connects again" in str(
            app.screen.query_one("#welcome").render())
        await pilot.press("ctrl+o")
        for _ in range(100):
            await pilot.pause(0.05)
            if app.backend is not None:
                break
        assert app.screen.__class__.__name__ == "ChatScreen" and calls == [url, url]
        assert app.backend.model_name == "served-model"
        assert "could not be loaded" not in str(app.screen.query_one("#welcome").render())  # connected now
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert app.screen.__class__.__name__ == "ChatScreen"
        assert any("chooses the model (served-model)" in n.message for n in app._notifications)


@pytest.mark.parametrize("size", [(50, 20), SMALL])
async def test_dialogs_fit_a_narrow_terminal(size) -> None:
    """In a 50-column pane (a tmux split), the tool confirmation was 70 wide: its Deny button was off screen
    (and the rename prompt, 60 wide, lost its edge)."""
    from mlx_harmony_tui.tui.screens.dialogs import ConfirmScreen, PromptScreen

    app = make_app()
    async with app.run_test(size=size) as pilot:
        for screen in (ConfirmScreen("Run tool python?", "print(37*12)"), PromptScreen("New title", "x")):
            app.push_screen(screen)
            await pilot.pause()
            box = screen.query_one("Vertical")
            assert box.region.right <= size[0] and box.region.x >= 0, box.region
            for button in screen.query("Button"):
                assert button.region.right <= size[0] and button.region.width > 0
            screen.dismiss(None)
            await pilot.pause()


async def test_a_conversation_that_fits_again_after_a_resize_starts_at_the_top() -> None:
    """Streamed in a small terminal, the conversation overflowed and followed the end (anchored); made larger
    so it fit, it was drawn from the middle of the screen down, blank lines above the first message."""
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("Think it over.", "A line.\n\n" * 12, delay=0.02)),
                     show_welcome=False)
    async with app.run_test(size=(50, 16)) as pilot:
        await send(pilot, "hi")
        conv = app.conversation
        assert conv.max_scroll_y > 0 and conv.is_anchored  # it overflowed and followed
        await pilot.resize_terminal(120, 50)
        for _ in range(20):
            await pilot.pause(0.05)
        first = app.conversation.query_one("UserMessage")
        assert conv.max_scroll_y == 0
        assert first.region.y - conv.region.y <= 1, (first.region, conv.region, conv.scroll_y)


@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_session_browser_model_column_keeps_its_heading(size) -> None:
    """With only the demo's sessions the model column was 4 wide and its heading read "Mode"."""
    app = make_app()
    async with app.run_test(size=size) as pilot:
        await send(pilot, "hi")
        app.chat.session.model = "demo"  # type: ignore[union-attr]
        app.chat.store.save(app.chat.session)  # type: ignore[arg-type]
        await pilot.press("ctrl+s")
        await pilot.pause()
        column = app.screen.query_one("DataTable").columns["model"]
        assert column.width >= len("Model") and str(column.label) == "Model"


async def test_hiding_the_tool_pane_does_not_leave_blank_lines_above_the_conversation() -> None:
    """The same negative offset when ctrl+l hid the tool pane and the wider conversation fit again."""
    text = ("word " * 30 + "\n\n") * 2
    app = HarmonyApp(backend=ScriptedBackend(simple_reply("Think.", text, delay=0.02)), show_welcome=False)
    async with app.run_test(size=(70, 22)) as pilot:
        await pilot.press("ctrl+l")
        await send(pilot, "hi")
        conv = app.conversation
        assert conv.max_scroll_y > 0 and conv.is_anchored
        await pilot.press("ctrl+l")
        for _ in range(20):
            await pilot.pause(0.05)
        assert conv.max_scroll_y == 0  # it fits now, 2 columns wider per line
        assert app.conversation.query_one("UserMessage").region.y - conv.region.y <= 1 and conv.scroll_y == 0
