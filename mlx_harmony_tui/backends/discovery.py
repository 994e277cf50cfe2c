"""Find GPT-OSS checkpoints on disk (configured folders and the Hugging Face cache) for the model picker.

Only folders whose config.json says ``model_type == "gpt_oss"`` are offered, so the picker never lists a
model the loader would reject for being the wrong architecture.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelEntry:
    name: str  # shown in the picker: "openai/gpt-oss-20b" for HF cache entries, the folder name otherwise
    path: Path
    source: str  # "folder" or "hf-cache"
    size_bytes: int = 0
    quantization: str | None = None


def hf_hub_dir() -> Path:
    """The hub cache, respecting HF_HUB_CACHE and HF_HOME like huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface"
    return base / "hub"


def _read_config(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _entry(folder: Path, name: str, source: str) -> ModelEntry | None:
    cfg = _read_config(folder)
    if not cfg or cfg.get("model_type") != "gpt_oss":
        return None
    size = 0
    for f in folder.glob("*.safetensors"):
        try:
            size += f.stat().st_size  # follows HF cache symlinks to the blobs
        except OSError:
            pass
    quant = cfg.get("quantization_config") or cfg.get("quantization")
    qdesc = None
    if isinstance(quant, dict):
        qdesc = str(quant.get("quant_method") or (f"{quant['bits']}-bit" if "bits" in quant else "quantized"))
    return ModelEntry(name=name, path=folder, source=source, size_bytes=size, quantization=qdesc)


def _scan_folder(root: Path) -> Iterable[ModelEntry]:
    """The folder itself, its children and grandchildren (e.g. models/openai/gpt-oss-20b)."""
    if not root.is_dir():
        return
    candidates = [root]
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith("."):
            candidates.append(child)
            candidates.extend(sorted(g for g in child.iterdir() if g.is_dir() and not g.name.startswith(".")))
    for c in candidates:
        e = _entry(c, c.name if c != root else root.name, "folder")
        if e:
            yield e


def _scan_hf_cache(hub: Path) -> Iterable[ModelEntry]:
    if not hub.is_dir():
        return
    for repo in sorted(hub.glob("models--*")):
        repo_name = repo.name.removeprefix("models--").replace("--", "/")
        snapshots = sorted(
            (s for s in (repo / "snapshots").glob("*") if s.is_dir()),
            key=lambda s: s.stat().st_mtime,
            reverse=True,
        )
        for snap in snapshots:  # newest complete snapshot wins
            e = _entry(snap, repo_name, "hf-cache")
            if e:
                yield e
                break


def find_models(dirs: Iterable[str | Path] = (), include_hf_cache: bool = True) -> list[ModelEntry]:
    """GPT-OSS checkpoints in ``dirs`` (and the HF cache), deduplicated by resolved path."""
    seen: set[Path] = set()
    out: list[ModelEntry] = []
    sources: list[Iterable[ModelEntry]] = [_scan_folder(Path(d).expanduser()) for d in dirs]
    if include_hf_cache:
        sources.append(_scan_hf_cache(hf_hub_dir()))
    for src in sources:
        for e in src:
            key = e.path.resolve()
            if key not in seen:
                seen.add(key)
                out.append(e)
    return out
