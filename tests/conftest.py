"""Shared fixtures: isolated XDG dirs for every test, and the offline o200k vocabulary built once; and the
lock that lets a test marked ``alone`` run with no other test beside it when pytest-xdist runs two at once."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_VOCAB_DIR = Path(__file__).parent / ".cache" / "vocab"


def _build_vocab() -> Path:
    from mlx_harmony_tui.harmony import vocab

    target = _VOCAB_DIR / vocab.FILENAME
    if not vocab._valid_file(target):
        _VOCAB_DIR.mkdir(parents=True, exist_ok=True)
        vocab._write_atomic(target, vocab.derive_from_quicktok())
    return _VOCAB_DIR


# Set before any test imports openai-harmony, so every test (and subprocess) sees a valid vocabulary.
os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(_build_vocab())


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config) -> Iterator[object]:
    """Two workers by default (pytest-xdist, from the test extra), one module each at a time, so
    module-scoped servers and models load once: the suite waits on subprocesses, servers and tmux much of
    the time. Set here rather than in addopts so that -n N, -n 0, --pdb and an environment without xdist
    (-p no:xdist, or a venv from before it was added) still run, the last ones in one process."""
    if (
        getattr(config.option, "numprocesses", "absent") is None
        and not hasattr(config, "workerinput")
        and not config.getoption("usepdb", False)
    ):
        config.option.numprocesses = 2
        if config.option.dist == "no":
            config.option.dist = "loadscope"
    return (yield)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "alone: loads the machine on purpose (busy processes): no other test runs at the same time"
    )


def _lock_dir(config: pytest.Config) -> Path | None:
    """The folder the xdist workers of this run share (their basetemps' parent); None without xdist."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not config.option.basetemp:
        return None
    return Path(config.option.basetemp).parent


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Under xdist every test holds a shared lock from its setup to its teardown; an ``alone`` test holds it
    exclusively, so it starts once the other worker's test ended and the other worker waits until it is done.
    The gate lock, taken briefly before the shared one, keeps a waiting ``alone`` test from being starved."""
    folder = _lock_dir(item.config)
    if folder is None:
        yield
        return
    alone = item.get_closest_marker("alone") is not None
    with open(folder / "gate.lock", "a") as gate, open(folder / "run.lock", "a") as run:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(run, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(run, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own config/data/cache dirs, so nothing touches the user's real files."""
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"):
        d = tmp_path / "xdg" / var.lower()
        d.mkdir(parents=True)
        monkeypatch.setenv(var, str(d))
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(_VOCAB_DIR))
    # The Hugging Face cache then follows XDG_CACHE_HOME; nothing reaches the user's cache, token or Hub.
    for var in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN",
                "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    # An xdist worker has COLUMNS=80 and LINES=24: an app started in a 120x40 tmux window would draw at 80x24.
    for var in ("COLUMNS", "LINES"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "xdg"


@pytest.fixture(scope="session")
def encoding():
    from mlx_harmony_tui.harmony.vocab import load_encoding

    return load_encoding()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny random GPT-OSS checkpoint (float32, real vocabulary size) shared by the whole run."""
    from mlx_harmony_tui.model import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model", layout="float", seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    from mlx_harmony_tui.engine.generator import Engine
    from mlx_harmony_tui.model import load_model

    model, config = load_model(tiny_model_dir)
    return Engine(model, config, model_id="tiny")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model in the mlx-community layout, two shards and an index (29 MB), as a repo's files."""
    from mlx_harmony_tui.model import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("repo") / "m", layout="mlx", shards=2)


@pytest.fixture
def fake_hub(checkpoint: Path, monkeypatch: pytest.MonkeyPatch):
    """hub_server.REPO (plus files the loader does not need) on a local Hub-layout server; HF_ENDPOINT
    points to it, so the real huggingface_hub client (and `models pull` in a child process) uses it."""
    from hub_server import NOT_NEEDED, REPO, FakeHub

    server = FakeHub()
    server.add_folder(REPO, checkpoint, extra=NOT_NEEDED)
    monkeypatch.setenv("HF_ENDPOINT", server.start())
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield server
    server.stop()
