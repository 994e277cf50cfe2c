"""Config file: valid content, every kind of invalid content, profiles, saving, and settings precedence."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

import pytest

from mlx_harmony_tui import paths
from mlx_harmony_tui.config import (
    AppConfig,
    ConfigError,
    find_line,
    list_profiles,
    load_config,
    read_model_defaults,
    resolve_settings,
    save_config,
    set_value,
    settings_from_config,
)
from mlx_harmony_tui.errors import UserError

VALID = """\
model = "gpt-oss-20b"
models_dirs = ["~/models", "/opt/models"]
theme = "nord"
reasoning_effort = "high"
developer_prompt = "Be brief."

[remote]
endpoint = "http://localhost:8000/v1"
api_key_env = "MY_KEY"

[sampling]
temperature = 0.7
top_k = 40
max_tokens = 2048

[placeholders]
name = "Ada"

[keymap]
"app.quit" = "ctrl+q"

[tools.python]
enabled = true
timeout_s = 5
persistent = true

[tools.browser]
enabled = true
search_backend = "searxng"
search_url = "http://127.0.0.1:8888"

[[tools.functions]]
name = "weather"
description = "Weather for a city"
command = ["/usr/bin/weather", "--json"]
parameters = { type = "object", properties = { city = { type = "string" } } }
safe = true

[profiles.fast]
reasoning_effort = "low"
[profiles.fast.sampling]
temperature = 0.2
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_when_no_file() -> None:
    config, problems = load_config()
    assert problems == []
    assert config == AppConfig(source=paths.config_file(), layers=config.layers)
    assert config.layers == {"config": {}, "profile": {}}


def test_valid_file_from_xdg_config_home() -> None:
    write(paths.config_file(), VALID)
    config, problems = load_config()
    assert problems == []
    assert config.model == "gpt-oss-20b" and config.models_dirs == ["~/models", "/opt/models"]
    assert config.theme == "nord" and config.remote.api_key_env == "MY_KEY"
    assert (
        config.sampling.temperature == 0.7 and config.sampling.top_k == 40 and config.sampling.top_p is None
    )
    assert config.placeholders == {"name": "Ada"} and config.keymap == {"app.quit": "ctrl+q"}
    assert (
        config.tools.python.enabled
        and config.tools.python.timeout_s == 5.0
        and config.tools.python.persistent
    )
    assert config.tools.browser.search_backend == "searxng"
    (fn,) = config.tools.functions
    assert (
        fn.name == "weather" and fn.argv() == ["/usr/bin/weather", "--json"] and not fn.needs_confirmation()
    )
    assert config.layers["config"] == {
        "temperature": 0.7,
        "top_k": 40,
        "max_tokens": 2048,
        "reasoning_effort": "high",
        "instructions": "Be brief.",
        "builtin_tools": ["browser", "python"],
        "placeholders": {"name": "Ada"},
    }
    assert list_profiles(config) == ["fast"]


def test_missing_explicit_path_raises_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    f = write(tmp_path / "c.toml", 'theme = "nord"\n[sampling]\ntemperature = = 3\n')
    config, problems = load_config(f)
    assert config.theme == "textual-dark"  # whole file falls back to defaults
    (p,) = problems
    assert p.file == f and p.line == 3 and "invalid TOML" in p.message
    assert str(p).startswith(f"{f}:3: ")


def test_wrong_type_names_line_and_key_and_keeps_the_rest(tmp_path: Path) -> None:
    text = (
        'theme = "nord"\n\n[sampling]\ntop_p = 0.9\ntemperature = "hot"\n\n[tools.python]\ntimeout_s = true\n'
    )
    config, problems = load_config(write(tmp_path / "c.toml", text))
    assert config.theme == "nord" and config.sampling.top_p == 0.9
    assert config.sampling.temperature is None and config.tools.python.timeout_s == 10.0
    assert [(p.line, p.key) for p in problems] == [(5, "sampling.temperature"), (8, "tools.python.timeout_s")]
    assert "expected a number" in problems[0].message


def test_unknown_keys_reported_with_suggestion(tmp_path: Path) -> None:
    text = (
        'them = "nord"\n[sampling]\ntemprature = 0.5\n[tools.browser]\nenabled = true\nsearch_bakend = "x"\n'
    )
    config, problems = load_config(write(tmp_path / "c.toml", text))
    assert config.tools.browser.enabled and config.tools.browser.search_backend == "none"
    got = {(p.line, p.key) for p in problems}
    assert got == {(1, "them"), (3, "sampling.temprature"), (6, "tools.browser.search_bakend")}
    assert any("did you mean 'temperature'" in p.message for p in problems)


