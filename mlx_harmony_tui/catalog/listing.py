"""Every GPT-OSS model on this machine (``models_dirs`` folders and the hub cache), for ``models list``,
``/models`` and the TUI picker, so all three show the same rows.

Only folders whose config.json says ``model_type == "gpt_oss"`` are listed; a broken one (a missing or cut
shard) is listed with its problem, so the user sees why it will not load and how to fix it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mlx_harmony_tui.catalog import hub
from mlx_harmony_tui.catalog.fit import fits, memory_need
from mlx_harmony_tui.catalog.summary import ModelSummary, summarize
from mlx_harmony_tui.engine import memory
from mlx_harmony_tui.engine.memory import MemoryBudget
from mlx_harmony_tui.errors import UserError


@dataclass(frozen=True)
class ModelEntry:
    name: str  # what to type to use it (the resolver accepts it)
    path: Path
    source: str  # "models_dirs" or "hf-cache"
    size_bytes: int = 0  # on disk
    summary: ModelSummary | None = None
    problem: str | None = None  # why it would not load
    fits: bool | None = None  # in this machine's memory at the configured context (None: unknown)
    repo: str | None = None

    @property
    def quantization(self) -> str | None:
        return self.summary.quantization if self.summary else None

    @property
    def layout(self) -> str | None:
        return self.summary.layout if self.summary else None


def _is_gpt_oss(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type") == "gpt_oss"
    except (OSError, ValueError, AttributeError):
        return False


def _folder_size(folder: Path) -> int:
    total = 0
    for f in folder.iterdir():
        try:
            if f.is_file():
                total += f.stat().st_size  # follows hub-cache symlinks to their blobs
        except OSError:
            pass
    return total


def _candidates(root: Path) -> Iterator[Path]:
    """The folder itself, its children and grandchildren (e.g. models/openai/gpt-oss-20b)."""
    if not root.is_dir():
        return
    yield root
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            yield child
            yield from sorted(g for g in child.iterdir() if g.is_dir() and not g.name.startswith("."))


def _entry(
    folder: Path, name: str, source: str, size: int, context: int | None, budget: MemoryBudget,
    repo: str | None = None, kv_bits: int | None = None, kv_mode: str | None = None,
) -> ModelEntry:  # fmt: skip
    try:
        summary = summarize(folder)
    except UserError as e:
        fix = hub.pull_command(*hub.parse_repo(name)) if repo and hub.parse_repo(name) else "copy it again"
        return ModelEntry(name, folder, source, size, problem=f"{e} (fix: {fix})", repo=repo)
    return ModelEntry(
        name,
        folder,
        source,
        size,
        summary,
        fits=fits(memory_need(summary, context, kv_bits, kv_mode=kv_mode), budget),
        repo=repo,
    )


def find_models(
    dirs: Iterable[str | Path] = (),
    include_hf_cache: bool = True,
    context: int | None = None,
    kv_bits: int | None = None,
    kv_mode: str | None = None,
) -> list[ModelEntry]:
    """GPT-OSS models in ``dirs`` (and the hub cache), deduplicated by resolved path; ``context`` and
    ``kv_bits``/``kv_mode`` (the config's) size the KV cache for the fit column."""
    budget = memory.memory_budget()
    seen: set[Path] = set()
    out: list[ModelEntry] = []
    for d in dirs:
        for folder in _candidates(Path(d).expanduser()):
            key = folder.resolve()
            if key in seen or not _is_gpt_oss(folder):
                continue
            seen.add(key)
            out.append(
                _entry(
                    folder, folder.name, "models_dirs", _folder_size(folder), context, budget,
                    kv_bits=kv_bits, kv_mode=kv_mode,
                )  # fmt: skip
            )
    if include_hf_cache:
        for rev in hub.cached_revisions():
            key = rev.path.resolve()
            if key in seen or not _is_gpt_oss(rev.path):
                continue
            seen.add(key)
            out.append(
                _entry(rev.path, rev.name, "hf-cache", rev.size_bytes, context, budget, rev.repo_id, kv_bits, kv_mode)
            )
    return out


def human_bytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def human_count(n: int) -> str:
    return f"{n / 1e9:.1f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def fits_words(entry: ModelEntry) -> str:
    if entry.problem:
        return "broken"
    return {True: "yes", False: "no", None: "?"}[entry.fits]


def columns(entry: ModelEntry) -> list[str]:
    """One row as every face shows it: name, source, size, layout, quantization, fits."""
    return [
        entry.name,
        entry.source,
        human_bytes(entry.size_bytes),
        entry.layout or "-",
        entry.quantization or "-",
        fits_words(entry),
    ]
