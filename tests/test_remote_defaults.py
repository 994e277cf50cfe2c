"""Remote mode sends only the values the user set, so the server's model defaults apply to the rest: the
request body (our own server, real HTTP), the line chat against `serve` on the demo model (whose
generation_config.json says temperature 0.5), and the TUI's params panel and header with a remote server."""

from __future__ import annotations

import io
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.widgets import Input, Select

from mlx_harmony_tui import cli
from mlx_harmony_tui.backends.base import TurnRequest
from mlx_harmony_tui.backends.remote import RemoteBackend
from mlx_harmony_tui.chat.events import TurnFinished
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.chat.trace import TurnTrace
from mlx_harmony_tui.config.resolve import resolve_settings
from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.harmony.render import ResponseFormat
from mlx_harmony_tui.server.app import create_app
from mlx_harmony_tui.server.command import build_app, serve_in_thread
from mlx_harmony_tui.sessions.store import SessionStore
from tests.test_server_protocol import ScriptedBackend

SENT_KEYS = {"temperature", "top_p", "top_k", "min_p", "repetition_penalty", "repetition_context", "logit_bias",
             "max_tokens", "seed", "reasoning_effort"}
# what our server uses when a request leaves a value out (as `serve` would take from its model's defaults)
SERVER = ChatSettings(sampling=SamplingParams(temperature=0.5, top_p=0.8), max_tokens=77, reasoning_effort="low")


def _turn(remote: RemoteBackend, settings: ChatSettings) -> None:
    events = list(remote.start_turn(TurnRequest([HMessage("user", "hi")], settings)).events(timeout=30))
    assert isinstance(events[-1], TurnFinished), events[-1]


def test_the_request_carries_only_what_the_user_set(tmp_path: Path) -> None:
    scripted = ScriptedBackend()
    debug = tmp_path / "client.jsonl"
    with serve_in_thread(create_app(scripted, SERVER)) as url:
        remote = RemoteBackend(url)
        remote.trace = TurnTrace(debug, None, model="scripted")  # --debug-file: the request as sent
        nothing_set = resolve_settings(cli={}, session={}, profile={}, config={}, model_defaults={})
        _turn(remote, nothing_set)
        # 1.0 is also our built-in default temperature: set by the user, it is sent all the same
        chosen = resolve_settings(cli={"temperature": 1.0, "seed": 5}, session={"max_tokens": 9}, profile={"top_k": 0},
                                  config={"logit_bias": {"12": -100}, "reasoning_effort": "high"},
                                  model_defaults={"top_p": 0.3})
        chosen.response_format = ResponseFormat("person", {"type": "object"})  # --json-schema: was never sent
        _turn(remote, chosen)
    sent = [json.loads(line)["request"] for line in debug.read_text().splitlines()]
    assert not SENT_KEYS & set(sent[0]), sent[0]
    got = scripted.requests[0].settings  # the server's values fill what the client left out
    assert (got.sampling.temperature, got.sampling.top_p, got.max_tokens, got.reasoning_effort) == (0.5, 0.8, 77, "low")
    assert {k: sent[1][k] for k in SENT_KEYS & set(sent[1])} == {
        "temperature": 1.0, "seed": 5, "max_tokens": 9, "top_k": 0, "logit_bias": {"12": -100.0},
        "reasoning_effort": "high"}  # top_p was the model's default, not the user's: left to the server
    got = scripted.requests[1].settings
    assert (got.sampling.temperature, got.sampling.top_p, got.sampling.top_k, got.seed) == (1.0, 0.8, 0, 5)
    assert (got.max_tokens, got.reasoning_effort, got.sampling.logit_bias) == (9, "high", {12: -100.0})
    assert got.response_format == ResponseFormat("person", {"type": "object"})


