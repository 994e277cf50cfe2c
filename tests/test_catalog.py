"""Models by name without a network: the resolver's order and errors, the listing (models_dirs and the hub
cache, scanned by huggingface_hub), verification of shards and headers, and the memory fit, all on real tiny
checkpoints placed where a user (or huggingface_hub) would put them."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_harmony_tui.catalog import hub
from mlx_harmony_tui.catalog.fit import check_fit, memory_need
from mlx_harmony_tui.catalog.listing import find_models
from mlx_harmony_tui.catalog.resolve import ModelNotFoundError, resolve
from mlx_harmony_tui.catalog.summary import summarize
from mlx_harmony_tui.catalog.verify import ModelVerifyError, verify
from mlx_harmony_tui.demo import demo_model_path
from mlx_harmony_tui.engine import memory
from mlx_harmony_tui.model import write_tiny_checkpoint


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny mlx-community-layout checkpoint in two shards with an index (29 MB)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("sharded") / "m", layout="mlx", shards=2)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def fake_snapshot(src: Path, repo: str, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """A hub-cache snapshot laid out like huggingface_hub writes it: blobs, symlinks, refs."""
    folder = hub.repo_folder(repo)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    (folder / "blobs").mkdir(exist_ok=True)
    for f in src.iterdir():
        blob = folder / "blobs" / f"{commit[:8]}-{f.name}"
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    for ref in refs:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
    return snap


def test_resolution_order_and_names(tmp_path: Path, sharded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    copy_model(sharded, models / "gpt-oss-mine")
    copy_model(sharded, models / "acme" / "gpt-oss-nested")
    snap = fake_snapshot(sharded, "acme/tiny-oss", "a" * 40)
    # 1. built-ins
    assert resolve("demo").source == "built-in" and resolve(None).name == "demo"
    # 2. an existing path wins over everything
    monkeypatch.chdir(tmp_path)
    assert resolve("models/gpt-oss-mine").source == "path"
    assert resolve(str(models / "gpt-oss-mine")).path == models / "gpt-oss-mine"
    # 3. a name under models_dirs, nested or by its folder name one level down
    assert resolve("gpt-oss-mine", [models]).path == models / "gpt-oss-mine"
    assert resolve("acme/gpt-oss-nested", [models]).source == "models_dirs"
    assert resolve("gpt-oss-nested", [models]).path == models / "acme" / "gpt-oss-nested"
    # 4. a repo id in the hub cache, with or without a revision
    r = resolve("acme/tiny-oss")
    assert (r.path, r.source, r.repo, r.name) == (snap, "hf-cache", "acme/tiny-oss", "acme/tiny-oss")
    assert resolve("acme/tiny-oss@main").path == snap and resolve("acme/tiny-oss@aaaaaaa").path == snap
    # 5. a bare name that is the last part of exactly one cached repo
    assert resolve("tiny-oss").path == snap


def test_what_was_tried_is_listed(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as e:
        resolve("no-such-model", [tmp_path / "models"])
    msg = str(e.value)
    assert (
        "path " in msg and str(tmp_path / "models" / "no-such-model") in msg and "Hugging Face cache" in msg
    )
    assert "models pull OWNER/NAME" in msg
    with pytest.raises(
        ModelNotFoundError,
        match=r"^openai/gpt-oss-20b is not downloaded; run: mlx-harmony-tui "
        r"models pull openai/gpt-oss-20b \(also tried: path .*models_dirs: none configured\)$",
    ):
        resolve("openai/gpt-oss-20b")
    with pytest.raises(ModelNotFoundError, match="models pull openai/gpt-oss-20b@v2"):
        resolve("openai/gpt-oss-20b@v2")


def test_a_bare_name_of_two_cached_repos_is_ambiguous(sharded: Path) -> None:
    fake_snapshot(sharded, "one/tiny-oss", "b" * 40)
    fake_snapshot(sharded, "two/tiny-oss", "c" * 40)
    with pytest.raises(ModelNotFoundError, match="several cached models: one/tiny-oss, two/tiny-oss"):
        resolve("tiny-oss")


def test_listing_models_dirs_and_cache_with_several_revisions(tmp_path: Path, sharded: Path) -> None:
    models = tmp_path / "models"
    copy_model(sharded, models / "gpt-oss-mine")
    copy_model(sharded, models / "acme" / "gpt-oss-nested")
    (models / "llama").mkdir()
    (models / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (models / "junk").mkdir()
    (models / "junk" / "config.json").write_text("{not json")
    fake_snapshot(sharded, "acme/tiny-oss", "1" * 40, refs=("v1",))
    fake_snapshot(sharded, "acme/tiny-oss", "2" * 40, refs=("main",))
    entries = {e.name: e for e in find_models([models])}
    assert set(entries) == {"gpt-oss-mine", "gpt-oss-nested", "acme/tiny-oss", "acme/tiny-oss@v1"}
    main = entries["acme/tiny-oss"]
    assert main.source == "hf-cache" and main.path.name == "2" * 40 and main.layout == "mlx"
    assert main.size_bytes == sum(f.stat().st_size for f in sharded.iterdir()) and main.fits is True
    assert entries["acme/tiny-oss@v1"].path.name == "1" * 40
    assert resolve("acme/tiny-oss@v1").path == entries["acme/tiny-oss@v1"].path  # listed names resolve
    assert [e.name for e in find_models([models], include_hf_cache=False)] == [
        "gpt-oss-nested",
        "gpt-oss-mine",
    ]


def test_a_broken_model_is_listed_with_its_problem(tmp_path: Path, sharded: Path) -> None:
    broken = copy_model(sharded, tmp_path / "models" / "cut")
    (broken / "model-00002-of-00002.safetensors").unlink()
    [entry] = find_models([tmp_path / "models"], include_hf_cache=False)
    assert (
        entry.problem and "model-00002-of-00002.safetensors: missing" in entry.problem and entry.fits is None
    )


def test_verification_names_the_bad_file_and_the_fix(tmp_path: Path, sharded: Path) -> None:
    snap = fake_snapshot(sharded, "acme/tiny-oss", "d" * 40)
    found = resolve("acme/tiny-oss")
    assert verify(found.path, found.name, found.fix).layers == 4
    shard = snap / "model-00001-of-00002.safetensors"
    blob = shard.resolve()
    with blob.open("r+b") as f:
        f.truncate(blob.stat().st_size // 2)
    with pytest.raises(ModelVerifyError) as e:
        verify(found.path, found.name, found.fix)
    msg = str(e.value)
    assert msg.startswith("acme/tiny-oss: ") and "model-00001-of-00002.safetensors: truncated" in msg
    assert msg.endswith(
        "To fix it: run `mlx-harmony-tui models pull acme/tiny-oss` to fetch the bad file(s) again"
    )
    blob.unlink()  # a shard the index lists but the cache lost
    with pytest.raises(ModelVerifyError, match="model-00001-of-00002.safetensors: missing"):
        verify(found.path, found.name, found.fix)


def test_a_model_that_is_not_gpt_oss_is_refused_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    with pytest.raises(ModelVerifyError, match=r"llama is a llama model \(LlamaForCausalLM\), not GPT-OSS"):
        verify(folder, "llama", "n/a")


def test_summary_counts_the_same_parameters_in_every_layout(tmp_path: Path, sharded: Path) -> None:
    sizes = {}
    for layout in ("float", "hf"):
        s = summarize(write_tiny_checkpoint(tmp_path / layout, layout=layout))
        sizes[layout] = s
    mlx = summarize(sharded)
    assert sizes["float"].parameters == sizes["hf"].parameters == mlx.parameters > 20_000_000
    assert (sizes["float"].layout, sizes["hf"].layout, mlx.layout) == ("hf-float", "hf-mxfp4", "mlx")
    assert mlx.weight_bytes < sizes["hf"].weight_bytes  # 8-bit embeddings against f32
    f = sizes["float"]  # K and V of 2 KV heads of 16 at f32, per layer and position
    assert f.kv_bytes_per_token == 2 * 2 * 16 * 4 and (f.full_layers, f.sliding_window) == (2, 8)
    # full layers keep every position; the sliding ones their window + the 256-position rollback margin
    assert f.kv_bytes(10_000) == f.kv_bytes_per_token * (2 * 10_000 + 2 * (8 + 256))
    assert f.kv_bytes(100) == f.kv_bytes_per_token * 4 * 100
    # 8-bit KV for the full layers: a byte per value plus a 4-byte scale and bias per 64 values (f32 here)
    assert (
        f.kv_bytes(10_000, kv_bits=8) == 2 * 10_000 * 64 * (1 + 8 / 64) + 2 * (8 + 256) * f.kv_bytes_per_token
    )
    # mxfp8: a byte per value plus a one-byte scale per 32 values, whatever the model's dtype, no bias
    mxfp8 = 2 * 10_000 * 64 * (1 + 1 / 32) + 2 * (8 + 256) * f.kv_bytes_per_token
    assert f.kv_bytes(10_000, kv_mode="mxfp8") == f.kv_bytes(10_000, 8, "mxfp8") == mxfp8
    # affine128: a byte per value plus a 4-byte scale and bias per 128 values (f32 here)
    paired = 2 * 10_000 * 64 * (1 + 8 / 128) + 2 * (8 + 256) * f.kv_bytes_per_token
    assert f.kv_bytes(10_000, kv_mode="affine128") == paired


def test_fit_refuses_with_numbers_and_force_overrides(sharded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = summarize(sharded)
    need = memory_need(s, None)
    assert need.context == 131072 and need.kv == (2 * 131072 + 2 * (8 + 256)) * s.kv_bytes_per_token
    hint = "raise it with `sudo sysctl iogpu.wired_limit_mb=N`"
    budget = memory.MemoryBudget(need.total - 1, "the Metal working-set limit", hint)
    monkeypatch.setattr(memory, "memory_budget", lambda: budget)
    with pytest.raises(memory.ModelTooLargeError) as e:
        check_fit("acme/tiny-oss", s)
    msg = str(e.value)
    assert msg.startswith(
        f"acme/tiny-oss needs ~{need.total / 1e9:.1f} GB (weights 0.0 + KV cache for 131072 tokens"
    )
    assert (
        f"this machine can give MLX ~{budget.nbytes / 1e9:.1f} GB, the Metal working-set limit ({hint})"
        in msg
    )
    assert "lower context_limit" in msg and "--force" in msg
    assert check_fit("acme/tiny-oss", s, force=True).total == need.total
    assert check_fit("acme/tiny-oss", s, context=4096).context == 4096  # a smaller context fits
    assert check_fit("acme/tiny-oss", s, kv_bits=8).kv < need.kv  # and so does a quantized KV cache
    two = check_fit("acme/tiny-oss", s, ranks=2)  # and a share of it on each of two ranks
    assert two.weights == int(s.weight_bytes * 0.55) and two.kv == need.kv // 2


def test_models_command_without_network(
    tmp_path: Path, sharded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlx_harmony_tui import cli

    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "(no GPT-OSS models in models_dirs (none configured) or the Hugging Face cache" in out
    assert "only the built-in demo" in out and "models pull openai/gpt-oss-20b" in out
    folder = copy_model(sharded, tmp_path / "mine")
    assert cli.main(["models", "info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "layers        4 (2 full attention" in out and "parameters    26.0 M" in out and "fits" in out
    kv = tmp_path / "kv.toml"
    kv.write_text('kv_mode = "affine128"\n')  # a quantized KV cache: its bytes per token and its name
    assert cli.main(["models", "info", str(folder), "--config", str(kv)]) == 0
    assert "bytes per token of context (8-bit g128)" in capsys.readouterr().out
    assert cli.main(["models", "rm", str(folder), "--yes"]) == 2  # only downloads are deleted
    assert "is not in the Hugging Face cache" in capsys.readouterr().err and folder.exists()
    assert cli.main(["models", "pull", "not a repo"]) == 2
    assert "is not a Hugging Face repo id" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["openai/gpt-oss-20b@", "openai/gpt-oss-20b@ ", " openai/gpt-oss-20b@"])
def test_an_empty_revision_after_the_at_sign_is_refused(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`models pull openai/gpt-oss-20b@` pulled main as if no '@' had been typed (a revision left out
    by mistake, e.g. an unset shell variable): it is a clear error, before anything is fetched."""
    from mlx_harmony_tui import cli
    from mlx_harmony_tui.catalog import hub

    assert hub.parse_repo(text) is None and hub.parse_repo("openai/gpt-oss-20b@main") == ("openai/gpt-oss-20b", "main")
    assert cli.main(["models", "pull", text]) == 2
    err = capsys.readouterr().err
    assert "empty revision after '@'" in err and "pulling" not in err and "Traceback" not in err
    assert not hub.cache_dir().exists() or not any(hub.cache_dir().iterdir())
    assert cli.main(["generate", "--model", text, "--prompt", "x"]) == 2  # --model says the same
    assert "empty revision after '@'" in capsys.readouterr().err


