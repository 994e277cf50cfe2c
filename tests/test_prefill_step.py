"""The `prefill_step` config key: how many prompt tokens the local model reads per prefill chunk (2048 on
CUDA, 512 elsewhere by default; lower on a memory-tight GPU). A request's own step still wins."""

from __future__ import annotations

from pathlib import Path

from mlx_harmony_tui.engine.generator import GenerationOptions, default_prefill_step
from mlx_harmony_tui.engine.metrics import PrefillProgress


def _chunks(engine, prompt: list[int], options: GenerationOptions) -> list[int]:
    done: list[int] = []

    def progress(p: object) -> None:
        if isinstance(p, PrefillProgress):
            done.append(p.done)

    list(engine.generate(prompt, options, on_progress=progress))
    return done


def test_prefill_step_config_key_reaches_the_local_engine(tmp_path: Path, tiny_model_dir: Path) -> None:
    from mlx_harmony_tui.backends.local import LocalBackend
    from mlx_harmony_tui.config import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text("prefill_step = 16\n")
    config, problems = load_config(cfg)
    assert problems == [] and config.prefill_step == 16
    backend = LocalBackend.load(str(tiny_model_dir), app_config=config)
    try:
        engine = backend.engine
        assert engine.prefill_step == 16
        prompt = [200006 + (i % 7) for i in range(50)]
        opts = GenerationOptions(max_tokens=1, stop_ids=frozenset())
        assert backend._thread.call(lambda: _chunks(engine, prompt, opts)) == [16, 32, 48, 49, 50]
        engine.prompt_cache.reset()
        own = GenerationOptions(max_tokens=1, stop_ids=frozenset(), prefill_step=32)  # a request's own step
        assert backend._thread.call(lambda: _chunks(engine, prompt, own)) == [32, 49, 50]
    finally:
        backend.close()


def test_prefill_step_out_of_range_is_reported_and_the_default_kept(tmp_path: Path) -> None:
    from mlx_harmony_tui.config import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text('theme = "textual-dark"\nprefill_step = 4\n')
    config, problems = load_config(cfg)
    assert config.prefill_step is None and [(p.line, p.key) for p in problems] == [(2, "prefill_step")]
    assert "16" in problems[0].message
    assert default_prefill_step() == 512  # this machine has no GPU
