"""Config keys and flags do what docs/config.md says: placeholders (system, developer and new user text),
example dialogue, knowledge cutoff, conversation date and greeting in the prompt; [remote] endpoint for chat and
generate; --profile errors; /set names what the user typed and exposes repetition_context and logit_bias (as do
the config and the server); the line chat resumes a session and joins lines ending in a backslash."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import openai
import pytest

from mlx_harmony_tui import cli
from mlx_harmony_tui.chat.turn import render_options_from_settings
from mlx_harmony_tui.config import load_config, settings_from_config
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.harmony.render import render_prompt
from mlx_harmony_tui.server.app import create_app
from mlx_harmony_tui.server.command import build_app, serve_in_thread
from mlx_harmony_tui.sessions.store import SessionStore

CONFIG = """
developer_prompt = "Help {name} with {topic}."
system_prompt = "You run on {machine}."
knowledge_cutoff = "2025-01"
conversation_date = "2026-01-02"
greeting = "Hello {name}! Ask me anything."
placeholders = { name = "Ada", topic = "maths", machine = "a laptop" }

[[examples]]
role = "user"
content = "What is 2+2?"

[[examples]]
role = "assistant"
content = "4."

[sampling]
repetition_context = 16
logit_bias = { "1234" = -100 }
"""


class _Stdin(io.StringIO):
    def isatty(self) -> bool:
        return False


def _run(argv: list[str], stdin: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr(sys, "stdin", _Stdin(stdin))
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


def test_prompt_config_keys_reach_the_rendered_prompt(config_file: Path, encoding) -> None:
    cfg, problems = load_config(config_file)
    assert not problems
    settings = settings_from_config(cfg)
    assert settings.sampling.repetition_context == 16 and settings.sampling.logit_bias == {1234: -100.0}
    tokens = render_prompt([HMessage("user", "hi")], render_options_from_settings(settings), encoding)
    text = encoding.decode(tokens)
    assert "Help Ada with maths." in text and "You run on a laptop." in text
    assert "Knowledge cutoff: 2025-01" in text and "Current date: 2026-01-02" in text
    dev = text[text.index("<|start|>developer"):]
    assert "# Examples" in dev and "User: What is 2+2?" in dev and "Assistant: 4." in dev


def test_line_chat_greets_expands_user_text_joins_lines_and_resumes(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["chat", "--model", "tiny", "--config", str(config_file), "--max-tokens", "3", "--temperature", "0"]
    rc, out, err = _run(base, "hi {name}, it is {date}\nfirst line\\\nsecond line\n", monkeypatch, capsys)
    assert rc in (0, 1), err
    assert out.startswith("Hello Ada! Ask me anything.\n")
    (summary,) = SessionStore().list()
    msgs = SessionStore().load(summary.id).messages
    assert (msgs[0].role, msgs[0].content) == ("assistant", "Hello Ada! Ask me anything.")
    users = [m.content for m in msgs if m.role == "user"]
    assert users == [f"hi Ada, it is {time.strftime('%Y-%m-%d')}", "first line\nsecond line"]
    rc, out, err = _run([*base, "--session", summary.id[:8]], "once more\n", monkeypatch, capsys)
    assert f"continuing session {summary.id}" in err and "Hello Ada" not in out  # no second greeting
    (again,) = SessionStore().list()
    assert again.id == summary.id
    assert [m.content for m in SessionStore().load(summary.id).messages if m.role == "user"][-1] == "once more"
    rc, out, err = _run([*base, "--session", "no-such"], "x\n", monkeypatch, capsys)
    assert rc == 2 and "no session 'no-such'" in err


def test_unknown_profile_on_the_command_line_is_an_error_naming_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = _run(["generate", "--model", "tiny", "--profile", "nosuch", "--prompt", "x"], "", monkeypatch,
                        capsys)
    assert rc == 2 and "--profile nosuch" in err and "config.toml" not in err.split("(")[0]


def test_set_names_what_the_user_typed_and_sets_repetition_context_and_logit_bias(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = "/set top_p=5\n/set top-p=abc\n/set repetition-context=12\n/set logit_bias=5:-100,7:2\n/set\n"
    rc, out, err = _run(["chat", "--model", "tiny"], script, monkeypatch, capsys)
    assert rc == 0
    assert "top_p: invalid value 5.0" in err and "top-p: 'abc'" in err and "--top-p" not in err
    assert "repetition_context=12" in out and "logit_bias=5:-100,7:2" in out


def test_remote_endpoint_in_the_config_is_used_by_chat_and_generate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlx_harmony_tui.chat.events import Delta, TurnFinished
    from tests.test_server_protocol import ScriptedBackend

    scripted = ScriptedBackend()
    scripted.scripts += [[Delta("final", "from the remote"), TurnFinished("stop")] for _ in range(2)]
    with serve_in_thread(create_app(scripted)) as url:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[remote]\nendpoint = "{url}"\n')
        rc, out, err = _run(["generate", "--config", str(cfg), "--prompt", "hi"], "", monkeypatch, capsys)
        assert rc == 0 and "from the remote" in out, err
        rc, out, err = _run(["chat", "--config", str(cfg)], "hi\n", monkeypatch, capsys)
        assert rc == 0 and "from the remote" in out, err


def test_server_takes_logit_bias_and_repetition_context(encoding) -> None:
    forced = encoding.encode(" zebra")[0]
    app = build_app(cli.build_parser().parse_args(["serve", "--model", "tiny", "--temperature", "0"]))
    with serve_in_thread(app) as url:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)
        r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                      logit_bias={str(forced): 100}, extra_body={"repetition_context": 8})
        msg = r.choices[0].message
        text = (msg.content or "") + ((msg.model_extra or {}).get("reasoning_content") or "")
        assert "zebra" in text
        with pytest.raises(openai.BadRequestError, match="logit_bias"):
            c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                      logit_bias={"x": 1})


def test_docs_python_tool_defaults_are_the_code_defaults() -> None:
    """docs/config.md's [tools.python] table states the defaults the code has (it once said 'off')."""
    import re

    from mlx_harmony_tui.tools.python import PythonToolConfig

    doc = (Path(__file__).parent.parent / "docs" / "config.md").read_text()
    table = doc[doc.index("### `[tools.python]`"):doc.index("### `[tools.browser]`")]
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", table, re.M))
    defaults = PythonToolConfig()
    assert rows, table
    for key, text in rows.items():
        value = getattr(defaults, key)
        assert str(value).lower() == text.lower() or (isinstance(value, float) and float(text) == value), key


