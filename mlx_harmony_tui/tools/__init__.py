"""Tools the model can call: python (sandboxed subprocess), browser (search/open/find), config functions."""

from mlx_harmony_tui.tools.browser import BrowserToolConfig
from mlx_harmony_tui.tools.functions import FunctionToolConfig
from mlx_harmony_tui.tools.python import PythonToolConfig
from mlx_harmony_tui.tools.registry import ToolOutcome, ToolRecord, ToolRegistry

__all__ = [
    "BrowserToolConfig",
    "FunctionToolConfig",
    "PythonToolConfig",
    "ToolOutcome",
    "ToolRecord",
    "ToolRegistry",
]
