"""The Hugging Face side of model names: the hub cache (where it is, what is in it) and downloads.

Everything goes through huggingface_hub, so the cache is the one other tools share (transformers, mlx-lm,
``hf download``) and HF_TOKEN, HF_ENDPOINT, HF_HOME / HF_HUB_CACHE and HF_HUB_OFFLINE mean what they mean
there. huggingface_hub reads those variables once, at import; we read them on every call and pass them on,
so a face or a test that sets them later is obeyed. Looking a model up never touches the network; only
``pull`` does, with short timeouts so an unreachable Hub fails in seconds instead of hanging.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_harmony_tui.catalog.verify import check_architecture
from mlx_harmony_tui.errors import UserError

# What the loader reads: config, weights + their index, tokenizer files (the vocabulary can come from
# tokenizer.json offline) and generation defaults. Files in subfolders are skipped: openai/gpt-oss-* ship
# original/ and metal/ copies of the weights that would double the download.
WANTED = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
]
IGNORED = ["*/*"]
API_TIMEOUT_S = 5.0  # connect and read, for the Hub's API and HEAD calls (downloads: HF_HUB_DOWNLOAD_TIMEOUT)

PullProgress = Callable[[int, int], None]  # (bytes done, bytes in all) of the files being fetched

_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FULL_HASH = re.compile(r"^[0-9a-f]{40}$")


class HubError(UserError):
    """A download or cache operation that failed; the message says what to do."""


class NotCachedError(UserError):
    """The repo (or that revision of it) is not in the cache."""


def _repo_ok(repo: str) -> bool:
    return bool(_REPO.match(repo)) and not repo.startswith((".", "~")) and ".." not in repo


def parse_repo(text: str) -> tuple[str, str | None] | None:
    """``owner/name[@revision]`` -> (repo id, revision or None); anything else -> None, including an empty
    revision after '@' (a revision left out by mistake must not quietly mean main)."""
    repo, at, rev = text.strip().partition("@")
    if not _repo_ok(repo) or (at and not rev):
        return None
    return repo, (rev or None)


def empty_revision(text: str) -> str | None:
    """The error for OWNER/NAME@ (a repo id with nothing after the '@'), else None."""
    repo, at, rev = text.strip().partition("@")
    if _repo_ok(repo) and at and not rev:
        return (f"{text.strip()!r} has an empty revision after '@': name a branch, tag or commit "
                f"({repo}@main) or leave the '@' out")
    return None


def not_a_repo(text: str) -> str:
    """Why ``text`` is not what parse_repo takes, for the error message."""
    return empty_revision(text) or f"{text!r} is not a Hugging Face repo id (OWNER/NAME or OWNER/NAME@REVISION)"


def cache_dir() -> Path:
    """The hub cache as huggingface_hub would find it from the environment right now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(os.path.expandvars(home)).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to a true value."""
    values = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((v or "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in values)


def repo_folder(repo: str) -> Path:
    return cache_dir() / ("models--" + repo.replace("/", "--"))


def pull_command(repo: str, revision: str | None = None) -> str:
    return f"mlx-harmony-tui models pull {repo}{'@' + revision if revision else ''}"


@dataclass(frozen=True)
class CachedRevision:
    """One snapshot of a model repo in the hub cache."""

    repo_id: str
    commit: str
    refs: tuple[str, ...]  # branch/tag names pointing at it ("main", "v1", ...)
    path: Path
    size_bytes: int  # of this snapshot's files (blobs shared with other revisions counted here too)
    last_modified: float
    default: bool = False  # what the bare repo id resolves to: main, else (no main cached) the newest

    @property
    def name(self) -> str:
        """How a user names it: the repo for the default revision, else repo@ref or repo@short-hash."""
        if self.default:
            return self.repo_id
        return f"{self.repo_id}@{self.refs[0] if self.refs else self.commit[:12]}"


def cached_revisions() -> list[CachedRevision]:
    """Every model snapshot in the hub cache (huggingface_hub's scan), newest first within a repo."""
    from huggingface_hub import scan_cache_dir

    root = cache_dir()
    if not root.is_dir():
        return []
    try:
        info = scan_cache_dir(root)
    except (OSError, ValueError):
        return []
    out: list[CachedRevision] = []
    scanned = {Path(repo.repo_path).name for repo in info.repos}
    repos = [
        (
            repo.repo_id,
            [
                (r.commit_hash, r.refs, Path(r.snapshot_path), int(r.size_on_disk), float(r.last_modified))
                for r in repo.revisions
            ],
        )
        for repo in info.repos
        if repo.repo_type == "model"
    ]
    # A repo with a blob missing (a dangling snapshot symlink) is dropped by the scan: list it from its
    # folders, so it shows as broken and `models rm` can delete it.
    repos += [
        (f.name.removeprefix("models--").replace("--", "/"), _damaged_revisions(f))
        for f in root.glob("models--*")
        if f.name not in scanned and (f / "snapshots").is_dir()
    ]
    for repo_id, found in sorted(repos, key=lambda r: r[0]):
        revs = sorted(found, key=lambda r: r[4], reverse=True)
        has_main = any("main" in r[1] for r in revs)
        for i, (commit, refs, path, size, mtime) in enumerate(revs):
            out.append(
                CachedRevision(
                    repo_id=repo_id,
                    commit=commit,
                    refs=tuple(sorted(refs, key=lambda r: (r != "main", r))),
                    path=path,
                    size_bytes=size,
                    last_modified=mtime,
                    default="main" in refs if has_main else i == 0,
                )
            )
    return out


def _damaged_revisions(folder: Path) -> list[tuple[str, set[str], Path, int, float]]:
    """(commit, refs, snapshot, size of the files still there, mtime) of each snapshot of a repo folder."""
    refs: dict[str, set[str]] = {}
    for ref in (folder / "refs").rglob("*"):
        if ref.is_file():
            refs.setdefault(ref.read_text(encoding="utf-8", errors="replace").strip(), set()).add(
                ref.relative_to(folder / "refs").as_posix()
            )
    out = []
    for snap in sorted(p for p in (folder / "snapshots").iterdir() if p.is_dir()):
        size = sum(f.stat().st_size for f in snap.rglob("*") if f.is_file())  # a dangling link is no file
        out.append((snap.name, refs.get(snap.name, set()), snap, size, snap.stat().st_mtime))
    return out


def find_cached(repo: str, revision: str | None = None) -> Path:
    """The snapshot folder of ``repo`` at ``revision`` (branch, tag, full or short commit; default: main).

    No network: huggingface_hub's own lookup (refs, then the snapshot, checked complete against the file
    list it saved when downloading). NotCachedError if absent or incomplete, with the command that fixes it.
    """
    folder = repo_folder(repo)
    if not folder.is_dir():
        raise NotCachedError(f"{repo} is not downloaded; run: {pull_command(repo, revision)}")
    rev = revision or "main"
    snapshots = folder / "snapshots"
    if not _FULL_HASH.match(rev) and not (folder / "refs" / rev).is_file():
        # a short commit hash, or (no revision given) a repo pulled only by commit: newest snapshot wins
        found = sorted(
            (s for s in snapshots.glob("*") if s.is_dir() and (revision is None or s.name.startswith(rev))),
            key=lambda s: s.stat().st_mtime,
            reverse=True,
        )
        if not found:
            raise NotCachedError(f"{repo}@{rev} is not downloaded; run: {pull_command(repo, revision)}")
        rev = found[0].name
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        path = snapshot_download(
            repo, revision=rev, cache_dir=cache_dir(), local_files_only=True,
            allow_patterns=WANTED, ignore_patterns=IGNORED,
        )  # fmt: skip
    except IncompleteSnapshotError:
        raise NotCachedError(
            f"{repo}{'@' + revision if revision else ''} is only partly downloaded; run: {pull_command(repo, revision)}"
        ) from None
    except LocalEntryNotFoundError:
        raise NotCachedError(
            f"{repo}{'@' + revision if revision else ''} is not downloaded; run: {pull_command(repo, revision)}"
        ) from None
    return Path(path)


def _bounded_client() -> Any:
    """huggingface_hub's HTTP client, but a request that asks for no timeout gets API_TIMEOUT_S.

    huggingface_hub passes ``timeout=None`` (wait forever) for its API calls (repo info, file list), so a
    Hub that accepts connections and never answers would hang a pull; downloads pass their own timeout.
    """
    import httpx2
    from huggingface_hub.utils._http import default_client_factory

    class BoundedClient(httpx2.Client):
        def build_request(self, *args: Any, **kwargs: Any) -> httpx2.Request:
            if kwargs.get("timeout", httpx2.USE_CLIENT_DEFAULT) is None:
                kwargs["timeout"] = httpx2.Timeout(API_TIMEOUT_S)
            return super().build_request(*args, **kwargs)

    template = default_client_factory()  # for its event hooks (offline mode, request ids)
    client = BoundedClient(
        event_hooks=template.event_hooks, follow_redirects=True, timeout=httpx2.Timeout(API_TIMEOUT_S)
    )
    template.close()
    return client


_client_set = False


def _use_bounded_client() -> None:
    global _client_set
    if not _client_set:
        from huggingface_hub import set_client_factory

        set_client_factory(_bounded_client)
        _client_set = True


def _reporter(progress: PullProgress) -> type:
    """A tqdm class for snapshot_download that reports its byte totals to ``progress`` and draws nothing."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Reporter(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._bytes = kwargs.get("unit") == "B" and "Reconstruct" in str(kwargs.get("desc", ""))
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            self._done += int(n or 0)
            if self._bytes:
                progress(self._done, int(self.total or 0))
            return None

    return Reporter


def _hub_error(e: Exception, repo: str, revision: str | None) -> HubError:
    """huggingface_hub's exceptions -> one sentence naming the repo and what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = endpoint()
    if isinstance(e, GatedRepoError):
        return HubError(
            f"{repo} is gated: accept its terms at {where}/{repo} and set HF_TOKEN to a token with access"
        )
    if isinstance(e, RepositoryNotFoundError):
        return HubError(f"no model repo {repo} at {where} (if it is private or gated, set HF_TOKEN)")
    if isinstance(e, RevisionNotFoundError):
        return HubError(f"{repo} has no revision {revision!r} at {where}")
    if isinstance(e, LocalEntryNotFoundError):
        return HubError(
            f"cannot reach {where} to download {repo}: check the network (or HF_ENDPOINT) and retry"
        )
    return HubError(f"downloading {repo} failed: {type(e).__name__}: {e}")


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pull(
    repo: str,
    revision: str | None = None,
    progress: PullProgress | None = None,
    verify: Callable[[Path], list[str]] | None = None,
) -> Path:
    """Download the files the loader needs of ``repo`` into the hub cache; returns the snapshot folder.

    config.json comes first, so a repo that is not GPT-OSS is refused before gigabytes move (and left out
    of the cache if this pull created its folder). Files already complete are not fetched again; a
    connection that drops mid-file is resumed by huggingface_hub with a Range request. ``verify`` returns
    the names of files that are bad after the download; those are fetched once more before giving up.
    ``progress`` None: huggingface_hub's own progress bars (on a terminal).
    """
    if offline():
        raise HubError(f"cannot download {repo}: HF_HUB_OFFLINE is set (unset it to download)")
    import httpx2
    from huggingface_hub import hf_hub_download, snapshot_download

    _use_bounded_client()
    created = not repo_folder(repo).exists()
    common: dict[str, Any] = {"cache_dir": cache_dir(), "endpoint": endpoint(), "etag_timeout": API_TIMEOUT_S}
    silent = _reporter(lambda done, total: None)
    try:
        first = Path(
            snapshot_download(
                repo, revision=revision, allow_patterns=["config.json"], tqdm_class=silent, **common
            )
        )
        try:
            config = _read_config(first)
            if not config:
                raise HubError(f"{repo} has no readable config.json: it is not a model this app can load")
            check_architecture(config, repo)
        except UserError:
            if created:  # leave no trace of a repo we will not use
                shutil.rmtree(repo_folder(repo), ignore_errors=True)
            raise
        commit = first.name  # the snapshot folder is named by the commit: the rest comes from the same one
        tqdm_class = _reporter(progress) if progress else None
        start = time.time()
        path = Path(snapshot_download(
            repo, revision=commit, allow_patterns=WANTED, ignore_patterns=IGNORED, tqdm_class=tqdm_class, **common
        ))  # fmt: skip
        bad = verify(path) if verify else []
        for name in bad:  # e.g. a blob truncated on disk after an earlier download: fetch it again
            hf_hub_download(repo, name, revision=commit, force_download=True, **common)
        if bad and verify:
            still = verify(path)
            if still:
                raise HubError(
                    f"{repo}: {', '.join(still)} still fails verification after downloading it again"
                )
    except (OSError, ValueError, httpx2.HTTPError) as e:  # huggingface_hub's errors are OSError/ValueError
        raise _hub_error(e, repo, revision) from None
    _drop_stale_partials(repo, before=start)
    return path


def _drop_stale_partials(repo: str, before: float) -> None:
    """Remove partial files an interrupted earlier pull left behind (huggingface_hub never reuses them)."""
    for f in (repo_folder(repo) / "blobs").glob("*.incomplete"):
        try:
            if f.stat().st_mtime < before:
                f.unlink()
        except OSError:
            pass


def remove(revision: CachedRevision) -> int:
    """Delete one cached snapshot (and blobs no other snapshot uses); returns the bytes freed."""
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(cache_dir())
    folder = repo_folder(revision.repo_id)
    if any(Path(r.repo_path) == folder for r in info.repos):
        strategy = info.delete_revisions(revision.commit)
        freed = int(strategy.expected_freed_size)
        strategy.execute()
    else:  # damaged, so not in the scan (_damaged_revisions): delete the snapshot and the blobs only it used
        freed = _remove_damaged(folder, revision)
    if folder.is_dir() and not any((folder / "snapshots").glob("*")):
        shutil.rmtree(folder, ignore_errors=True)  # nothing left but refs/locks: forget the repo entirely
    return freed


def _remove_damaged(folder: Path, revision: CachedRevision) -> int:
    def blobs(snap: Path) -> set[Path]:
        return {Path(os.path.realpath(f)) for f in snap.rglob("*") if f.is_symlink()}

    others = set().union(*(blobs(s) for s in (folder / "snapshots").iterdir() if s != revision.path))
    freed = 0
    for blob in blobs(revision.path) - others:
        if blob.is_file() and blob.parent == folder / "blobs":
            freed += blob.stat().st_size
            blob.unlink()
    shutil.rmtree(revision.path)
    for name in revision.refs:  # the refs pointing at it, read when it was listed
        (folder / "refs" / name).unlink(missing_ok=True)
    return freed
