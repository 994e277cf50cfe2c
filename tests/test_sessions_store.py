"""Store: round trips, atomic saves, backups of migrated files, quarantine, index, fuzzing, two-process locks."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_harmony_tui import paths
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.sessions import (
    SCHEMA_VERSION,
    CorruptSessionError,
    Message,
    SessionLockedError,
    SessionNotFoundError,
    SessionStore,
)
from mlx_harmony_tui.sessions.maintenance import migrate_all
from mlx_harmony_tui.sessions.migrations import SessionVersionError

FIXTURES = Path(__file__).resolve().parents[1] / "sessions"
ROOT = Path(__file__).resolve().parents[1]


def _sample(store: SessionStore):
    s = store.create(title="Trip", model="gpt-oss-20b", params={"temperature": 0.7},
                     settings={"system_prompt": "be brief", "reasoning_effort": "low"})
    s.messages += [
        Message(id="u", role="user", content="Plan a day in Rome ✈"),
        Message(id="a", role="assistant", channel="analysis", content="think"),
        Message(id="c", role="assistant", channel="commentary", recipient="functions.f", call_id="k",
                content='{"x": 1}', content_type="<|constrain|>json"),
        Message(id="t", role="tool", author="functions.f", channel="commentary", recipient="assistant",
                call_id="k", content="ok"),
        Message(id="f", role="assistant", channel="final", content="Colosseum", params={"temperature": 0.2},
                metrics={"decode_tps": 12.5}, incomplete=True,
                retries=[{"attempt": 1, "reason": "parse"}], extra={"x": [1, 2]}),
    ]
    store.save(s)
    return s


def test_default_root_follows_xdg_and_round_trip_is_exact() -> None:
    store = SessionStore()
    assert store.root == paths.sessions_dir() and str(store.root).startswith(os.environ["XDG_DATA_HOME"])
    s = _sample(store)
    loaded = SessionStore().load(s.id)
    assert loaded == s
    store.save(loaded, touch=False)
    assert SessionStore().load(s.id) == loaded
    raw = json.loads(store.path(s.id).read_text(encoding="utf-8"))
    assert raw["schema_version"] == SCHEMA_VERSION
    assert not [p for p in store.root.iterdir() if p.name.endswith(".tmp")]


def test_rename_delete_and_not_found(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    s = _sample(store)
    store.rename(s.id, "Rome")
    assert store.load(s.id).title == "Rome"
    assert store.resolve(s.id[:10]) == s.id
    store.delete(s.id)
    with pytest.raises(SessionNotFoundError):
        store.load(s.id)
    with pytest.raises(SessionNotFoundError):
        store.load("../etc/passwd")
    assert issubclass(SessionNotFoundError, UserError)


@pytest.mark.parametrize("version", [1, 2])
def test_old_file_migrates_in_memory_and_save_keeps_one_backup(tmp_path: Path, version: int) -> None:
    src = FIXTURES / f"v{version}-example.json"
    sid = json.loads(src.read_text())["id"]
    shutil.copy(src, tmp_path / f"{sid}.json")
    store = SessionStore(tmp_path)
    s = store.load(sid)
    assert json.loads((tmp_path / f"{sid}.json").read_text())["schema_version"] == version  # not written yet
    s.title = "changed"
    store.save(s)
    backup = tmp_path / f"{sid}.v{version}.bak"
    assert backup.read_bytes() == src.read_bytes()
    assert json.loads((tmp_path / f"{sid}.json").read_text())["schema_version"] == SCHEMA_VERSION
    s.title = "again"
    SessionStore(tmp_path).save(s)  # a later save (other store) never replaces the backup
    assert backup.read_bytes() == src.read_bytes()
    assert SessionStore(tmp_path).load(sid) == s


def test_migrate_all_dry_run_then_real(tmp_path: Path) -> None:
    for v in (1, 2, 3, 4):
        shutil.copy(FIXTURES / f"v{v}-example.json", tmp_path / f"example-v{v}.json")
    store = SessionStore(tmp_path)
    dry, failed = migrate_all(store, dry_run=True)
    assert len(dry) == 3 and not failed and not list(tmp_path.glob("*.bak"))
    done, failed = migrate_all(store)
    assert len(done) == 3 and not failed and sorted(p.name for p in tmp_path.glob("*.bak")) == [
        "example-v1.v1.bak", "example-v2.v2.bak", "example-v3.v3.bak"]
    assert migrate_all(store) == ([], 0)


def test_damaged_files_are_reported_and_left_alone_and_the_rest_still_load(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    good = _sample(store)
    (tmp_path / "bad-json.json").write_text('{"schema_version": 3, "id": "bad-j')
    bad = json.loads(store.path(good.id).read_text())
    bad.update(id="bad-schema", messages=5)
    (tmp_path / "bad-schema.json").write_text(json.dumps(bad))
    newer = {"schema_version": SCHEMA_VERSION + 1, "id": "newer"}
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    fresh = SessionStore(tmp_path)
    listed = fresh.list()
    assert [s.id for s in listed] == [good.id]
    assert len(fresh.problems) == 3
    assert any("bad-json.json" in p and "skipped" in p for p in fresh.problems)
    assert any("bad-schema.json" in p and "messages" in p for p in fresh.problems)
    assert (tmp_path / "bad-json.json").read_text() == '{"schema_version": 3, "id": "bad-j'  # reading moves nothing
    assert not list(tmp_path.glob("*.corrupt-*"))
    assert json.loads((tmp_path / "newer.json").read_text()) == newer  # a newer app's file is left alone
    with pytest.raises(SessionVersionError, match="newer"):
        fresh.load("newer")
    # saving a new session under a damaged file's id moves the damaged file aside, never overwrites it
    (tmp_path / "x1.json").write_text("garbage")
    s = fresh.load(good.id)
    s.id = "x1"
    fresh.save(s)
    assert [p.read_text() for p in tmp_path.glob("x1.json.corrupt-*")] == ["garbage"]


def test_index_is_rebuilt_when_stale_or_missing(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    a = _sample(store)
    b = store.create(title="second")
    assert {s.id for s in store.list()} == {b.id, a.id}
    index = tmp_path / ".index.json"
    assert index.exists()
    a.title = "Roma antica"
    store.save(a)  # changes mtime/size: the next list re-reads only this file
    listed = store.list()
    assert listed[0].id == a.id and listed[0].title == "Roma antica" and listed[0].message_count == 5
    assert listed[0].exchanges == sum(m.role == "user" for m in a.messages)
    assert [s.id for s in store.list("roma")] == [a.id]
    assert [s.id for s in store.list("colosseum")] == [a.id]  # searches the conversation's start
    assert store.list("nothing-like-this") == []
    index.write_text("{not json")
    assert {s.id for s in store.list()} == {a.id, b.id}
    store.delete(b.id)
    assert [s.id for s in store.list()] == [a.id]
    assert json.loads(index.read_text())["entries"].keys() == {f"{a.id}.json"}


_VALID = (FIXTURES / "v3-example.json").read_bytes()
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=12,
)


def _check_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "example-v3.json").write_bytes(data)
        store = SessionStore(root)
        try:
            session = store.load("example-v3")
        except CorruptSessionError:
            assert (root / "example-v3.json").read_bytes() == data  # reported, never moved by a read
            assert store.problems
        except SessionVersionError:
            assert (root / "example-v3.json").read_bytes() == data
        else:
            store.save(session)
            assert SessionStore(root).load("example-v3") == session
        SessionStore(root).list()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(0, len(_VALID)), flips=st.lists(st.tuples(st.integers(0, len(_VALID) - 1),
                                                                   st.integers(0, 255)), max_size=3))
def test_fuzzed_and_truncated_files_never_crash(cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(_VALID)
    for pos, byte in flips:
        data[pos] = byte
    _check_bytes(bytes(data[:cut]) if not flips else bytes(data))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.lists(st.sampled_from(["messages", 0, 1, 4, "id", "role", "channel", "metrics", "params",
                                      "settings", "retries", "extra", "content", "schema_version", "title"]),
                     min_size=1, max_size=3), value=_json)
def test_documents_with_a_field_replaced_never_crash(path: list, value: object) -> None:
    doc = json.loads(_VALID)
    node = doc
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
    try:
        node[path[-1]] = value
    except (IndexError, TypeError):
        pass
    _check_bytes(json.dumps(doc).encode())


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mlx_harmony_tui.sessions import SessionStore, SessionLockedError
    store = SessionStore(Path(sys.argv[1]))
    try:
        store.lock(sys.argv[2])
    except SessionLockedError as e:
        print("LOCKED", e, flush=True)
        s = store.load(sys.argv[2])
        try:
            store.save(s)
        except SessionLockedError as e:
            print("SAVE-REFUSED", e, flush=True)
        sys.exit(3)
    print("ACQUIRED", flush=True)
    if len(sys.argv) > 3:
        time.sleep(60)
""")


