"""One flag set for every face: the TUI, chat and generate take the same model/remote/config/generation
flags (serve the same less --remote), and resolve them with the same fallbacks (faces/common.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_harmony_tui import cli
from mlx_harmony_tui.server.app import create_app
from mlx_harmony_tui.server.command import serve_in_thread
from mlx_harmony_tui.tui.command import build_app
from tests.test_server_protocol import ScriptedBackend

SHARED = ["-m", "x", "--profile", "p", "--config", "c.toml", "--temperature", "0.5", "--top-p", "0.9",
          "--max-tokens", "9", "--seed", "1", "--reasoning-effort", "low", "--tools", "none",
          "--system", "s", "--instructions", "i", "--debug-file", "d.jsonl", "--metrics-log", "m.tsv"]


@pytest.mark.parametrize("command", ["tui", "chat", "generate", "serve"])
def test_every_face_takes_the_shared_flags(command: str) -> None:
    remote = [] if command == "serve" else ["--remote", "http://h:1/v1", "--api-key", "k"]
    args = cli.build_parser().parse_args([command, *SHARED, *remote])
    assert (args.model, args.profile, args.config, args.temperature, args.max_tokens) == ("x", "p", "c.toml", 0.5, 9)
    assert getattr(args, "remote", None) == (None if command == "serve" else "http://h:1/v1")


def test_tui_generation_flags_override_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sampling]\ntemperature = 0.7\nmax_tokens = 50\n")
    app = build_app(cli.build_parser().parse_args(["tui", "--config", str(cfg), "--model", "tiny",
                                                   "--temperature", "0.3"]))
    assert app.settings.sampling.temperature == 0.3 and app.settings.max_tokens == 50


def test_a_missing_model_is_reported_in_the_tui_but_stops_the_line_faces(capsys: pytest.CaptureFixture[str]) -> None:
    app = build_app(cli.build_parser().parse_args(["tui", "--model", "/no/such/model"]))
    assert app.model_ref == "/no/such/model"  # the loader reports it inside the app
    assert cli.main(["generate", "--model", "/no/such/model", "--prompt", "x"]) == 2
    assert "model not found" in capsys.readouterr().err


def test_the_remote_key_falls_back_the_same_way_in_every_face(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """[remote] api_key_env names an unset variable: every face then uses $OPENAI_API_KEY."""
    from mlx_harmony_tui.chat.events import Delta, TurnFinished

    cfg = tmp_path / "c.toml"
    cfg.write_text('[remote]\napi_key_env = "MY_UNSET_KEY"\n')
    monkeypatch.delenv("MY_UNSET_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "envkey")
    scripted = ScriptedBackend()
    scripted.scripts.append([Delta("final", "Hi"), TurnFinished("stop")])
    with serve_in_thread(create_app(scripted, api_key="envkey")) as url:
        app = build_app(cli.build_parser().parse_args(["tui", "--config", str(cfg), "--remote", url]))
        backend = app.loader("ignored", None)  # connects and asks for the models: 401 with a wrong key
        assert backend.api_key == "envkey" and app.model_ref == url
        backend.close()
        assert cli.main(["generate", "--config", str(cfg), "--remote", url, "--prompt", "x"]) == 0
    assert "Hi" in capsys.readouterr().out


async def test_tui_flags_win_over_the_resumed_session(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """docs/config.md: command line > session. `mlx-harmony-tui --session ID --temperature 0.9` kept the
    session's 0.1 (the line chat was fixed first; the TUI resumed the same way)."""
    import io
    import sys

    from mlx_harmony_tui.sessions.store import SessionStore

    class Piped(io.StringIO):
        def isatty(self) -> bool:
            return False

    monkeypatch.setattr(sys, "stdin", Piped("/set temperature=0.1\n/set max_tokens=77\nhi\n"))
    assert cli.main(["chat", "--max-tokens", "8"]) == 0, capsys.readouterr().err
    sid = SessionStore().list()[0].id
    app = build_app(cli.build_parser().parse_args(["tui", "--session", sid, "--temperature", "0.9", "--tools", "none"]))
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(600):  # the session opens after the first frame; wait for it (a loaded machine is slow)
            if app.chat.session is not None and app.chat.session.id == sid and app.settings.sampling.temperature == 0.9:
                break
            await pilot.pause(0.05)
        assert app.chat.session is not None and app.chat.session.id == sid
        assert app.settings.sampling.temperature == 0.9 and app.settings.max_tokens == 77  # the rest: the session's
        assert app.settings.builtin_tools == []
