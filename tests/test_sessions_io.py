"""Seed-project import, dialogue conversion, Markdown/OpenAI export and the ``sessions`` CLI."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from mlx_harmony_tui.cli import main
from mlx_harmony_tui.sessions import SessionStore
from mlx_harmony_tui.sessions.dialogue import (
    DialogueError,
    dialogue_to_examples,
    dialogue_to_session,
    parse_dialogue,
)
from mlx_harmony_tui.sessions.export import to_markdown, to_openai_messages
from mlx_harmony_tui.sessions.importers import ImportFormatError, import_data, import_file
from mlx_harmony_tui.sessions.migrations import migrate
from mlx_harmony_tui.sessions.schema import session_from_dict, session_to_dict

FIXTURES = Path(__file__).resolve().parents[1] / "sessions"


def test_import_seed_v1_flat_file_keeps_everything() -> None:
    src = json.loads((FIXTURES / "mlx-harmony-v1.json").read_text())
    result = import_file(FIXTURES / "mlx-harmony-v1.json")
    (s,) = result.sessions
    assert s.model == src["metadata"]["model_path"] and s.params == src["metadata"]["hyperparameters"]
    assert s.created_at == src["metadata"]["created_at"]
    roles = [(m.role, m.channel) for m in s.messages]
    assert roles == [("user", None), ("assistant", "analysis"), ("assistant", "final"), ("user", None),
                     ("assistant", "final")]
    assert s.messages[1].content == src["messages"][1]["analysis"]
    assert s.messages[3].created_at == "2026-01-08T01:01:40Z"  # {unix, iso} form
    assert s.messages[2].params is None  # same as the session's
    assert s.messages[4].params == src["messages"][3]["hyperparameters"]  # changed: kept on the message
    assert s.messages[4].extra == {"parent_id": "x1", "cache_key": "x1"}
    assert s.extra["metadata"] == {"prompt_config_path": "configs/helper.json"}
    assert any("parent_id" in line for line in result.report)
    assert any("prompt_config_path" in line for line in result.report)


def test_import_seed_v2_container_makes_one_session_per_chat() -> None:
    src = json.loads((FIXTURES / "mlx-harmony-v2.json").read_text())
    result = import_file(FIXTURES / "mlx-harmony-v2.json")
    assert [s.id for s in result.sessions] == src["chat_order"]
    b, a = result.sessions
    assert a.extra["active"] is True and a.model == "models/gpt-oss-120b"
    assert a.created_at == "2026-01-07T15:33:20Z"
    assert [m.channel for m in a.messages] == [None, "analysis", "final"]
    assert b.messages[1].role == "tool" and b.messages[1].author == "functions.get_weather"
    assert b.messages[2].extra == {"mood": "cheerful"}
    assert any("message.mood" in line for line in result.report)
    assert a.extra["metadata"]["last_model_path"] == "models/gpt-oss-120b"
    for s in result.sessions:  # every imported session is a valid current-schema session
        assert session_from_dict(session_to_dict(s)) == s


def test_import_rejects_unknown_files_clearly(tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError, match="not an mlx-harmony chat file"):
        import_data({"foo": 1}, "x.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ImportFormatError, match="bad.json"):
        import_file(tmp_path / "bad.json")
    weird = import_data({"messages": [{"role": "wizard", "content": "x"}, {"role": "user", "content": ["a"]}]})
    (s,) = weird.sessions
    assert s.extra["unreadable_messages"] == [{"role": "wizard", "content": "x"}]
    assert s.messages[0].extra == {"content": ["a"]}


def test_import_of_a_newer_session_file_names_the_file(tmp_path: Path) -> None:
    """With several files given, "schema_version 9 is newer than this app supports" did not say which one."""
    newer = tmp_path / "from-the-future.json"
    newer.write_text(json.dumps({"schema_version": 99, "id": "x", "messages": []}))
    with pytest.raises(ImportFormatError, match="^from-the-future.json: schema_version 99 is newer"):
        import_file(newer)


def test_parse_dialogue_multiline_and_case() -> None:
    text = (FIXTURES / "dialogue.txt").read_text()
    turns = parse_dialogue(text)
    assert [t["role"] for t in turns] == ["assistant", "user", "assistant", "user", "tool", "assistant"]
    assert turns[2]["content"] == "Try a French omelette:\n\n1. Beat three eggs with salt.\n2. Cook on low heat, stirring."
    assert turns[3]["content"] == "And a side?"
    with pytest.raises(DialogueError, match="d.txt:1"):
        parse_dialogue("hello\nuser: hi", "d.txt")
    with pytest.raises(DialogueError):
        parse_dialogue("\n\n")


def test_dialogue_to_session_and_examples() -> None:
    text = (FIXTURES / "dialogue.txt").read_text()
    s = dialogue_to_session(text)
    assert s.title == "Something quick with eggs."
    assert [(m.role, m.channel) for m in s.messages][:3] == [("assistant", "final"), ("user", None), ("assistant", "final")]
    assert json.loads(dialogue_to_examples(text)) == parse_dialogue(text)
    assert tomllib.loads(dialogue_to_examples(text, "toml"))["examples"] == parse_dialogue(text)


def _v1_session():
    doc, _ = migrate(json.loads((FIXTURES / "v1-example.json").read_text()))
    return session_from_dict(doc)


def test_markdown_export_collapses_reasoning() -> None:
    md = to_markdown(_v1_session())
    assert md.startswith("# Weather in Paris (schema v1)\n")
    assert "<details>\n<summary>Reasoning</summary>\n\nI should call the weather tool.\n\n</details>" in md
    assert "**Tool call** `functions.get_weather`" in md and '{"city": "Paris"}' in md
    assert "## System\n\nYou are a concise assistant." in md
    assert md.index("What's the weather") < md.index("It is 18 °C")


def test_openai_export_maps_reasoning_tool_calls_and_results() -> None:
    msgs = to_openai_messages(_v1_session())
    assert msgs[0] == {"role": "system", "content": "You are a concise assistant."}
    assert msgs[1] == {"role": "developer", "content": "Answer in one sentence."}
    assert msgs[2] == {"role": "user", "content": "What's the weather in Paris?"}
    call = msgs[3]
    assert call["reasoning_content"] == "I should call the weather tool." and call["content"] is None
    assert call["tool_calls"] == [{"id": "call_m1", "type": "function",
                                   "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert msgs[4] == {"role": "tool", "tool_call_id": "call_m1", "name": "get_weather",
                       "content": '{"temp_c": 18, "sky": "clear"}'}
    assert msgs[5] == {"role": "assistant", "content": "It is 18 °C and clear in Paris.",
                       "reasoning_content": "The tool says 18 C, clear."}
    assert [m["role"] for m in msgs[6:]] == ["user", "assistant"]


def test_cli_import_list_show_export_migrate_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sessions", "import", str(FIXTURES / "mlx-harmony-v2.json"), str(FIXTURES / "mlx-harmony-v1.json")]) == 0
    out, err = capsys.readouterr()
    assert out.count("imported ") == 3 and "message.mood" in err
    assert main(["sessions", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["id"] for r in rows} >= {"chat-a", "chat-b"} and len(rows) == 3
    assert main(["sessions", "list", "oslo"]) == 0
    assert "chat-b" in capsys.readouterr().out
    assert main(["sessions", "show", "chat-a"]) == 0
    assert "Greet back." in capsys.readouterr().out
    target = tmp_path / "a.json"
    assert main(["sessions", "export", "chat-a", "--format", "json", "-o", str(target)]) == 0
    exported = json.loads(target.read_text())
    assert exported["messages"][1]["reasoning_content"] == "Greet back."
    assert main(["sessions", "export", "chat-a", "--format", "md"]) == 0
    assert "<details>" in capsys.readouterr().out
    # an old file in the folder: dry run reports, migrate rewrites with a backup
    root = SessionStore().root
    shutil.copy(FIXTURES / "v1-example.json", root / "example-v1.json")
    assert main(["sessions", "migrate", "--dry-run"]) == 0
    assert "example-v1.json: would be migrated v1 -> v4" in capsys.readouterr().out
    assert main(["sessions", "migrate"]) == 0
    assert (root / "example-v1.v1.bak").exists()
    assert main(["sessions", "convert-dialogue", str(FIXTURES / "dialogue.txt")]) == 0
    assert "created session" in capsys.readouterr().out
    ex = tmp_path / "ex.toml"
    assert main(["sessions", "convert-dialogue", str(FIXTURES / "dialogue.txt"), "--examples", "--format", "toml",
                 "-o", str(ex)]) == 0
    assert len(tomllib.loads(ex.read_text())["examples"]) == 6
    capsys.readouterr()
    # user errors: a clear message and exit code 2, no traceback
    assert main(["sessions", "show", "no-such-session"]) == 2
    assert "no session 'no-such-session'" in capsys.readouterr().err
    assert main(["sessions", "import", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