class _Stdin(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_line_chat_against_serve_leaves_the_demo_models_temperature_to_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`chat --remote` with nothing set: the server samples at the demo model's 0.5, not our 1.0; `/set`
    values are sent from the next turn; the session records only what the user set."""
    served = tmp_path / "served.jsonl"
    app = build_app(cli.build_parser().parse_args(["serve", "--model", "demo", "--debug-file", str(served)]))
    with serve_in_thread(app) as url:
        monkeypatch.setattr(sys, "stdin", _Stdin("hello\n/set\n/set temperature=0.25\nhi there\n/set\n"))
        rc = cli.main(["chat", "--remote", url, "--max-tokens", "200"])
        out, err = capsys.readouterr()
        assert rc == 0, err
        (meta,) = SessionStore().list()
        params = [m.params for m in SessionStore().load(meta.id).messages if m.params]
        assert params[-1] == {"temperature": 0.25, "max_tokens": 200}  # not our placeholders for the server's
        monkeypatch.setattr(sys, "stdin", _Stdin("and again\n"))  # resumed: its recorded values are sent again
        assert cli.main(["chat", "--remote", url, "--session", meta.id]) == 0, capsys.readouterr().err
    temperatures: dict[str, set[float]] = {}  # by the user message each request answers (a tool call asks again)
    for r in map(json.loads, served.read_text().splitlines()):
        asked = re.findall(r"<\|start\|>user<\|message\|>(.*?)<\|end\|>", r["prompt"], re.S)[-1]
        temperatures.setdefault(asked, set()).add(r["sampling"]["temperature"])  # a retry keeps it (not 0)
        assert r["completion_tokens"] <= 200  # --max-tokens was sent
    assert temperatures == {"hello": {0.5}, "hi there": {0.25}, "and again": {0.25}}
    assert "max_tokens=200; server defaults: temperature top_p top_k min_p" in out
    assert "temperature=0.25 max_tokens=200; server defaults: top_p" in out


async def test_tui_params_panel_shows_server_defaults_and_gives_values_back() -> None:
    """With a remote server the panel and header do not claim our 1.0: unset fields are empty ("server
    default"); a typed value is sent, and emptying its field leaves it to the server again."""
    from mlx_harmony_tui.tui.app import HarmonyApp
    from tests.test_tui import type_and_send

    scripted = ScriptedBackend()
    with serve_in_thread(create_app(scripted, SERVER)) as url:
        app = HarmonyApp(backend=RemoteBackend(url), show_welcome=False)
        async with app.run_test(size=(120, 40)) as pilot:
            assert app.sub_title == "scripted · tools=python · server defaults"  # no "T=1"
            await pilot.press("ctrl+g")
            temperature = app.screen.query_one("#p-temperature", Input)
            assert (temperature.value, temperature.placeholder) == ("", "server default")
            assert app.screen.query_one("#p-reasoning_effort", Select).value == Select.NULL
            temperature.value = "1"
            await pilot.press("ctrl+s")
            assert app.sub_title == "scripted · tools=python · T=1 · rest: server defaults"
            await type_and_send(pilot, "hi")
            await app.wait_idle(20)
            await pilot.press("ctrl+g")
            assert app.screen.query_one("#p-temperature", Input).value == "1.0"
            app.screen.query_one("#p-temperature", Input).value = ""
            app.screen.query_one("#p-reasoning_effort", Select).value = "high"
            await pilot.press("ctrl+s")
            await type_and_send(pilot, "again")
            await app.wait_idle(20)
    first, second = (r.settings for r in scripted.requests)
    assert (first.sampling.temperature, first.reasoning_effort, first.sampling.top_p) == (1.0, "low", 0.8)
    assert (second.sampling.temperature, second.reasoning_effort, second.sampling.top_p) == (0.5, "high", 0.8)


def _header(app: object) -> str:
    """The header's line as drawn (fitted to the terminal), not the full sub-title."""
    from textual.widgets import Static

    return str(app.screen_chat.query_one("HeaderTitle", Static).content)  # type: ignore[attr-defined]


async def _until(pilot: object, cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.02)  # type: ignore[attr-defined]


async def test_tui_effort_cycle_steps_from_the_servers_default_to_low_and_back(tmp_path: Path) -> None:
    """f9 with the effort left to a remote server goes to low (not to high from our "medium" placeholder),
    then medium, high, and the server's default again; the header shows each, the request carries it."""
    from mlx_harmony_tui.tui.app import HarmonyApp
    from tests.test_tui import type_and_send

    scripted = ScriptedBackend()
    debug = tmp_path / "client.jsonl"
    with serve_in_thread(create_app(scripted, SERVER)) as url:
        remote = RemoteBackend(url)
        remote.trace = TurnTrace(debug, None, model="scripted")
        app = HarmonyApp(backend=remote, show_welcome=False)
        async with app.run_test(size=(120, 40)) as pilot:
            assert "effort=" not in app.sub_title and app.sub_title.endswith(" · server defaults")
            shown = []
            for _ in range(4):
                await pilot.press("f9")
                shown.append(next((b for b in app.sub_title.split(" · ") if b.startswith("effort=")), None))
                if len(shown) == 1:
                    assert app.sub_title.endswith("rest: server defaults")
                    await type_and_send(pilot, "one")
                    await app.wait_idle(20)
            assert shown == ["effort=low", "effort=medium", "effort=high", None]
            assert app.sub_title.endswith(" · server defaults")
            await type_and_send(pilot, "two")
            await app.wait_idle(20)
    sent = [json.loads(line)["request"] for line in debug.read_text().splitlines()]
    assert sent[0].get("reasoning_effort") == "low" and "reasoning_effort" not in sent[1]


async def test_tui_header_fits_80_columns_keeping_the_server_defaults_note() -> None:
    """At 80 columns the header drops the app's name, then whole values from the end (shown by "…"), but
    keeps "rest: server defaults"; wider, it shows everything again."""
    from mlx_harmony_tui.tui.app import HarmonyApp

    settings = ChatSettings()
    for key, value in (("reasoning_effort", "high"), ("temperature", 0.7), ("top_p", 0.9), ("max_tokens", 300)):
        settings.set_value(key, value)
    with serve_in_thread(create_app(ScriptedBackend(), SERVER)) as url:
        app = HarmonyApp(backend=RemoteBackend(url), settings=settings, show_welcome=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: _header(app).endswith("rest: server defaults"))
            line = _header(app)
            assert line.startswith("scripted · ") and " · … · " in line and len(line) <= 80 - 18, line
            full = "scripted · tools=python · effort=high · T=0.7 · top_p=0.9 · max=300 · rest: server defaults"
            assert app.sub_title == full
            await pilot.resize_terminal(200, 24)
            await _until(pilot, lambda: _header(app) == f"mlx-harmony-tui — {full}")
            await pilot.resize_terminal(80, 24)
            await _until(pilot, lambda: _header(app) == line)
