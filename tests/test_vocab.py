import os
from pathlib import Path

import pytest

from mlx_harmony_tui.harmony import vocab


def test_quicktok_derivation_matches_hash():
    data = vocab.derive_from_quicktok()
    assert vocab._sha256(data) == vocab.SHA256


def test_tokenizer_json_roundtrip(tmp_path: Path):
    """A byte-level BPE tokenizer.json of o200k yields the exact tiktoken file."""
    import base64
    import json

    enc = vocab._byte_decoder()
    enc_inv = {b: c for c, b in enc.items()}
    lines = vocab.derive_from_quicktok().decode().splitlines()
    v = {}
    for line in lines:
        tok, rank = line.split()
        v["".join(enc_inv[b] for b in base64.b64decode(tok))] = int(rank)
    v["<|start|>"] = 200006
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": v}}))
    assert vocab._sha256(vocab.derive_from_tokenizer_json(tmp_path / "tokenizer.json")) == vocab.SHA256


def test_wrong_tokenizer_json_is_a_clear_error(tmp_path: Path):
    (tmp_path / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0, "b": 1}}}')
    with pytest.raises(vocab.VocabularyError, match="not o200k_base"):
        vocab.derive_from_tokenizer_json(tmp_path / "tokenizer.json")


def test_ensure_vocabulary_caches_derived_file(monkeypatch, isolated_dirs):
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE")
    folder = vocab.ensure_vocabulary()
    assert (folder / vocab.FILENAME).is_file()
    assert str(isolated_dirs) in str(folder)


def test_missing_everywhere_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(tmp_path / "nowhere"))
    monkeypatch.setattr(vocab, "derive_from_quicktok", lambda: (_ for _ in ()).throw(vocab.VocabularyError("no quicktok")))
    with pytest.raises(vocab.VocabularyError, match="pip install quicktok-v1"):
        vocab.ensure_vocabulary()


def test_a_cache_folder_that_cannot_be_written_is_a_clear_error(monkeypatch, tmp_path):
    """XDG_CACHE_HOME below a file made every model load a NotADirectoryError traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    with pytest.raises(vocab.VocabularyError, match=f"cannot write the o200k vocabulary to {blocker}/mlx-harmony-tui/vocab/o200k_base.tiktoken"):
        vocab.ensure_vocabulary()
    assert "TIKTOKEN_ENCODINGS_BASE" not in os.environ
