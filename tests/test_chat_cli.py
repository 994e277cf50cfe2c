"""`chat` and `generate` through cli.main with real stdin text and the tiny model (and one real subprocess)."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlx_harmony_tui import cli
from mlx_harmony_tui.server.app import create_app
from mlx_harmony_tui.server.command import serve_in_thread
from mlx_harmony_tui.sessions.store import SessionStore


class _Stdin(io.StringIO):
    def isatty(self) -> bool:
        return False


def _run(argv: list[str], stdin: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", _Stdin(stdin))
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_json_document(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(["generate", "--model", "tiny", "--json", "--max-tokens", "6", "--seed", "4", "--reasoning-effort", "low"],
                        "Hello from stdin", monkeypatch, capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert set(doc) >= {"analysis", "final", "tool_calls", "finish_reason", "metrics"}
    assert doc["finish_reason"] in ("stop", "length")
    assert doc["metrics"]["prompt_tokens"] > 0 and 0 < doc["metrics"]["generated_tokens"] <= 6 * 3
    rc2, out2, err2 = _run(["generate", "--model", "tiny", "--json", "--max-tokens", "6", "--seed", "4", "--reasoning-effort", "low",
                         "--prompt", "Hello from stdin"], "", monkeypatch, capsys)
    assert rc2 == 0, err2
    assert json.loads(out2)["final"] == doc["final"] and json.loads(out2)["analysis"] == doc["analysis"]


@pytest.mark.parametrize("argv, message", [
    (["generate", "--prompt", "x", "--top-p", "3"], "--top-p"),
    (["generate", "--prompt", "x", "--max-tokens", "0"], "--max-tokens"),
    (["generate", "--prompt", "x", "--repetition-context", "99999999999"], "--repetition-context"),  # MemoryError
    (["generate", "--prompt", "x", "--model", "/no/such/model"], "model not found"),
    (["generate", "--prompt", "   "], "empty"),
    (["generate", "--prompt", "x", "--remote", "not-a-url"], "http://host:port"),
    (["generate", "--prompt", "x", "--config", "/no/such.toml"], "does not exist"),
])
def test_bad_input_exits_with_a_clear_message(argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(argv, "", monkeypatch, capsys)
    assert rc != 0 and message in err and "Traceback" not in err


def test_line_chat_commands_stream_and_record(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    script = "\n".join(["hello", "/set temperature=0.5", "/set top_p=9", "/set", "/help", "/bogus",
                        "//slash first", "/save Named chat", "/quit", "never sent"]) + "\n"
    rc, out, err = _run(["chat", "--model", "tiny", "--max-tokens", "5", "--seed", "1"], script, monkeypatch, capsys)
    assert rc == 0, err
    assert "temperature=0.5" in out and "/models" in out
    assert "top_p: invalid value 9.0" in err and "unknown command /bogus" in err  # named as typed
    sessions = SessionStore().list()
    assert len(sessions) == 1
    session = SessionStore().load(sessions[0].id)
    assert session.title == "Named chat"
    users = [m.content for m in session.messages if m.role == "user"]
    assert users == ["hello", "/slash first"]
    replies = [m for m in session.messages if m.role == "assistant"]
    assert replies and all(not m.incomplete for m in replies)
    finals = [m.content for m in replies if m.channel == "final" and m.content]
    assert finals and all(text in out for text in finals)  # what was recorded is what was printed


def test_line_chat_over_remote(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from mlx_harmony_tui.chat.events import Delta, ToolCall, TurnFinished
    from tests.test_server_protocol import ScriptedBackend

    scripted = ScriptedBackend()
    scripted.scripts.append([Delta("analysis", "pondering"), Delta("final", "Remote hi"), TurnFinished("stop")])
    scripted.scripts.append([ToolCall("c", "functions.f", '{"a": 1}'), TurnFinished("stop")])
    monkeypatch.setenv("OPENAI_API_KEY", "envkey")
    with serve_in_thread(create_app(scripted, api_key="envkey")) as url:
        rc, out, err = _run(["chat", "--remote", url, "--show-analysis", "--show-tools"], "one\ntwo\n",
                            monkeypatch, capsys)
    assert rc == 0, err
    assert "[analysis] pondering" in out and "Remote hi" in out
    # The chat declared no function f, so the server reports the call instead of passing it on.
    assert "[The model called 'functions.f', a tool this request did not declare; nothing was run.]" in out
    assert [m.text for m in scripted.requests[1].messages if m.role == "user"] == ["one", "two"]


@pytest.mark.parametrize("argv", [["chat"], ["generate", "--prompt", "hello"]])
def test_a_remote_model_the_server_does_not_serve_is_said_at_startup(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--remote URL --model nope` was accepted and failed only at the first message (a session recorded
    with it): it is now the startup error, naming what the server serves, before anything is sent."""
    from tests.test_server_protocol import ScriptedBackend

    scripted = ScriptedBackend()
    with serve_in_thread(create_app(scripted)) as url:
        rc, out, err = _run([*argv, "--remote", url, "--model", "nope"], "hello\n", monkeypatch, capsys)
    assert rc == 2 and "model 'nope' does not exist; this server serves: scripted" in err, (rc, err)
    assert "Traceback" not in err and "HTTP 404" not in err  # said by the startup check, not by a turn
    assert scripted.requests == [] and SessionStore().list() == []


