"""--debug-file (one JSON line per attempt: prompt with special tokens, raw completion, parse, repairs, retry
decision, timings) and --metrics-log (one line per turn, JSON lines or TSV) on generate, chat and serve."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import openai
import pytest

from mlx_harmony_tui import cli
from mlx_harmony_tui.server.command import build_app, serve_in_thread


class _Stdin(io.StringIO):
    def isatty(self) -> bool:
        return False


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_traces_each_attempt_of_a_tool_turn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    debug, metrics = tmp_path / "debug.jsonl", tmp_path / "turns.tsv"
    rc = cli.main(["generate", "--model", "demo", "--prompt", "What is 37*12?", "--yes", "--temperature", "0",
                   "--debug-file", str(debug), "--metrics-log", str(metrics)])
    assert rc == 0, capsys.readouterr().err
    attempts = _lines(debug)
    assert [a["tool_round"] for a in attempts] == [0, 1]
    first, second = attempts
    assert first["prompt"].startswith("<|start|>system<|message|>") and first["prompt"].endswith("<|start|>assistant")
    assert "What is 37*12?" in first["prompt"] and first["prompt_tokens"] > 0
    assert first["completion"].endswith("<|call|>") and first["decision"] == "tool call"
    assert any(m["recipient"] == "python" for m in first["parsed"])
    assert "444" in second["prompt"] and second["decision"] == "done (stop)"  # the tool result went back in
    assert first["seconds"] > 0 and first["metrics"]["generated_tokens"] == first["completion_tokens"]
    rows = list(csv.DictReader(metrics.open(), delimiter="\t"))
    assert len(rows) == 1 and rows[0]["finish_reason"] == "stop" and int(rows[0]["generated_tokens"]) > 0
    assert float(rows[0]["decode_tps"]) > 0


def test_retries_are_traced_with_their_decision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[sampling]\nlogit_bias = { "200002" = 100 }\n')  # <|return|> at once: no message, every time
    debug, metrics = tmp_path / "debug.jsonl", tmp_path / "turns.jsonl"
    rc = cli.main(["generate", "--model", "tiny", "--config", str(cfg), "--prompt", "hi", "--temperature", "0",
                   "--debug-file", str(debug), "--metrics-log", str(metrics)])
    assert rc == 1
    decisions = [a["decision"].split(":")[0] for a in _lines(debug)]
    assert decisions == ["retry", "retry", "give up"]
    assert [a["change"] for a in _lines(debug)][1].startswith("temperature 0 -> 0.7")
    (turn,) = _lines(metrics)
    assert turn["finish_reason"] == "error" and turn["retries"] == 2 and turn["error"]
    capsys.readouterr()


def test_chat_and_serve_take_the_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    debug = tmp_path / "chat.jsonl"
    monkeypatch.setattr(sys, "stdin", _Stdin("hello\n"))
    assert cli.main(["chat", "--model", "tiny", "--max-tokens", "3", "--debug-file", str(debug)]) in (0, 1)
    assert _lines(debug) and "hello" in _lines(debug)[0]["prompt"]
    served = tmp_path / "serve.jsonl"
    app = build_app(cli.build_parser().parse_args(["serve", "--model", "tiny", "--metrics-log", str(served)]))
    with serve_in_thread(app) as url:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    (turn,) = _lines(served)
    assert turn["model"] == "tiny" and turn["prompt_tokens"] > 0
    assert cli.main(["generate", "--model", "tiny", "--prompt", "x", "--debug-file", str(tmp_path)]) == 2
    assert "--debug-file" in capsys.readouterr().err


def test_a_remote_model_traces_its_requests_and_replies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlx_harmony_tui.chat.events import Delta, TurnFinished
    from mlx_harmony_tui.server.app import create_app
    from tests.test_server_protocol import ScriptedBackend

    scripted = ScriptedBackend()
    scripted.scripts.append([Delta("analysis", "thinking"), Delta("final", "remote answer"), TurnFinished("stop")])
    debug, metrics = tmp_path / "remote.jsonl", tmp_path / "remote-turns.jsonl"
    with serve_in_thread(create_app(scripted)) as url:
        rc = cli.main(["generate", "--remote", url, "--prompt", "hi there", "--debug-file", str(debug),
                       "--metrics-log", str(metrics)])
    assert rc == 0, capsys.readouterr().err
    (record,) = _lines(debug)
    assert record["request"]["messages"][-1]["content"] == "hi there"
    assert record["content"] == "remote answer" and record["reasoning"] == "thinking"
    assert record["decision"] == "done (stop)"
    (turn,) = _lines(metrics)
    assert turn["finish_reason"] == "stop"