def test_out_of_range_and_bad_literal(tmp_path: Path) -> None:
    text = 'reasoning_effort = "extreme"\n[sampling]\ntop_p = 1.5\nmax_tokens = 0\n'
    config, problems = load_config(write(tmp_path / "c.toml", text))
    assert (
        config.reasoning_effort is None
        and config.sampling.top_p is None
        and config.sampling.max_tokens is None
    )
    assert [(p.line, p.key) for p in problems] == [
        (1, "reasoning_effort"),
        (3, "sampling.top_p"),
        (4, "sampling.max_tokens"),
    ]


def test_bad_function_entries_point_at_their_table(tmp_path: Path) -> None:
    text = (
        '[[tools.functions]]\nname = "ok"\ncommand = "echo"\n\n'
        '[[tools.functions]]\nname = "bad name!"\ncommand = "echo"\n\n'
        '[[tools.functions]]\nname = "nocmd"\n\n'
        '[[tools.functions]]\nname = "t"\ncommand = "echo"\ntimeout_s = "slow"\n'
    )
    config, problems = load_config(write(tmp_path / "c.toml", text))
    assert [f.name for f in config.tools.functions] == ["ok", "t"]
    assert [(p.line, p.key) for p in problems] == [
        (15, "tools.functions[3].timeout_s"),
        (6, "tools.functions[1].name"),
        (9, "tools.functions[2]"),
    ]


def test_find_line_handles_dotted_and_inline_keys() -> None:
    text = 'a.b = 1\n[x]\n"quoted key" = 2\ny = { z = 1 }\n[[arr]]\nk = 1\n[[arr]]\nk = 2\n[arr.sub]\nq = 3\n'
    assert find_line(text, ("a", "b")) == 1
    assert find_line(text, ("x", "quoted key")) == 3
    assert find_line(text, ("x", "y", "z")) == 4  # inside an inline table: the line of the table
    assert find_line(text, ("arr", 1, "k")) == 8
    assert find_line(text, ("arr", 1, "sub", "q")) == 10
    assert find_line(text, ("missing",)) is None


def test_profile_table_overrides_base(tmp_path: Path) -> None:
    f = write(tmp_path / "c.toml", VALID)
    config, problems = load_config(f, profile="fast")
    assert problems == [] and config.active_profile == "fast"
    assert config.reasoning_effort == "low" and config.sampling.temperature == 0.2
    assert config.sampling.top_k == 40  # untouched by the profile
    assert config.layers["profile"] == {"temperature": 0.2, "reasoning_effort": "low"}
    assert config.layers["config"]["temperature"] == 0.7


def test_profile_file_and_default_profile(tmp_path: Path) -> None:
    write(paths.config_file(), 'profile = "coder"\n[sampling]\ntemperature = 0.9\n')
    write(
        paths.config_dir() / "profiles" / "coder.toml",
        "[sampling]\ntemperature = 0.1\n[tools.python]\nenabled = true\nbogus = 1\n",
    )
    config, problems = load_config()
    assert config.active_profile == "coder" and config.sampling.temperature == 0.1
    assert config.layers["profile"]["builtin_tools"] == ["python"]
    (p,) = problems
    assert (
        p.file == paths.config_dir() / "profiles" / "coder.toml"
        and p.line == 5
        and p.key == "tools.python.bogus"
    )


def test_unknown_profile_is_a_problem_not_a_crash() -> None:
    write(paths.config_file(), "[profiles.a]\ntheme = 'x'\n")
    config, problems = load_config(profile="b")
    assert config.active_profile is None and config.theme == "textual-dark"
    assert len(problems) == 1 and "'b' not found" in problems[0].message and "known: a" in problems[0].message


