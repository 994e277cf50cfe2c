"""Config values that used to pass validation and break later: deep nesting (RecursionError at start),
nan/inf numbers (timeout_s = inf meant no timeout), negative or oversized seeds (file, --seed, /set), and
function commands that cannot start. A bad config never stops the app: each is a problem naming the key,
and the key falls back to its default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_harmony_tui import cli, paths
from mlx_harmony_tui.config import load_config
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.faces.common import parse_value


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def messages(problems) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{p.key}: {p.message}" for p in problems]


@pytest.mark.parametrize(
    "text",
    [
        "x = " + "[" * 5000 + "]" * 5000,
        "x = " + "{a = " * 3000 + "1" + "}" * 3000,
        "[sampling]\ntemperature = 0.5\n[profiles.deep]\nx = " + "[" * 5000 + "]" * 5000,
    ],
    ids=["array", "inline table", "in a profile table"],
)
def test_nesting_too_deep_to_parse_is_a_problem_not_a_crash(text: str) -> None:
    config, problems = load_config(write(paths.config_file(), text))
    assert any("nested too deeply" in p.message for p in problems)
    assert config.sampling.temperature is None  # the whole file falls back to defaults


def test_deep_but_parseable_nesting_is_cut_and_the_rest_kept() -> None:
    deep = "{a = " * 40 + "1" + "}" * 40
    text = f'[sampling]\ntemperature = 0.5\n[[tools.functions]]\nname = "f"\ncommand = "echo"\nparameters = {deep}\n'
    config, problems = load_config(write(paths.config_file(), text))
    assert config.sampling.temperature == 0.5
    assert any("nested more than 32 levels deep; ignored" in m for m in messages(problems))


def test_a_deep_profile_file_is_a_problem_not_a_crash() -> None:
    write(paths.config_dir() / "profiles" / "deep.toml", "x = " + "[" * 5000 + "]" * 5000)
    config, problems = load_config(
        write(paths.config_file(), "[sampling]\ntemperature = 0.5\n"), profile="deep"
    )
    assert config.sampling.temperature == 0.5
    assert any("nested too deeply" in p.message for p in problems)


def test_the_app_starts_with_a_deeply_nested_config() -> None:
    write(paths.config_file(), "x = " + "[" * 5000 + "]" * 5000)
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_harmony_tui", "generate", "--max-tokens", "2"],
        input="hi",
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    assert "nested too deeply" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "line, key",
    [
        ("[sampling]\ntemperature = nan", "sampling.temperature"),
        ("[sampling]\ntemperature = inf", "sampling.temperature"),
        ("[sampling]\nrepetition_penalty = inf", "sampling.repetition_penalty"),
        ("[sampling]\ntop_p = -nan", "sampling.top_p"),
        ("[sampling]\nseed = -1", "sampling.seed"),
        ("[sampling]\nseed = 18446744073709551616", "sampling.seed"),
        ("[tools.python]\ntimeout_s = inf", "tools.python.timeout_s"),
        ("[profiles.p.sampling]\ntemperature = inf", "profiles.p.sampling.temperature"),
    ],
)
def test_values_that_would_break_later_are_refused(line: str, key: str) -> None:
    config, problems = load_config(
        write(paths.config_file(), line + "\n"), profile="p" if "profiles" in line else None
    )
    assert [p.key for p in problems] == [key], messages(problems)
    assert "using the default" in problems[0].message
    assert config.sampling.temperature is None and config.sampling.seed is None
    assert config.tools.python.timeout_s == 10.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--seed", "-1", "hi"], "a seed is between 0 and 2**64-1"),
        (["generate", "--seed", str(2**64), "hi"], "a seed is between 0 and 2**64-1"),
        (["generate", "--temperature", "nan", "hi"], "not a finite number"),
        (["chat", "--repetition-penalty", "inf"], "not a finite number"),
    ],
)
def test_flags_refuse_the_same_values(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "key, text, message",
    [
        ("seed", "-1", "seed: '-1': a seed is between 0 and 2\\*\\*64-1"),
        ("temperature", "nan", "temperature: 'nan' is not a finite number"),
        ("repetition_penalty", "inf", "repetition_penalty: 'inf' is not a finite number"),
        ("top_k", "many", "top_k: 'many' is not a valid number"),
    ],
)
def test_set_refuses_the_same_values(key: str, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_value(key, text)


def test_function_commands_that_cannot_start_are_reported_when_read(tmp_path: Path) -> None:
    script = tmp_path / "tool.sh"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    text = (
        '[[tools.functions]]\nname = "quotes"\ncommand = "say \'unbalanced"\n\n'
        f'[[tools.functions]]\nname = "noshebang"\ncommand = "{script}"\n\n'
        '[[tools.functions]]\nname = "fine"\ncommand = "echo hi"\n'
    )
    config, problems = load_config(write(paths.config_file(), text))
    got = messages(problems)
    assert any(
        m.startswith("tools.functions[0].command: function 'quotes'") and "skipped" in m for m in got
    ), got
    assert any(m.startswith("tools.functions[1].command:") and "without a '#!' line" in m for m in got), got
    assert [f.name for f in config.tools.functions] == ["noshebang", "fine"]
