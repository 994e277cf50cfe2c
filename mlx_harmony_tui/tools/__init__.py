"""Tools the model can call: python (sandboxed subprocess), browser (search/open/find), config functions."""

from mlx_harmony_tui.tools.browser import BrowserToolConfig
from mlx_harmony_tui.tools.functions import FunctionToolConfig
from mlx_harmony_tui.tools.python import PythonToolConfig
from mlx_harmony_tui.tools.registry import RegistryCache, ToolOutcome, ToolRecord, ToolRegistry

__all__ = [
    "RegistryCache",
    "BrowserToolConfig",
    "FunctionToolConfig",
    "PythonToolConfig",
    "ToolOutcome",
    "ToolRecord",
    "ToolRegistry",
]
