"""Read-only session commands never move or rename a user's file; only `migrate` and `sessions repair` do, and
`migrate --dry-run` says exactly what `migrate` then does (same lines, same exit status)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from mlx_harmony_tui.cli import main
from mlx_harmony_tui.sessions.schema import SCHEMA_VERSION
from mlx_harmony_tui.sessions.store import SessionStore

FIXTURES = Path(__file__).parent.parent / "sessions"


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in root.iterdir() if not p.name.startswith(".")}


def test_an_example_copied_in_as_the_readme_says_opens_under_its_file_name(capsys: pytest.CaptureFixture[str]) -> None:
    root = SessionStore().root
    shutil.copy(FIXTURES / "v3-example.json", root / "v3-example.json")  # its id is "example-v3"
    before = _files(root)
    assert main(["sessions", "list"]) == 0
    out, err = capsys.readouterr()
    assert "v3-example" in out and not err
    assert main(["sessions", "show", "v3-example"]) == 0
    assert "### User" in capsys.readouterr().out
    assert _files(root) == before


def test_read_only_commands_report_damaged_files_and_move_nothing(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = SessionStore().root
    shutil.copy(FIXTURES / "v3-example.json", root / "example-v3.json")
    (root / "broken.json").write_text('{"schema_version": 3, "id": "bro')
    before = _files(root)
    assert main(["sessions", "list"]) == 0
    out, err = capsys.readouterr()
    assert "example-v3" in out and "broken.json" in err and "sessions repair" in err
    assert main(["sessions", "show", "example-v3"]) == 0
    assert main(["sessions", "export", "example-v3", "--format", "json"]) == 0
    assert main(["sessions", "show", "broken"]) == 2
    assert "damaged" in capsys.readouterr().err
    assert _files(root) == before  # nothing moved, renamed or rewritten
    assert main(["sessions", "repair", "--dry-run"]) == 0
    assert _files(root) == before
    assert main(["sessions", "repair"]) == 0
    assert "broken.json: damaged" in capsys.readouterr().out
    assert not (root / "broken.json").exists() and len(list(root.glob("broken.json.corrupt-*"))) == 1


def _migrate(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    rc = main(["sessions", "migrate", *argv])
    return rc, capsys.readouterr().out.splitlines()


def test_migrate_dry_run_predicts_migrate_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    root = SessionStore().root
    shutil.copy(FIXTURES / "v1-example.json", root / "example-v1.json")
    shutil.copy(FIXTURES / "v2-example.json", root / "old-copy.json")  # id differs from the name: not damage
    shutil.copy(FIXTURES / "v3-example.json", root / "example-v3.json")
    (root / "broken.json").write_text("not json")
    (root / "mismatch.json").write_text(json.dumps({"schema_version": 3, "id": "mismatch", "messages": 5}))
    (root / "newer.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "id": "newer"}))
    before = _files(root)
    rc_dry, predicted = _migrate(["--dry-run"], capsys)
    assert _files(root) == before
    rc, done = _migrate([], capsys)
    assert rc_dry == rc == 1  # two damaged files and a newer one could not be migrated
    expected = [re.sub(r"would be ", "", line).replace("<time>", "TIME") for line in predicted]
    assert [re.sub(r"corrupt-\d{8}T\d{6}(-\d+)?", "corrupt-TIME", line) for line in done] == expected
    assert len(done) == 6
    assert sorted(p.name for p in root.glob("*.bak")) == ["example-v1.v1.bak", "example-v3.v3.bak", "old-copy.v2.bak"]
    assert json.loads((root / "old-copy.json").read_text())["id"] == "old-copy"
    assert (root / "newer.json").exists() and not (root / "broken.json").exists()
    rc, again = _migrate([], capsys)
    assert rc == 1 and again == [line for line in done if "newer.json" in line]  # the newer file still cannot be


def test_importing_dialogue_text_suggests_convert_dialogue(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sessions", "import", str(FIXTURES / "dialogue.txt")]) == 2
    assert "sessions convert-dialogue" in capsys.readouterr().err
