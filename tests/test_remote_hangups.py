"""RemoteBackend against a real `serve` of the tiny random model when no chunk comes for a while: a turn the
server holds in its queue (or prefills) is cancelled at once, and a server that goes away mid-answer is
reported as such."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlx_harmony_tui.backends.base import TurnRequest
from mlx_harmony_tui.backends.local import LocalBackend
from mlx_harmony_tui.backends.remote import RemoteBackend
from mlx_harmony_tui.chat.events import Delta, TurnFailed, TurnFinished
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.server.app import create_app
from mlx_harmony_tui.server.command import free_port, serve_in_thread

# a raw completion that cannot stop before its limit (<|return|>, <|call|>, <|endoftext|> are banned)
HOG = {"model": "tiny", "prompt": "go", "max_tokens": 100_000, "stream": True,
       "logit_bias": {"200002": -100, "200012": -100, "199999": -100}}


@pytest.fixture(scope="module")
def url(tiny_model_dir: Path) -> Iterator[str]:
    backend = LocalBackend.load(tiny_model_dir)  # one turn at a time: a second one waits in line
    with serve_in_thread(create_app({"tiny": backend}, ChatSettings())) as base:
        yield base
    backend.close()


def _health(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/health", timeout=10).json()


def _wait_for(cond, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(cond())


def test_cancel_while_the_server_holds_the_turn_in_line_is_immediate(url: str) -> None:
    """No chunk arrives while the turn waits for the model, so a cancel seen only between chunks waited for
    the whole answer ahead of it (52 s measured with one long answer running); the face hung on esc/quit."""
    with httpx.stream("POST", f"{url}/completions", json=HOG, timeout=60) as hog:
        lines = hog.iter_lines()  # kept: a dropped iterator closes the stream
        next(lines)  # the long answer holds the only slot
        remote = RemoteBackend(url)
        handle = remote.start_turn(TurnRequest([HMessage("user", "hi")], ChatSettings()))
        assert _wait_for(lambda: _health(url)["waiting"] == 1)
        t0 = time.monotonic()
        handle.cancel()
        events = list(handle.events(timeout=20))
        assert time.monotonic() - t0 < 5
        assert isinstance(events[-1], TurnFinished) and events[-1].reason == "cancelled", events[-1]
        assert _wait_for(lambda: _health(url)["waiting"] == 0, 10)  # the server saw the hang-up: left the line
        remote.close()
    assert _wait_for(lambda: not _health(url)["busy"], 10)


def test_a_server_that_goes_away_mid_answer_is_reported_so(tiny_model_dir: Path) -> None:
    """`serve` killed while it streams: the turn fails saying the connection broke off mid-answer (it said
    'cannot reach' the server, which had answered until then)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlx_harmony_tui", "serve", "--model", str(tiny_model_dir),
                             "--port", str(port), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        assert _wait_for(lambda: _up(base), 120), "serve did not start"
        remote = RemoteBackend(base)
        handle = remote.start_turn(TurnRequest([HMessage("user", "hi")], ChatSettings(max_tokens=100_000)))
        events = handle.events(timeout=60)
        seen = []
        for ev in events:
            seen.append(ev)
            if isinstance(ev, Delta):
                proc.kill()
                break
        seen += list(events)
    finally:
        proc.kill()
        proc.wait(30)
    failed = seen[-1]
    assert isinstance(failed, TurnFailed), seen[-3:]
    assert "cannot reach" not in failed.error and "mid-answer" in failed.error, failed.error
    remote.close()


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class _CutStream(http.server.BaseHTTPRequestHandler):
    """An HTTP server whose answer ends cleanly but early, as a proxy's read timeout ends one: a couple of
    chunks, then the end of the body without a finish_reason or [DONE] (or a JSON body, not a stream)."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.server.json_body:  # type: ignore[attr-defined]
            body, kind = b'{"choices": [{"message": {"content": "hi"}}]}', "application/json"
        else:
            chunks = [{"choices": [{"index": 0, "delta": {"content": t}}]} for t in ("Hello", " wor")]
            body, kind = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks), "text/event-stream"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("json_body", [False, True])
def test_a_stream_that_ends_before_the_answer_does_is_a_failure(json_body: bool) -> None:
    """It ended the turn as a complete answer ('Hello wor', finish 'stop'): the cut was invisible."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CutStream)
    server.json_body = json_body  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = RemoteBackend(f"http://127.0.0.1:{server.server_port}", model="m")
        events = list(remote.start_turn(TurnRequest([HMessage("user", "hi")], ChatSettings())).events(timeout=30))
    finally:
        server.shutdown()
        server.server_close()
    failed = events[-1]
    assert isinstance(failed, TurnFailed), events[-2:]
    assert "mid-answer" in failed.error and ("application/json" in failed.error) == json_body, failed.error
    remote.close()