def test_a_profile_file_with_broken_toml_is_reported_not_called_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--profile fast` with a typo in profiles/fast.toml said "--profile fast: no such profile (known: fast)"
    and hid the TOML error; an empty profile file did the same. The file's problem is a warning, as in the
    config file, and the run goes on with the profile's defaults."""
    from mlx_harmony_tui import cli

    pfile = write(paths.config_dir() / "profiles" / "fast.toml", 'reasoning_effort = "high"\n[sampling\n')
    config, problems = load_config(profile="fast")
    assert config.active_profile == "fast"
    assert [(p.file, p.line) for p in problems] == [(pfile, 2)] and "invalid TOML" in problems[0].message
    assert cli.main(["models", "list", "--profile", "fast"]) == 0
    err = capsys.readouterr().err
    assert "fast.toml:2: invalid TOML" in err and "no such profile" not in err
    pfile.write_text("")
    config, problems = load_config(profile="fast")
    assert config.active_profile == "fast" and problems == []


def test_bad_key_inside_profile_table_has_its_line(tmp_path: Path) -> None:
    f = write(tmp_path / "c.toml", 'theme = "a"\n[profiles.p]\ntheme = 3\n')
    _, problems = load_config(f, profile="p")
    assert [(p.line, p.key) for p in problems] == [(3, "profiles.p.theme")]


def test_save_config_round_trips(tmp_path: Path) -> None:
    config, _ = load_config(write(tmp_path / "c.toml", VALID))
    config.theme = "gruvbox"
    out = save_config(config, tmp_path / "saved.toml")
    again, problems = load_config(out)
    assert problems == []
    assert again.theme == "gruvbox" and again.tools.functions == config.tools.functions
    assert again.sampling == config.sampling and again.profiles == config.profiles
    assert not list(tmp_path.glob(".saved.toml.*"))  # no temp files left


def test_set_value_keeps_the_rest(tmp_path: Path) -> None:
    f = write(tmp_path / "c.toml", VALID)
    set_value(f, "theme", "dracula")
    set_value(f, "tools.python.timeout_s", 3.5)
    set_value(f, "new.table.key", [1, 2])
    data = tomllib.loads(f.read_text())
    assert data["theme"] == "dracula" and data["tools"]["python"] == {
        "enabled": True,
        "timeout_s": 3.5,
        "persistent": True,
    }
    assert data["new"]["table"]["key"] == [1, 2] and data["profiles"]["fast"]["reasoning_effort"] == "low"


def test_set_value_refuses_to_overwrite_a_broken_file(tmp_path: Path) -> None:
    f = write(tmp_path / "c.toml", "theme = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        set_value(f, "theme", "x")
    assert f.read_text() == "theme = \n"


def test_set_value_default_path_creates_file() -> None:
    set_value(None, "theme", "nord")
    assert load_config()[0].theme == "nord"


# precedence ------------------------------------------------------------------------------------------------

LEVELS = ["model_defaults", "config", "profile", "session", "cli"]


@pytest.mark.parametrize("top", range(len(LEVELS)))
def test_each_level_beats_the_ones_below(top: int) -> None:
    layers: dict[str, dict] = {name: {} for name in LEVELS}
    for i in range(top + 1):
        layers[LEVELS[i]] = {
            "temperature": 0.1 * (i + 1),
            "max_tokens": 100 * (i + 1),
            "instructions": LEVELS[i],
        }
    s = resolve_settings(**layers)
    assert s.sampling.temperature == pytest.approx(0.1 * (top + 1))
    assert s.max_tokens == 100 * (top + 1) and s.instructions == LEVELS[top]


def test_none_means_not_set_and_unknown_keys_ignored() -> None:
    s = resolve_settings(
        cli={"temperature": None, "command": "chat", "top_k": 5},
        session={"temperature": 0.4, "reasoning_effort": "high"},
        profile={},
        config={"temperature": 0.9, "seed": 7, "builtin_tools": ["python"]},
        model_defaults={"top_p": 0.95},
    )
    assert s.sampling.temperature == 0.4 and s.sampling.top_k == 5 and s.sampling.top_p == 0.95
    assert s.seed == 7 and s.reasoning_effort == "high" and s.builtin_tools == ["python"]


def test_resolve_rejects_bad_values_naming_level() -> None:
    with pytest.raises(ConfigError, match="session setting temperature"):
        resolve_settings(cli={}, session={"temperature": "warm"}, profile={}, config={}, model_defaults={})
    with pytest.raises(ConfigError, match="cli setting top_p"):
        resolve_settings(cli={"top_p": 2.0}, session={}, profile={}, config={}, model_defaults={})


def test_model_defaults_and_settings_from_config(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "generation_config.json").write_text(
        json.dumps({"temperature": 0.6, "top_p": 0.8, "eos_token_id": 1})
    )
    assert read_model_defaults(tmp_path / "model") == {"temperature": 0.6, "top_p": 0.8}
    assert read_model_defaults(tmp_path / "missing") == {}
    f = write(tmp_path / "c.toml", VALID)
    config, _ = load_config(f, profile="fast")
    s = settings_from_config(
        config, cli={"max_tokens": 10}, session={"seed": 3}, model_dir=tmp_path / "model"
    )
    assert s.sampling.temperature == 0.2 and s.sampling.top_p == 0.8 and s.sampling.top_k == 40
    assert (
        s.max_tokens == 10 and s.seed == 3 and s.reasoning_effort == "low" and s.instructions == "Be brief."
    )


def test_set_value_keeps_comments_the_layout_a_symlink_and_the_file_mode(tmp_path: Path) -> None:
    """Choosing a theme in the app rewrote a hand-written config without its comments, replaced a dotfiles
    symlink with a file (the dotfiles copy kept the old value) and made it 0600."""
    real = tmp_path / "dotfiles" / "config.toml"
    real.parent.mkdir()
    text = '# my settings\nmodel = "demo"  # the tiny one\n\n[sampling]\n# cooler\ntemperature = 0.3\n'
    real.write_text(text)
    real.chmod(0o640)
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    set_value(link, "theme", "nord")
    set_value(link, "tools.python.timeout_s", 3.5)
    assert link.is_symlink() and stat.S_IMODE(real.stat().st_mode) == 0o640
    out = real.read_text()
    assert out.startswith('# my settings\nmodel = "demo"  # the tiny one\n')
    assert "[sampling]\n# cooler\ntemperature = 0.3\n" in out
    data = tomllib.loads(out)
    assert data["theme"] == "nord" and data["tools"]["python"]["timeout_s"] == 3.5 and data["model"] == "demo"
    set_value(link, "theme", "dracula")
    assert tomllib.loads(real.read_text())["theme"] == "dracula" and real.read_text().count("theme") == 1
    set_value(link, "theme", None)
    assert "theme" not in real.read_text() and "# cooler" in real.read_text()
    assert not list(real.parent.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_an_unknown_search_backend_is_reported_when_the_config_is_read(tmp_path: Path) -> None:
    """docs/config.md: search_backend is "none" or "searxng"; "google" passed silently until the model searched."""
    f = write(tmp_path / "c.toml", '[tools.browser]\nenabled = true\nsearch_backend = "google"\n')
    config, problems = load_config(f)
    assert [(p.line, p.key) for p in problems] == [(3, "tools.browser.search_backend")]
    assert "one of 'none', 'searxng'" in problems[0].message and config.tools.browser.search_backend == "none"


def test_a_string_where_a_list_goes_says_a_list_of_strings(tmp_path: Path) -> None:
    f = write(tmp_path / "c.toml", 'models_dirs = "~/models"\n')
    _, problems = load_config(f)
    assert [str(p).split(": ", 1)[1] for p in problems] == [
        "models_dirs: expected a list of strings; using the default"  # was "a list of a string"
    ]


def test_relative_paths_in_a_config_file_are_relative_to_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`response_format_file = "person.json"` beside config.toml was read from the current folder, so every
    command run elsewhere failed ('JSON schema person.json: cannot read it'); models_dirs the same. A path on
    the command line (--json-schema, --config) stays relative to the current folder."""
    from mlx_harmony_tui import cli
    from mlx_harmony_tui.config import settings_from_config

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    write(paths.config_dir() / "person.json", json.dumps(schema))
    write(paths.config_dir() / "profiles" / "p.toml", 'response_format_file = "../person.json"\n')
    (paths.config_dir() / "models").mkdir()
    write(paths.config_file(), 'response_format_file = "person.json"\nmodels_dirs = ["models", "~/m"]\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config, problems = load_config()
    assert problems == [] and config.response_format_file == str(paths.config_dir() / "person.json")
    assert config.models_dirs == [str(paths.config_dir() / "models"), "~/m"]
    assert settings_from_config(config).response_format.schema == schema
    config, _ = load_config(profile="p")
    assert Path(config.response_format_file).resolve() == (paths.config_dir() / "person.json").resolve()
    assert cli.main(["models", "list"]) == 0 and not capsys.readouterr().err


def test_an_unknown_profile_error_keeps_the_config_files_problems(capsys: pytest.CaptureFixture[str]) -> None:
    """A TOML error in the [profiles.fast] table made `--profile fast` say only "no such profile (known: none)":
    the reason (the file's own error) was dropped with the exit."""
    from mlx_harmony_tui import cli

    write(paths.config_file(), '[profiles.fast]\nreasoning_effort = "low\n')
    assert cli.main(["models", "list", "--profile", "fast"]) == 2
    err = capsys.readouterr().err
    assert "--profile fast: no such profile" in err and "config.toml:2: invalid TOML" in err, err


def test_a_repetition_context_beyond_any_context_is_refused(tmp_path: Path) -> None:
    """repetition_context = 99999999999 passed and then failed every generation with a MemoryError (the
    penalty keeps a window of that many token ids)."""
    f = write(tmp_path / "c.toml", "[sampling]\nrepetition_context = 99999999999\n")
    config, problems = load_config(f)
    assert [(p.line, p.key) for p in problems] == [(2, "sampling.repetition_context")]
    assert config.sampling.repetition_context is None
