"""The app on the real LocalBackend with the tiny random model: load in the background, stream, stop,
record the session, save the prompt cache on exit and restore it when the session is resumed."""

from __future__ import annotations

import gc

from mlx_harmony_tui import paths
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.sessions.store import SessionStore
from mlx_harmony_tui.tui.app import HarmonyApp
from mlx_harmony_tui.tui.widgets.chat_input import ChatInput
from mlx_harmony_tui.tui.widgets.messages import AssistantMessage

SIZE = (120, 40)


async def wait_loaded(pilot, app: HarmonyApp) -> None:
    await app.workers.wait_for_complete()
    await pilot.pause()
    assert app.backend is not None, [n.message for n in app._notifications]


async def test_local_tiny_model_turn_stop_and_cache_roundtrip() -> None:
    settings = ChatSettings(max_tokens=24, seed=3)
    app = HarmonyApp(model="tiny", settings=settings)
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot, app)
        assert app.backend.model_name == "tiny" and "tiny" in app.sub_title
        assert gc.get_freeze_count() > 0  # the loaded app and model left the full collections
        app.screen.query_one(ChatInput).focus()
        await pilot.press(*"hello", "enter")
        await app.wait_idle(60)
        await pilot.pause()
        msg = app.screen.query_one(AssistantMessage)
        shown = msg.analysis_text + msg.commentary_text + msg.final_text
        assert shown  # the random model writes something on some channel
        bar = str(app.screen.query_one("#metrics-text").render())
        assert "tok/s" in bar and "ctx " in bar and "/" in bar and "KV " in bar  # the cache's memory too
        sid = app.session_id
        recorded = SessionStore().load(sid).messages
        assert recorded[0].content == "hello" and len(recorded) >= 2
        # a long reply, stopped with esc: partial text kept and marked stopped
        app.settings.max_tokens = 4000
        app.screen.query_one(ChatInput).focus()
        await pilot.press(*"more", "enter")
        for _ in range(200):
            await pilot.pause(0.05)
            m = list(app.screen.query(AssistantMessage))[-1]
            if len(m.analysis_text + m.final_text + m.commentary_text) > 20:
                break
        await pilot.press("escape")
        await app.wait_idle(30)
        await pilot.pause()
        last = list(app.screen.query(AssistantMessage))[-1]
        assert any("stopped" in str(s.render()) for s in last.query(".notice"))
    cache = paths.cache_dir() / "prompt-cache" / f"{sid}.safetensors"
    assert cache.exists() and cache.stat().st_size > 0

    app2 = HarmonyApp(model="tiny", session_id=sid, settings=ChatSettings(max_tokens=8))
    async with app2.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot, app2)
        for _ in range(50):
            await pilot.pause(0.05)
            if app2.chat._cache_loaded_for == sid:
                break
        assert any("Prompt cache restored" in n.message for n in app2._notifications)


async def test_bad_model_path_shows_clear_error(tmp_path) -> None:
    app = HarmonyApp(model=str(tmp_path / "nope"))
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.backend is None
        errors = [n for n in app._notifications if n.severity == "error"]
        assert errors and "nope" in errors[0].message and "Traceback" not in errors[0].message


async def test_demo_tool_turn_keeps_each_analysis_message_its_own_paragraph() -> None:
    """The demo thinks, calls python, thinks again and answers: both thoughts show, apart, in one section."""
    app = HarmonyApp(model="demo", settings=ChatSettings(max_tokens=200, seed=0))
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot, app)
        app.screen.query_one(ChatInput).focus()
        await pilot.press(*"What is 37*12?", "enter")
        await app.wait_idle(60)
        await pilot.pause()
        msg = app.screen.query_one(AssistantMessage)
        first, _, second = msg.analysis_text.partition("\n\n")
        assert first.strip() and second.strip(), msg.analysis_text
        assert "444" in second and "444" in msg.final_text


async def test_a_long_message_shows_prefill_progress_and_esc_stops_the_prefill() -> None:
    """A pasted document: the status counts the prefill while it runs (it used to wait for the first token,
    showing "generating" for the whole prefill), and esc stops it there, before any token."""
    app = HarmonyApp(model="demo", settings=ChatSettings(max_tokens=50, seed=0))
    async with app.run_test(size=SIZE) as pilot:
        await wait_loaded(pilot, app)
        status = app.screen.query_one("#status")
        await app.send("the quick brown fox jumps over the lazy dog\n" * 800)  # ~8,000 tokens: 16 chunks
        seen = ""
        for _ in range(1200):
            await pilot.pause(0.05)
            seen = str(status.render())
            if seen.startswith("prefill") or not app.generating:
                break
        assert seen.startswith("prefill"), f"no prefill progress before the turn ended (status {seen!r})"
        await pilot.press("escape")
        await app.wait_idle(60)
        await pilot.pause()
        msg = list(app.screen.query(AssistantMessage))[-1]
        assert not (msg.analysis_text + msg.commentary_text + msg.final_text)
        assert app.chat.handle is None and str(status.render()) == "ready"
        assert app.screen.query_one("MetricsBar").last.generated_tokens == 0  # stopped inside the prefill
