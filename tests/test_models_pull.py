"""From nothing to chatting, by repo id: the real huggingface_hub client pulls from a local server that serves
repos in the Hub's layout (tests/hub_server.py; the Hub itself is unreachable here), then the real engine
loads and chats with what was pulled. Interrupted pulls, truncated shards, offline mode, several revisions
and a repo that is not GPT-OSS; and the same from the command line and the TUI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hub_server import REPO, SHARD1, SHARD2, FakeHub, Hold

from mlx_harmony_tui.backends.base import TurnRequest
from mlx_harmony_tui.backends.local import LocalBackend
from mlx_harmony_tui.catalog import hub
from mlx_harmony_tui.catalog.hub import HubError
from mlx_harmony_tui.catalog.listing import find_models
from mlx_harmony_tui.catalog.resolve import ModelNotFoundError, resolve
from mlx_harmony_tui.catalog.verify import ModelVerifyError, bad_files, verify
from mlx_harmony_tui.chat.events import Delta, TurnFinished
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.model import write_tiny_checkpoint


def chat_once(backend: LocalBackend) -> str:
    handle = backend.start_turn(
        TurnRequest(messages=[HMessage("user", "hi")], settings=ChatSettings(max_tokens=8, seed=1))
    )
    events = list(handle.events(timeout=120))
    assert isinstance(events[-1], TurnFinished), events[-1]
    return "".join(e.text for e in events if isinstance(e, Delta))


def test_pull_fetches_what_the_loader_needs_then_the_model_chats(fake_hub: FakeHub) -> None:
    seen: list[tuple[int, int]] = []
    path = hub.pull(REPO, progress=lambda done, total: seen.append((done, total)), verify=bad_files)
    names = sorted(p.name for p in path.iterdir())
    assert names == sorted(
        ["config.json", "generation_config.json", SHARD1, SHARD2, "model.safetensors.index.json"]
    )
    fetched = {p.rsplit("/", 1)[-1] for m, p, _ in fake_hub.log if m == "GET" and "/resolve/" in p}
    assert not fetched & {"README.md", "model.bin"} and not any("original/" in p for _, p, _ in fake_hub.log)
    total = sum(f.stat().st_size for f in path.iterdir())
    assert seen and seen[-1] == (total - (path / "config.json").stat().st_size, seen[-1][1])  # bytes, growing
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))
    found = resolve(REPO)
    assert found.path == path and found.source == "hf-cache"
    backend = LocalBackend.load(REPO)
    try:
        assert backend.model_name == REPO
        chat_once(backend)
    finally:
        backend.close()


def test_a_connection_dropped_mid_file_is_resumed_with_a_range_request(fake_hub: FakeHub) -> None:
    from huggingface_hub import constants

    chunk = constants.DOWNLOAD_CHUNK_SIZE  # huggingface_hub writes (and counts) what it receives in these
    fake_hub.cut_once[SHARD1] = chunk + 1_000_000  # the shard is 14.6 MB
    path = hub.pull(REPO, verify=bad_files)
    assert fake_hub.gets(SHARD1) == [None, f"bytes={chunk}-"]  # the rest, not the whole file again
    assert verify(path, REPO, "n/a").layers == 4


def _cli(*argv: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlx_harmony_tui", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _wait(cond, what: str, timeout: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_killed_pull_continues_where_it_stopped(fake_hub: FakeHub, checkpoint: Path) -> None:
    fake_hub.hold = hold = Hold(SHARD2, at=3_000_000)
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "mlx_harmony_tui", "models", "pull", REPO], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert hold.reached.wait(120), "the pull never reached the second shard"
        blobs = hub.repo_folder(REPO) / "blobs"
        size1 = (checkpoint / SHARD1).stat().st_size
        _wait(lambda: any(f.stat().st_size == size1 for f in blobs.glob("*") if not f.name.endswith("incomplete")),
              "the first shard to finish")  # fmt: skip
        proc.send_signal(signal.SIGKILL)  # no cleanup at all: the worst case
        proc.wait(30)
    finally:
        hold.release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(blobs.glob("*.incomplete")), "a killed pull leaves its partial file"
    with pytest.raises(
        ModelNotFoundError, match=f"partly downloaded; run: mlx-harmony-tui models pull {REPO}"
    ):
        resolve(REPO)
    done = _cli("models", "pull", REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert f"ready: {REPO}" in done.stdout and f"mlx-harmony-tui --model {REPO}" in done.stdout
    assert fake_hub.gets(SHARD1) == [None]  # the finished shard was not fetched again
    assert fake_hub.gets(SHARD2) == [None, None]  # the cut one was (huggingface_hub keeps no partial files)
    assert not list(blobs.glob("*.incomplete"))  # the dead pull's leftover is cleaned up
    verify(resolve(REPO).path, REPO, "n/a")


def test_ctrl_c_stops_a_pull_at_once(fake_hub: FakeHub) -> None:
    fake_hub.hold = hold = Hold(SHARD2, at=3_000_000)  # a file that is half way
    proc = subprocess.Popen([sys.executable, "-m", "mlx_harmony_tui", "models", "pull", REPO], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert hold.reached.wait(120), "the pull never got going"
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)  # huggingface_hub's download threads would keep it alive
        assert time.monotonic() - start < 10
    finally:
        hold.release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert f"interrupted: run `mlx-harmony-tui models pull {REPO}` again to continue" in err


def test_a_truncated_shard_is_caught_before_loading_and_pull_repairs_it(fake_hub: FakeHub) -> None:
    path = hub.pull(REPO, verify=bad_files)
    blob = (path / SHARD2).resolve()
    with blob.open("r+b") as f:
        f.truncate(blob.stat().st_size - 100)
    with pytest.raises(ModelVerifyError) as e:
        LocalBackend.load(REPO)
    msg = str(e.value)
    assert SHARD2 in msg and "truncated" in msg and f"run `mlx-harmony-tui models pull {REPO}`" in msg
    hub.pull(REPO, verify=bad_files)  # the blob is there, so only verification notices and fetches it again
    assert fake_hub.gets(SHARD2) == [None, None] and fake_hub.gets(SHARD1) == [None]
    verify(path, REPO, "n/a")


def test_offline_errors_are_one_line_and_fast(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    start = time.monotonic()
    pull = _cli("models", "pull", REPO, env=env)
    gen = _cli("generate", "--model", REPO, "--prompt", "hi", env=env)
    assert time.monotonic() - start < 60  # two interpreter starts; nothing waits on the network
    assert pull.returncode == 2 and pull.stderr.strip().splitlines() == [
        f"mlx-harmony-tui: cannot download {REPO}: HF_HUB_OFFLINE is set (unset it to download)"
    ]
    lines = gen.stderr.strip().splitlines()
    assert gen.returncode == 2 and len(lines) == 1, gen.stderr
    assert lines[0].startswith(
        f"mlx-harmony-tui: {REPO} is not downloaded; run: mlx-harmony-tui models pull {REPO}"
    )
    assert not [r for r in fake_hub.log if "/resolve/" in r[1] or "/api/models" in r[1]]


def test_an_unreachable_hub_fails_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens here: refused at once
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(HubError, match=f"cannot reach http://127.0.0.1:{port} to download {REPO}"):
        hub.pull(REPO)
    assert time.monotonic() - start < 10
    silent = socket.socket()  # accepts connections but never answers: the read timeout has to end it
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    start = time.monotonic()
    try:
        with pytest.raises(HubError, match="cannot reach"):
            hub.pull(REPO)
        assert time.monotonic() - start < 4 * hub.API_TIMEOUT_S  # its 3 s agent probe + our 5 s API timeout
    finally:
        silent.close()


def test_several_revisions_are_listed_resolved_and_removed_one_by_one(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    other = write_tiny_checkpoint(tmp_path / "v1", layout="mlx", seed=7)
    fake_hub.add_folder(REPO, other, refs=("v1",))
    main_path = hub.pull(REPO)
    v1_path = hub.pull(REPO, "v1")
    assert main_path != v1_path
    names = {e.name: e for e in find_models()}
    assert set(names) == {REPO, f"{REPO}@v1"} and names[f"{REPO}@v1"].path == v1_path
    assert resolve(f"{REPO}@v1").path == v1_path and resolve(REPO).path == main_path
    rm = _cli("models", "rm", f"{REPO}@v1", "--yes", env=dict(os.environ))
    assert rm.returncode == 0 and rm.stdout.startswith(f"deleted {REPO}@v1: 29."), rm.stderr
    assert [e.name for e in find_models()] == [REPO] and not v1_path.exists()
    asked = _cli("models", "rm", REPO, env=dict(os.environ))  # stdin is not a terminal: no silent deletes
    assert asked.returncode == 2 and "pass --yes" in asked.stderr and main_path.exists()


def test_a_repo_that_is_not_gpt_oss_is_refused_before_its_weights_move(fake_hub: FakeHub) -> None:
    llama = {"config.json": b'{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}',
             "model.safetensors": b"z" * 100_000}  # fmt: skip
    fake_hub.add("acme/llama", llama)
    with pytest.raises(
        ModelVerifyError, match=r"acme/llama is a llama model \(LlamaForCausalLM\), not GPT-OSS"
    ):
        hub.pull("acme/llama")
    assert fake_hub.gets("model.safetensors") == [] and not hub.repo_folder("acme/llama").exists()
    with pytest.raises(HubError, match="no model repo acme/nothing at http://127.0.0.1"):
        hub.pull("acme/nothing")
    with pytest.raises(HubError, match=f"{REPO} has no revision 'v9'"):
        hub.pull(REPO, "v9")


def test_a_gated_repo_needs_hf_token(
    fake_hub: FakeHub, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.add_folder("acme/gated-oss", checkpoint)
    fake_hub.gated["acme/gated-oss"] = "hf_test_token"
    with pytest.raises(HubError, match="acme/gated-oss is gated: accept its terms at http://127.0.0.1:.*/acme/gated-oss"
                       " and set HF_TOKEN"):  # fmt: skip
        hub.pull("acme/gated-oss")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    verify(hub.pull("acme/gated-oss"), "acme/gated-oss", "n/a")


def test_cli_pull_then_generate_then_the_tui(fake_hub: FakeHub) -> None:
    env = dict(os.environ)
    pulled = _cli("models", "pull", REPO, env=env)
    assert pulled.returncode == 0, pulled.stderr
    listed = _cli("models", "list", env=env)
    assert listed.returncode == 0 and REPO in listed.stdout and "hf-cache" in listed.stdout, listed.stderr
    info = _cli("models", "info", REPO, "--json", env=env)
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    assert (doc["layers"], doc["experts"], doc["experts_per_token"], doc["context"]) == (4, 4, 2, 131072)
    assert doc["parameters"] > 20_000_000 and doc["weight_bytes"] > 20_000_000 and doc["fits"] is True
    assert doc["layout"] == "mlx" and doc["kv_bytes_per_token"] > 0 and doc["source"] == "hf-cache"
    gen = _cli("generate", "--model", REPO, "--prompt", "hi", "--max-tokens", "4", "--seed", "1", env=env)
    assert gen.returncode == 0, gen.stderr


async def test_the_tui_starts_with_a_pulled_repo(fake_hub: FakeHub) -> None:
    from mlx_harmony_tui.cli import build_parser
    from mlx_harmony_tui.tui.command import build_app

    await_pull = threading.Thread(target=hub.pull, args=(REPO,))
    await_pull.start()
    await_pull.join(120)
    app = build_app(build_parser().parse_args(["tui", "--model", REPO]))
    async with app.run_test(size=(100, 30)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.backend is not None and app.backend.model_name == REPO, [
            n.message for n in app._notifications
        ]
        assert REPO in app.sub_title


def test_serve_and_line_chat_by_repo_id(fake_hub: FakeHub) -> None:
    import openai

    from mlx_harmony_tui import cli
    from mlx_harmony_tui.server.command import build_app as build_server
    from mlx_harmony_tui.server.command import serve_in_thread

    hub.pull(REPO)
    app = build_server(cli.build_parser().parse_args(["serve", "--model", REPO, "--max-tokens", "4"]))
    assert list(app.state.backends) == [REPO]  # the name it was asked for is the name it answers to
    with serve_in_thread(app) as url:
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=60)
        assert [m.id for m in c.models.list()] == [REPO]
        r = c.chat.completions.create(model=REPO, messages=[{"role": "user", "content": "hi"}])
        assert r.model == REPO and r.usage.completion_tokens > 0
    chat = subprocess.run([sys.executable, "-m", "mlx_harmony_tui", "chat", "--model", "demo"], input="/models\n/quit\n",
                          capture_output=True, text=True, timeout=180, env=dict(os.environ))  # fmt: skip
    row = next((line for line in chat.stdout.splitlines() if REPO in line), "")
    assert "hf-cache" in row and "fits: yes" in row, chat.stdout + chat.stderr