async def test_tui_opens_a_new_conversation_with_the_greeting_and_expands_placeholders() -> None:
    from mlx_harmony_tui.chat.settings import ChatSettings
    from mlx_harmony_tui.tui.app import HarmonyApp
    from mlx_harmony_tui.tui.widgets.chat_input import ChatInput
    from mlx_harmony_tui.tui.widgets.messages import AssistantMessage, UserMessage

    settings = ChatSettings(max_tokens=3, greeting="Hello {name}!", placeholders={"name": "Ada"})
    app = HarmonyApp(model="tiny", settings=settings)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        app.screen.query_one(ChatInput).focus()
        await pilot.press(*"hi {name}", "enter")
        await app.wait_idle(60)
        await pilot.pause()
        greeting, *_ = app.screen.query(AssistantMessage)
        assert greeting.final_text == "Hello Ada!"
        assert app.screen.query_one(UserMessage).text == "hi Ada"
        messages = SessionStore().load(app.session_id).messages
        assert [(m.role, m.content) for m in messages[:2]] == [("assistant", "Hello Ada!"), ("user", "hi Ada")]


def test_the_docs_example_model_name_in_models_dirs_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """docs/config.md's own example: model = "gpt-oss-20b" with models_dirs = ["~/models"]."""
    from mlx_harmony_tui.model import write_tiny_checkpoint

    monkeypatch.setenv("HOME", str(tmp_path))
    write_tiny_checkpoint(tmp_path / "models" / "gpt-oss-20b", layout="float")
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "gpt-oss-20b"\nmodels_dirs = ["~/models"]\n')
    rc, out, err = _run(["generate", "--config", str(cfg), "--prompt", "hi", "--max-tokens", "2", "--json"], "",
                        monkeypatch, capsys)
    assert rc == 0, err
    doc = __import__("json").loads(out)
    assert doc["finish_reason"] == "length" and "gpt-oss-20b" in doc["model"]