def test_generate_subprocess_exit_code_and_stdin(tmp_path: Path) -> None:
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "mlx_harmony_tui", "generate", "--model", "tiny", "--max-tokens", "4"],
                          input="Hi there", capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_generate_json_separates_analysis_and_final_with_the_demo_model(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(["generate", "--json", "--model", "demo", "--max-tokens", "200", "--seed", "1",
                         "--prompt", "Hello"], "", monkeypatch, capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["analysis"].strip() and doc["final"].strip() and doc["analysis"] != doc["final"]
    assert "<|" not in doc["final"] and doc["finish_reason"] == "stop"
    assert doc["metrics"]["generated_tokens"] > len(doc["final"].split()) // 2


@pytest.mark.parametrize("args", [["generate", "--json", "--max-tokens", "4"], ["models", "list"]])
def test_a_reader_that_goes_away_is_not_a_traceback(args: list[str]) -> None:
    """`mlx-harmony-tui generate --json | head -c 100` printed a BrokenPipeError traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "mlx_harmony_tui", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ),
                            cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    proc.stdout.close()  # the reader is gone before anything is written
    _, err = proc.communicate(b"Hi", timeout=120)
    assert "Traceback" not in err.decode() and "BrokenPipe" not in err.decode(), err.decode()
    assert proc.returncode == 141


def _console_script() -> list[str]:
    """The installed `mlx-harmony-tui` entry point next to this interpreter (the command users type)."""
    script = Path(sys.executable).with_name("mlx-harmony-tui")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mlx_harmony_tui"]


def test_piped_chat_on_the_demo_shows_the_python_call_and_the_answer() -> None:
    """`printf 'What is 37*12?\\n/quit\\n' | mlx-harmony-tui chat --show-tools`, as the README shows it."""
    proc = subprocess.run([*_console_script(), "chat", "--show-tools", "--temperature", "0"],
                          input="What is 37*12?\n/quit\nnever sent\n", capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    call, result = out.find("[tool call] python("), out.find("[tool result] python: 444")
    assert 0 <= call < result, out
    assert "37" in out[call:result] and "12" in out[call:result]
    answer = out[result + len("[tool result] python: 444"):]
    assert str(37 * 12) in answer, out  # the final answer quotes the tool's result
    sessions = SessionStore().list()  # the child used this test's XDG dirs
    assert len(sessions) == 1
    assert [m.content for m in SessionStore().load(sessions[0].id).messages if m.role == "user"] == ["What is 37*12?"]


def test_line_chat_set_and_slash_text_on_the_demo(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    script = "/set temperature=0.2\n/set\n//help me\nWhat is 37*12?\n/quit\n"
    rc, out, err = _run(["chat", "--seed", "3", "--show-tools"], script, monkeypatch, capsys)
    assert rc == 0, err
    assert "temperature = 0.2" in out and "temperature=0.2 " in out and not err.strip()
    assert "commands:" not in out  # '//help me' went to the model, it did not run /help
    session = SessionStore().load(SessionStore().list()[0].id)
    assert [m.content for m in session.messages if m.role == "user"] == ["/help me", "What is 37*12?"]
    assert "[tool result] python: 444" in out


@pytest.mark.parametrize("argv, message", [
    (["chat", "--bogus"], "unrecognized arguments: --bogus"),
    (["chat", "--temperature", "hot"], "--temperature: invalid float value"),
    (["chat", "--temperature", "99"], "--temperature: invalid value 99.0"),
    (["chat", "--tools", "shell"], "--tools: unknown tool shell"),
])
def test_line_chat_bad_flag_exits_nonzero_with_a_clear_message(argv: list[str], message: str) -> None:
    proc = subprocess.run([*_console_script(), *argv], input="hi\n", capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not proc.stdout.strip()


def test_line_chat_creates_no_session_until_a_message_is_sent(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(["chat", "--model", "tiny"], "/set temperature=0.5\n/help\n/save Later\n/quit\n",
                        monkeypatch, capsys)
    assert rc == 0, err
    assert SessionStore().list() == []  # commands alone leave no (empty) session file
    assert "first message" in out


def test_line_chat_records_set_changes_in_the_session(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    script = "hello\n/set temperature=0.5\n/set instructions=Answer briefly.\nagain\n/quit\n"
    rc, _, err = _run(["chat", "--model", "tiny", "--max-tokens", "4", "--seed", "1", "--temperature", "0.9"],
                      script, monkeypatch, capsys)
    assert rc == 0, err
    session = SessionStore().load(SessionStore().list()[0].id)
    assert session.params["temperature"] == 0.9 and session.params["max_tokens"] == 4
    users = [k for k, m in enumerate(session.messages) if m.role == "user"]
    first = [m.params for m in session.messages[: users[1]] if m.role == "assistant" and m.params]
    second = [m.params for m in session.messages[users[1]:] if m.role == "assistant" and m.params]
    assert not first  # the first reply used the session's own parameters
    assert second and second[0]["temperature"] == 0.5  # the change is on the reply it applied to
    assert session.settings["instructions"] == "Answer briefly."


def test_an_answer_cut_at_the_token_limit_says_so(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`generate --max-tokens 5` printed an empty line and nothing else (the cut fell in the reasoning); the
    line chat said only '(stopped: length)'. Both now name the limit and how to raise it."""
    rc, out, err = _run(["generate", "--prompt", "hi", "--max-tokens", "5"], "", monkeypatch, capsys)
    assert rc == 0 and not out.strip()
    assert "cut at the token limit (max_tokens 5)" in err and "--max-tokens" in err, err
    rc, out, err = _run(["chat", "--max-tokens", "5"], "hi\n", monkeypatch, capsys)
    assert rc == 0 and "cut at the token limit (max_tokens 5)" in err and "/set max_tokens=N" in err, err
    rc, out, err = _run(["generate", "--prompt", "hi", "--max-tokens", "5", "--json"], "", monkeypatch, capsys)
    assert json.loads(out)["finish_reason"] == "length" and not err  # the document says it already


def test_line_chat_set_takes_context_limit_as_the_docs_say(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """docs/config.md: `/set` takes the [sampling] names; context_limit was 'unknown setting'. A bad seed said
    "'-1' is not a valid number" instead of the seed's range."""
    script = "/set context_limit=270\n/set\nlist 5 colors\n/set context_limit=0\n/set seed=-1\n/quit\n"
    rc, out, err = _run(["chat", "--temperature", "0"], script, monkeypatch, capsys)
    assert rc == 0 and "context_limit = 270" in out and "context_limit=270" in out, err
    assert "context_limit: invalid value 0" in err and "between 0 and 2**64-1" in err, err
    assert "cut at the end of the context (270 tokens)" in err  # the demo's prompt is ~250 tokens
    session = SessionStore().load(SessionStore().list()[0].id)
    assert session.params["context_limit"] == 270
    rc, out, err = _run(["chat"], "/set context_limit=300\n/set context_limit=none\n/set\n", monkeypatch, capsys)
    assert rc == 0 and "context_limit=None" in out, err


def test_flags_win_over_the_resumed_session(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/config.md: command line > session. `chat --session ID --temperature 0.9` kept the session's 0.1."""
    rc, _, err = _run(["chat"], "/set temperature=0.1\n/set max_tokens=77\nhi\n", monkeypatch, capsys)
    assert rc == 0, err
    sid = SessionStore().list()[0].id
    rc, out, err = _run(["chat", "--session", sid, "--temperature", "0.9", "--tools", "none"], "/set\nhello\n",
                        monkeypatch, capsys)
    assert rc == 0, err
    assert "temperature=0.9 " in out and "max_tokens=77 " in out  # the flag wins; the rest is the session's
    session = SessionStore().load(sid)
    assert [m.params["temperature"] for m in session.messages if m.params][-1] == 0.9
    assert session.settings["builtin_tools"] == []
    rc, out, err = _run(["chat", "--session", sid], "/set\n", monkeypatch, capsys)
    assert rc == 0 and "temperature=0.9 " in out, err  # what the last reply used


class _Terminal:
    """`mlx-harmony-tui chat` with a pseudo-terminal as stdin (so it is interactive), stdout and stderr read
    as they come."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([*_console_script(), "chat", *args], stdin=slave, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=dict(os.environ))
        os.close(slave)
        self.out = self.err = ""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait_for(self, what: str, stream: str = "out", since: int | None = None, timeout: float = 120) -> None:
        """Read until ``what`` appears in ``stream`` after offset ``since`` (default: what was read so far)."""
        start = len(getattr(self, stream)) if since is None else since
        deadline = time.monotonic() + timeout
        open_ = [self.proc.stdout, self.proc.stderr]
        while what not in getattr(self, stream)[start:]:
            left = deadline - time.monotonic()
            assert left > 0 and open_, f"{what!r} not seen; out={self.out!r} err={self.err!r}"
            for f in select.select(open_, [], [], left)[0]:
                data = os.read(f.fileno(), 65536).decode(errors="replace")
                if not data:  # the process closed it (it ended)
                    open_.remove(f)
                name = "out" if f is self.proc.stdout else "err"
                setattr(self, name, getattr(self, name) + data)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()
        self.proc.stderr.close()
        os.close(self.master)


def test_ctrl_c_at_the_prompt_drops_the_line_and_a_second_one_leaves() -> None:
    """ctrl+c at the prompt ended the chat at once (exit 130, the shell's prompt glued to '^C'), also when it
    was meant for an answer that had just ended. Now it drops what was typed; a second ctrl+c in a row leaves."""
    term = _Terminal("--temperature", "0")
    try:
        term.wait_for("> ")
        term.type("hi\n")
        term.wait_for("> ")
        term.type("half a message\\\n")
        term.wait_for(". ")
        mark = len(term.out)
        term.proc.send_signal(signal.SIGINT)
        term.wait_for("(input dropped; ctrl+c again, ctrl+d or /quit leaves)", "err")
        term.wait_for("> ", since=mark)
        term.type("hello\n")
        term.wait_for("> ")
        mark = len(term.out)
        term.proc.send_signal(signal.SIGINT)
        term.wait_for("(input dropped", "err")
        term.wait_for("> ", since=mark)
        term.proc.send_signal(signal.SIGINT)
        assert term.proc.wait(timeout=60) == 0
        assert "Traceback" not in term.err
    finally:
        term.close()
    (row,) = SessionStore().list()
    assert [m.content for m in SessionStore().load(row.id).messages if m.role == "user"] == ["hi", "hello"]


def test_a_piped_prompt_is_the_same_prompt_as_prompt_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`echo Q | generate` sent "Q\\n" to the model (the shell's newline), so it got another prompt than
    `generate --prompt Q`; the line chat strips it too."""
    prompts = []
    for argv, stdin in ((["--prompt", "What is 37*12?"], ""), ([], "What is 37*12?\r\n\n")):
        trace = tmp_path / f"t{len(prompts)}.jsonl"
        rc, _, err = _run(["generate", "--max-tokens", "4", "--debug-file", str(trace), *argv], stdin, monkeypatch,
                          capsys)
        assert rc == 0, err
        prompts.append(json.loads(trace.read_text().splitlines()[0])["prompt"])
    assert prompts[0] == prompts[1] and "What is 37*12?<|end|>" in prompts[0]


def test_ctrl_c_in_generate_ends_the_line_it_cut() -> None:
    """ctrl+c while `generate` streamed left the shell's prompt glued to the answer ('...^CEXIT')."""
    proc = subprocess.Popen([*_console_script(), "generate", "--prompt", "hello", "--temperature", "3", "--max-tokens",
                             "4000", "--seed", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ))
    try:
        assert proc.stdout is not None and proc.stdout.read1(1)  # the answer is streaming
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and out.endswith(b"\n") and b"Traceback" not in err, (out[-200:], err)


def test_a_session_is_titled_by_the_words_typed_not_the_attached_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The title of a session whose first message had a file attached ran on into the file: "what is in
    the file? Attached file `note.txt`: ``` hello fil"."""
    note = tmp_path / "note.txt"
    note.write_text("hello file\n")
    rc, _, err = _run(["chat", "--max-tokens", "4"], f"/attach {note}\nwhat is in the file?\n", monkeypatch, capsys)
    assert rc == 0, err
    (row,) = SessionStore().list()
    assert row.title == "what is in the file?"
    user = [m for m in SessionStore().load(row.id).messages if m.role == "user"][0]
    assert "hello file" in user.content  # the file still goes with the message


def test_the_loading_line_goes_away_when_the_model_is_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the load left '[100%] loaded output head' and '[100%] ready' above the chat's first line
    (every report at 100% ended a line). The progress now stays on one line and is wiped when done."""
    from mlx_harmony_tui.faces import chat_command

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    for fraction, message in ((0.0, "loading demo"), (0.5, "layer 2/4"), (1.0, "loaded output head"), (1.0, "ready")):
        chat_command._progress(fraction, message)
    chat_command._progress_done()  # run() calls it once the backend is there (or failed)
    screen = err.getvalue()
    assert "\n" not in screen and screen.rsplit("\r", 1)[-1] == ""  # what is left on the line: nothing
