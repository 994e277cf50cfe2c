"""`serve` as the command line builds it: only the configured model (and its aliases) can be asked for."""

from __future__ import annotations

import openai
import pytest

from mlx_harmony_tui import cli
from mlx_harmony_tui.server.command import build_app, serve_in_thread


def test_serve_builds_an_app_for_the_configured_model_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLX_HARMONY_TUI_API_KEY", "envkey")
    args = cli.build_parser().parse_args(["serve", "--model", "tiny", "--name", "gpt-oss-20b", "--max-tokens", "4",
                                          "--temperature", "0"])
    app = build_app(args)
    assert sorted(app.state.backends) == ["gpt-oss-20b", "tiny"]
    with serve_in_thread(app) as url:
        c = openai.OpenAI(base_url=url, api_key="envkey", max_retries=0, timeout=60)
        r = c.chat.completions.create(model="gpt-oss-20b", messages=[{"role": "user", "content": "hi"}])
        assert r.usage.completion_tokens <= 4 * 3  # (up to 3 attempts) the CLI's --max-tokens is the server's default
        with pytest.raises(openai.NotFoundError, match="model_not_found|does not exist"):
            c.chat.completions.create(model="/tmp", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="bad", max_retries=0).models.list()


def test_serve_rejects_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--model", "tiny", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert cli.main(["serve", "--model", "/no/such/dir"]) == 2
    assert "model not found" in capsys.readouterr().err
