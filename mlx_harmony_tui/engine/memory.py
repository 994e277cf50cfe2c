"""Memory controls: refuse models that cannot fit, cap MLX's buffer cache, wire the weights on macOS."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from mlx_harmony_tui.errors import UserError


class ModelTooLargeError(UserError):
    """The model's weights do not fit in the memory this machine can give them."""


def weights_nbytes(model: Any) -> int:
    """Total bytes of the model's parameters (quantized arrays count at their packed size)."""
    from mlx_harmony_tui.model.gpt_oss import parameter_bytes

    return parameter_bytes(model)


@dataclass(frozen=True)
class MemoryBudget:
    """How much memory MLX can have for a model here, where that number comes from, and how to raise it."""

    nbytes: int | None  # None: unknown (the fit check is skipped)
    source: str
    hint: str = ""


def _ram_available() -> int | None:
    """Linux: MemAvailable (what can be had without swapping); elsewhere: physical RAM."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget() -> MemoryBudget:
    """Apple GPU: Metal's recommended working set (the wired limit); CUDA: the device's free memory; CPU: RAM."""
    try:
        on_gpu = mx.default_device() == mx.gpu
        info = mx.device_info() if on_gpu else {}
    except (AttributeError, RuntimeError, ValueError):
        on_gpu, info = False, {}
    if "max_recommended_working_set_size" in info:
        gib = int(info.get("memory_size", 0) or 0) / (1 << 30)
        return MemoryBudget(
            int(info["max_recommended_working_set_size"]),
            "the Metal working-set limit",
            "macOS lets the GPU wire at most this much; raise it (until reboot) with "
            f"`sudo sysctl iogpu.wired_limit_mb=N`, N in MiB below this Mac's {gib:.0f} GiB",
        )
    for key in ("free_memory", "total_memory", "memory_size"):
        if key in info:
            name = info.get("device_name", "the GPU")
            return MemoryBudget(int(info[key]), f"{'free' if key == 'free_memory' else 'total'} memory of {name}")
    return MemoryBudget(_ram_available(), "available RAM")


def available_memory() -> int | None:
    """Memory the model may use (``memory_budget().nbytes``)."""
    return memory_budget().nbytes


def check_fits(nbytes: int, what: str = "the model", headroom: float = 0.9, available: int | None = None) -> None:
    """Raise ``ModelTooLargeError`` if ``nbytes`` of weights exceed ``headroom`` x the available memory.

    Called before loading (from the safetensors sizes) so the user gets a sentence, not a crash or a swap storm.
    """
    avail = available_memory() if available is None else available
    if avail is None or avail <= 0:
        return
    if nbytes > headroom * avail:
        gib = 1 << 30
        raise ModelTooLargeError(
            f"{what} needs {nbytes / gib:.1f} GiB for its weights, but only {avail / gib:.1f} GiB "
            f"is available ({headroom:.0%} usable); use a smaller or more quantized model"
        )


def files_nbytes(paths: Iterable[str | os.PathLike[str]]) -> int:
    """Sum of file sizes (safetensors weights are stored raw, so this estimates their memory)."""
    return sum(os.path.getsize(p) for p in paths)


def set_cache_limit(nbytes: int | None) -> int | None:
    """Cap MLX's free-buffer cache (None = leave as is); returns the previous limit."""
    if nbytes is None:
        return None
    return int(mx.set_cache_limit(int(nbytes)))


def set_wired_limit_for(model_nbytes: int, enable: bool = True) -> int | None:
    """On macOS, wire enough memory for the weights (+10%), bounded by Metal's recommended working set.

    Wired memory is not paged out, which keeps decode speed steady for large models; elsewhere a no-op.
    Returns the limit set, or None when nothing was done.
    """
    if not enable or sys.platform != "darwin":
        return None
    try:
        if not mx.metal.is_available():
            return None
        max_ws = int(mx.metal.device_info()["max_recommended_working_set_size"])
    except (AttributeError, KeyError, RuntimeError):
        return None
    limit = min(int(model_nbytes * 1.1), max_ws)
    mx.set_wired_limit(limit)
    return limit