def _on_a_terminal(argv: list[str], keys: bytes) -> subprocess.CompletedProcess[str]:
    """Run the installed command with a pseudo-terminal as stdin, type ``keys`` once it asks."""
    exe = Path(sys.executable).with_name("mlx-harmony-tui")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "mlx_harmony_tui"]
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*cmd, *argv],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        os.close(slave)
        os.write(master, keys)  # read by the prompt whenever it comes: the line discipline keeps it
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(master)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_models_rm_on_a_terminal_takes_ctrl_d_as_no(tmp_path: Path) -> None:
    """ctrl+d at `models rm`'s question was an EOFError traceback; it keeps the model, as 'n' does."""
    src = tmp_path / "demo"
    src.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copyfile(demo_model_path() / name, src / name)
    snap = fake_snapshot(src, "acme/demo-oss", "c" * 40)
    asked = _on_a_terminal(["models", "rm", "acme/demo-oss"], b"\x04")
    assert asked.returncode == 1 and "Traceback" not in asked.stderr, asked.stderr
    assert "kept" in asked.stdout and snap.is_dir()
    gone = _on_a_terminal(["models", "rm", "acme/demo-oss"], b"y\n")
    assert gone.returncode == 0 and "deleted acme/demo-oss" in gone.stdout, gone.stderr
    assert not snap.exists()
    builtin = _on_a_terminal(["models", "rm", "demo"], b"y\n")  # the package's own files are not the user's
    assert builtin.returncode == 2 and "built into mlx-harmony-tui" in builtin.stderr
    assert (demo_model_path() / "model.safetensors").is_file()
    from mlx_harmony_tui import cli, paths

    assert cli.main(["models", "rm", "tiny", "--yes"]) == 2  # and nothing is generated just to be refused
    assert not (paths.cache_dir() / "models").exists()


