"""The TOML config file, profiles, and the one place hyperparameter precedence is decided.

Bad content never stops the app: every invalid value, wrong type or unknown key (typo) becomes a
``ConfigProblem`` naming the file, line and key, and that part falls back to its default. Only an explicitly
given ``--config`` path that does not exist raises (``ConfigError``), because then the user asked for a file.

- schema.py: the dataclasses (what keys exist, their defaults)
- validate.py: type and range checks -> ConfigProblem
- lines.py: which line of the TOML text a key is on
- load.py: the file and profiles -> AppConfig
- save.py: writing the whole file or one key
- resolve.py: precedence (command line > session > profile > config file > model defaults)
"""

from mlx_harmony_tui.config.lines import find_line
from mlx_harmony_tui.config.load import list_profile_files, list_profiles, load_config
from mlx_harmony_tui.config.resolve import (
    LEVELS,
    read_model_defaults,
    resolve_settings,
    settings_from_config,
)
from mlx_harmony_tui.config.save import save_config, set_value
from mlx_harmony_tui.config.schema import (
    AppConfig,
    ConfigError,
    ConfigProblem,
    RemoteConfig,
    SamplingConfig,
    ToolsConfig,
)

__all__ = [
    "LEVELS",
    "AppConfig",
    "ConfigError",
    "ConfigProblem",
    "RemoteConfig",
    "SamplingConfig",
    "ToolsConfig",
    "find_line",
    "list_profile_files",
    "list_profiles",
    "load_config",
    "read_model_defaults",
    "resolve_settings",
    "save_config",
    "set_value",
    "settings_from_config",
]