def _child(root: Path, sid: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(root), sid, *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_cannot_open_the_same_session(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    s = _sample(store)
    with store.open_locked(s.id) as session:
        assert session == s
        out, err = _child(tmp_path, s.id).communicate(timeout=30)
        assert f"LOCKED session {s.id} is open in process {os.getpid()}" in out, err
        assert "SAVE-REFUSED" in out and str(os.getpid()) in out
        store.save(session)  # we hold it: our saves go through
    out, _ = _child(tmp_path, s.id).communicate(timeout=30)
    assert out.strip() == "ACQUIRED"
    assert not (tmp_path / f"{s.id}.lock").exists()


def test_lock_of_a_killed_process_is_stale_not_blocking(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    s = _sample(store)
    child = _child(tmp_path, s.id, "hold")
    assert child.stdout is not None and child.stdout.readline().strip() == "ACQUIRED"
    with pytest.raises(SessionLockedError, match=str(child.pid)):
        store.lock(s.id)
    with pytest.raises(SessionLockedError, match=str(child.pid)):
        store.save(s)
    with pytest.raises(SessionLockedError, match=f"open in process {child.pid}; not deleting it"):
        store.delete(s.id)  # said "not saving over it"
    child.kill()
    child.wait(timeout=30)
    assert (tmp_path / f"{s.id}.lock").exists()  # left behind by the killed process ...
    lock = store.lock(s.id)  # ... and not mistaken for a live one
    assert lock.held
    store.save(s)
    store.unlock(s.id)


def test_search_finds_words_anywhere_in_any_message_and_counts_exchanges(tmp_path: Path) -> None:
    """Search reads the whole text of every message (not the first 160 characters); the count is of
    exchanges (user messages), not of Harmony records; the CLI and the browser share it (store.list)."""
    store = SessionStore(tmp_path)
    s = store.create(title="Long chat")
    for i in range(6):
        s.messages += [
            Message(id=f"u{i}", role="user", content=f"question {i} " + "filler " * 40),
            Message(id=f"a{i}", role="assistant", channel="analysis", content=f"thinking {i}"),
            Message(id=f"f{i}", role="assistant", channel="final", content=f"answer {i} " + "more " * 40),
        ]
    s.messages[-1].content += " the word zanzibar sits far past the start"
    s.messages[4].content = "analysis mentions quokka"
    store.save(s)
    other = store.create(title="Other")
    other.messages.append(Message(id="u", role="user", content="nothing here"))
    store.save(other)
    assert [x.id for x in store.list("zanzibar")] == [s.id]
    assert [x.id for x in SessionStore(tmp_path).list("ZANZIBAR far")] == [s.id]  # a new store: from the index
    assert [x.id for x in store.list("quokka")] == [s.id]
    assert store.list("zanzibar nothing") == []
    rows = {x.id: x for x in store.list()}
    assert rows[s.id].exchanges == 6 and rows[s.id].message_count == 18
    s.messages[0].content = "now about wombats"
    store.save(s)
    assert [x.id for x in store.list("wombats")] == [s.id]  # a changed file's text is re-read


def test_sessions_list_cli_searches_text_and_shows_turns(tmp_path: Path, capsys) -> None:
    from mlx_harmony_tui.cli import main

    store = SessionStore(tmp_path)
    s = store.create(title="Plain title")
    s.messages += [Message(id="u", role="user", content="x " * 200 + "platypus"),
                   Message(id="f", role="assistant", channel="final", content="ok")]
    store.save(s)
    assert main(["sessions", "--dir", str(tmp_path), "list", "platypus"]) == 0
    out = capsys.readouterr().out
    assert s.id in out and "TURNS" in out
    assert main(["sessions", "--dir", str(tmp_path), "list", "echidna"]) == 0
    assert "no sessions matching 'echidna'" in capsys.readouterr().out


def test_reading_never_creates_the_sessions_folder(tmp_path: Path, capsys) -> None:
    """`sessions --dir TYPO list/show` and a fresh install's `sessions list` leave no folder behind; the first
    save creates it."""
    from mlx_harmony_tui.cli import main

    root = tmp_path / "not" / "yet"
    store = SessionStore(root)
    assert store.list() == [] and store.list("word") == []
    with pytest.raises(SessionNotFoundError):
        store.resolve("2026")
    assert main(["sessions", "--dir", str(root), "list"]) == 0
    assert main(["sessions", "--dir", str(root), "show", "x"]) == 2
    assert main(["sessions", "--dir", str(root), "migrate"]) == 0
    capsys.readouterr()
    assert not (tmp_path / "not").exists()
    s = store.create(title="first")
    assert store.path(s.id).is_file() and [x.id for x in store.list()] == [s.id]


def test_an_unusable_sessions_folder_is_a_clear_message_not_a_traceback(tmp_path: Path, capsys) -> None:
    """XDG_DATA_HOME (or --dir) below a file: listing warns, saving is a SessionError (a UserError)."""
    from mlx_harmony_tui.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    root = blocker / "sessions"
    store = SessionStore(root)
    assert store.list() == [] and "cannot read the sessions folder" in store.problems[0]
    with pytest.raises(UserError, match="cannot create the sessions folder .* \\(Not a directory\\)"):
        store.create(title="t")
    assert main(["sessions", "--dir", str(root), "list"]) == 0
    assert "cannot read the sessions folder" in capsys.readouterr().err
    src = tmp_path / "in.json"
    shutil.copy(FIXTURES / "v4-example.json", src)
    assert main(["sessions", "--dir", str(root), "import", str(src)]) == 2
    err = capsys.readouterr().err
    assert "cannot create the sessions folder" in err and "Traceback" not in err


def test_sessions_list_cli_takes_several_words(tmp_path: Path, capsys) -> None:
    """`sessions list WORDS`: its help says "contain all these words"; a second word was an argparse error."""
    from mlx_harmony_tui.cli import main

    store = SessionStore(tmp_path)
    both, one = store.create(title="Rome trip"), store.create(title="Rome alone")
    both.messages.append(Message(id="u", role="user", content="pasta and gelato"))
    store.save(both)
    store.save(one)
    assert main(["sessions", "--dir", str(tmp_path), "list", "rome", "gelato"]) == 0
    out = capsys.readouterr().out
    assert both.id in out and one.id not in out
    assert main(["sessions", "--dir", str(tmp_path), "list", "--json", "rome", "pizza"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_sessions_delete_and_rename_from_the_command_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """The browser deletes and renames; the command line could only list them (a user had to find the file)."""
    from mlx_harmony_tui.cli import main

    store = SessionStore(tmp_path)
    keep, drop = store.create(title="keep me"), store.create(title="drop me")
    d = ["sessions", "--dir", str(tmp_path)]
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal: no silent deletes
    assert main([*d, "delete", drop.id]) == 2
    assert "pass --yes" in capsys.readouterr().err and store.path(drop.id).exists()
    assert main([*d, "delete", drop.id, "--yes"]) == 0
    assert f"deleted {drop.id} 'drop me'" in capsys.readouterr().out
    assert not store.path(drop.id).exists() and store.path(keep.id).exists()
    assert main([*d, "delete", "nonexistent", "--yes"]) == 2
    assert "no session 'nonexistent'" in capsys.readouterr().err
    assert main([*d, "rename", keep.id[:12], "Kept", "forever"]) == 0
    assert store.load(keep.id).title == "Kept forever" and "Kept forever" in capsys.readouterr().out


def test_folder_and_config_options_also_work_after_the_action(tmp_path: Path, capsys) -> None:
    """`sessions list --dir D` and `mcp list --config F` (the order `models list --config F` takes) were
    'unrecognized arguments': those options were only read before the action."""
    from mlx_harmony_tui.cli import main

    s = SessionStore(tmp_path).create(title="found me")
    assert main(["sessions", "list", "--dir", str(tmp_path)]) == 0
    assert s.id in capsys.readouterr().out
    assert main(["sessions", "--dir", str(tmp_path), "show", s.id]) == 0  # the documented order still works
    assert "found me" in capsys.readouterr().out
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    assert main(["mcp", "list", "--config", str(cfg)]) == 0
    assert f"no MCP servers configured (add [[mcp.servers]] to {cfg}" in capsys.readouterr().out


def test_deleting_a_session_removes_its_prompt_cache_file(tmp_path: Path, capsys) -> None:
    """The saved prompt cache (<cache>/prompt-cache/<id>.safetensors, up to GBs for a long chat) stayed behind
    when its session was deleted, in the browser or from the command line, with nothing left to use it."""
    from mlx_harmony_tui.cli import main

    store = SessionStore(tmp_path)
    s, other = store.create(title="long chat"), store.create(title="other")
    for sid in (s.id, other.id):
        paths.prompt_cache_file(sid).parent.mkdir(parents=True, exist_ok=True)
        paths.prompt_cache_file(sid).write_bytes(b"x" * 100)
    assert main(["sessions", "--dir", str(tmp_path), "delete", s.id, "--yes"]) == 0
    capsys.readouterr()
    assert not paths.prompt_cache_file(s.id).exists() and paths.prompt_cache_file(other.id).exists()
    store.delete(other.id)  # what the browser calls
    assert not paths.prompt_cache_file(other.id).exists()