def test_a_cached_repo_with_a_missing_blob_is_listed_broken_and_can_be_removed(
    tmp_path: Path, capsys
) -> None:
    """docs/models.md: `models list` shows a damaged model as broken. A snapshot whose blob was gone (a
    dangling symlink) vanished from the list instead (huggingface_hub's scan drops such a repo), and
    `models rm` could not delete it."""
    from mlx_harmony_tui import cli

    src = tmp_path / "demo"
    src.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copyfile(demo_model_path() / name, src / name)
    snap = fake_snapshot(src, "acme/demo-oss", "d" * 40)
    (snap / "model.safetensors").resolve().unlink()
    (entry,) = find_models()
    assert entry.name == "acme/demo-oss" and "model.safetensors" in (entry.problem or "")
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "acme/demo-oss" in out and "broken" in out
    assert cli.main(["models", "rm", "acme/demo-oss", "--yes"]) == 0
    assert "deleted acme/demo-oss" in capsys.readouterr().out
    assert not hub.repo_folder("acme/demo-oss").exists() and find_models() == []


def test_models_list_names_a_models_dirs_folder_that_is_not_there(tmp_path: Path, capsys) -> None:
    """A mistyped models_dirs entry was skipped without a word: the list just lacked the user's models."""
    from mlx_harmony_tui import cli

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'models_dirs = ["{tmp_path / "modles"}", "{tmp_path}"]\n')
    assert cli.main(["models", "list", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"! models_dirs: {tmp_path / 'modles'} is not a folder" in out
    assert f"models_dirs: {tmp_path} " not in out


def test_models_info_tiny_describes_it_without_writing_it(capsys: pytest.CaptureFixture[str]) -> None:
    """`models info tiny` wrote the ~100 MB tiny checkpoint into the cache just to describe it: a read-only
    command must not. It is described from its config and weights in memory, with the same numbers as the
    generated checkpoint's (the file adds only its header), and `--model tiny` still generates it."""
    from mlx_harmony_tui import cli, paths

    target = paths.cache_dir() / "models" / "tiny"
    assert cli.main(["models", "info", "tiny", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert not target.exists() and not list(target.parent.glob("tiny*")), "a read-only command wrote the model"
    assert cli.main(["models", "info", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "generated on first use" in out and "layers        4 (2 full attention" in out and not target.exists()

    assert resolve("tiny", []).path == target and (target / "config.json").is_file()  # running it generates it
    assert cli.main(["models", "info", "tiny", "--json"]) == 0
    real = json.loads(capsys.readouterr().out)
    for key in ("weight_bytes", "memory_need_bytes"):  # the file's header is not counted in memory
        assert abs(real.pop(key) - described.pop(key)) < 64 * 1024, key
    real.pop("memory_bytes"), described.pop("memory_bytes")  # the machine's free memory, which moves
    assert real.pop("source") == "built-in" and described.pop("source") != "built-in"
    assert real == described
