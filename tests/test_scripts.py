"""Every script under scripts/ (lab included) answers --help with its usage and does nothing else: no model
built, no app started, no file written (probe_memory.py once crashed, profile_gpu.py wrote a file named
'--help', stall_watch.py launched the app)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _scripts() -> list[Path]:
    return sorted(SCRIPTS.rglob("*.py"))


def test_scripts_are_found() -> None:
    names = {p.relative_to(SCRIPTS).as_posix() for p in _scripts()}
    assert {"ui_latency.py", "stall_watch.py", "lab/probe_memory.py", "lab/profile_gpu.py"} <= names


@pytest.mark.parametrize("script", _scripts(), ids=lambda p: p.relative_to(SCRIPTS).as_posix())
def test_help_prints_usage_and_does_nothing_else(script: Path, tmp_path: Path) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, str(script), "--help"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:"), proc.stdout[:500]
    assert "Traceback" not in proc.stderr
    assert list(work.iterdir()) == []  # nothing written where it ran
    xdg = tmp_path / "xdg"
    assert not any(p.is_file() for p in xdg.rglob("*"))  # nor in this test's config/data/cache dirs
