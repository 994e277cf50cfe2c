"""The one resolver for what a user may type wherever a model is named.

``--model``, the config's ``model``, the TUI picker, ``/models`` and the server all come here. In order:

1. ``demo`` / ``tiny``: the built-in models;
2. an existing path (a folder with config.json and weights);
3. a name under one of the config's ``models_dirs``: ``DIR/NAME`` (NAME may be nested, ``openai/gpt-oss-20b``),
   or a bare folder name one level deeper (``gpt-oss-20b`` finds ``DIR/openai/gpt-oss-20b``);
4. a Hugging Face repo id ``owner/name[@revision]`` in the hub cache (revision: branch, tag or commit,
   default main);
5. a bare name that is the last part of exactly one cached repo (``gpt-oss-20b`` -> ``openai/gpt-oss-20b``).

Nothing here touches the network: a repo that is not downloaded is an error that names the ``models pull``
command, and every error lists what was tried.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlx_harmony_tui import paths
from mlx_harmony_tui.catalog import hub
from mlx_harmony_tui.errors import UserError

BUILTIN = ("demo", "tiny")


class ModelNotFoundError(UserError):
    """No model by that name; the message lists every place that was tried."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    name: str  # how faces show it: "demo", "openai/gpt-oss-20b", "gpt-oss-20b@v1", a folder's name
    source: str  # "built-in", "path", "models_dirs" or "hf-cache"
    repo: str | None = None
    revision: str | None = None

    @property
    def fix(self) -> str:
        """What to do about a broken copy of this model."""
        if self.repo:
            return f"run `{hub.pull_command(self.repo, self.revision)}` to fetch the bad file(s) again"
        return "download or copy the model's files again"


def tiny_path() -> Path:
    """Where the built-in ``tiny`` model is generated the first time a command runs it."""
    return paths.cache_dir() / "models" / "tiny"


def _builtin(name: str) -> Path:
    """``demo``: the model shipped in the package (a tiny random one until it exists); ``tiny``: generated once."""
    if name == "demo":
        try:
            from mlx_harmony_tui.demo import demo_model_path

            path = demo_model_path()
            if (path / "config.json").is_file():
                return path
        except ImportError:
            pass
    from mlx_harmony_tui.model.tiny import write_tiny_checkpoint

    target = tiny_path()
    if not (target / "config.json").is_file():
        tmp = target.with_name(f"tiny.tmp{os.getpid()}-{threading.get_ident()}")
        write_tiny_checkpoint(tmp, layout="float", seed=0)
        try:
            tmp.rename(target)  # atomic; loses harmlessly to a concurrent writer
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _in_models_dirs(text: str, dirs: list[Path], tried: list[str]) -> ResolvedModel | None:
    if not dirs:
        tried.append("models_dirs: none configured")
        return None
    if ".." in Path(text).parts:
        tried.append("models_dirs: not a name")
        return None
    for d in dirs:
        direct = d / text
        if direct.is_dir():
            return ResolvedModel(direct, text, "models_dirs")
    if "/" not in text:
        for d in dirs:
            nested = sorted(p for p in d.glob(f"*/{text}") if p.is_dir()) if d.is_dir() else []
            if nested:
                return ResolvedModel(nested[0], text, "models_dirs")
    tried.append("models_dirs: " + ", ".join(str(d / text) for d in dirs) + " (not there)")
    return None


def _unique_cached(text: str, tried: list[str]) -> ResolvedModel | None:
    """A bare name matching the last part of exactly one cached repo."""
    folders = sorted(hub.cache_dir().glob(f"models--*--{text}"))
    repos = [f.name.removeprefix("models--").replace("--", "/") for f in folders]
    repos = [r for r in repos if r.rsplit("/", 1)[-1] == text]
    if len(repos) > 1:
        raise ModelNotFoundError(
            f"{text!r} matches several cached models: {', '.join(repos)}; name one of them"
        )
    if repos:
        return ResolvedModel(hub.find_cached(repos[0]), repos[0], "hf-cache", repo=repos[0])
    return None


def resolve(text: str | Path | None, models_dirs: Iterable[str | Path] = ()) -> ResolvedModel:
    """What ``text`` names, per the order in this module's docstring; ModelNotFoundError if nothing."""
    text = str(text or "demo").strip()
    if text in BUILTIN:
        return ResolvedModel(_builtin(text), text, "built-in")
    tried: list[str] = []
    path = Path(text).expanduser()
    if path.exists():
        return ResolvedModel(path, path.name, "path")
    if text.startswith(("/", "~", "./", "../")) or path.is_absolute():
        raise ModelNotFoundError(
            f"model not found: {path} (no such folder; or give a name, a repo id or 'demo')"
        )
    tried.append(f"path {path.absolute()} (does not exist)")
    dirs = [Path(d).expanduser() for d in models_dirs]
    found = _in_models_dirs(text, dirs, tried)
    if found:
        return found
    repo = hub.parse_repo(text)
    if repo:
        name, revision = repo
        try:
            return ResolvedModel(
                hub.find_cached(name, revision), text, "hf-cache", repo=name, revision=revision
            )
        except hub.NotCachedError as e:
            raise ModelNotFoundError(f"{e} (also tried: {'; '.join(tried)})") from None
    if "/" not in text and "@" not in text:
        try:
            found = _unique_cached(text, tried)
        except hub.NotCachedError as e:
            raise ModelNotFoundError(str(e)) from None
        if found:
            return found
    empty = hub.empty_revision(text)
    if empty:
        raise ModelNotFoundError(empty)
    tried.append(f"Hugging Face cache {hub.cache_dir()} (no such repo)")
    raise ModelNotFoundError(
        f"model {text!r} not found; tried: {'; '.join(tried)}. A Hugging Face repo is named OWNER/NAME and "
        "downloaded with `mlx-harmony-tui models pull OWNER/NAME`; 'demo' is the built-in model"
    )
