"""A stand-in for the model only: everything around it (parser, turn, tools, faces) stays real."""

from __future__ import annotations

from mlx_harmony_tui.chat.events import Metrics
from mlx_harmony_tui.engine.generator import GenerationResult


class ScriptedEngine:
    """Writes fixed Harmony text token by token (the real encoding), one script per generation, and keeps
    every prompt it was given so the test can read what the model was told."""

    def __init__(self, encoding, scripts: list[str]) -> None:
        self.encoding = encoding
        self.scripts = list(scripts)
        self.prompts: list[str] = []
        self.last_result: GenerationResult | None = None

    def generate(self, prompt, options, cancel=None, on_progress=None):
        self.prompts.append(self.encoding.decode(prompt))
        tokens = self.encoding.encode(self.scripts.pop(0), allowed_special="all")
        yield from tokens
        self.last_result = GenerationResult("stop", Metrics(generated_tokens=len(tokens), final=True), tokens)

    # What faces may ask of an engine besides generating (prompt-cache files, counts): nothing to keep.
    def save_cache(self, path) -> None:
        pass

    def load_cache(self, path) -> bool:
        return False

    def count_cached(self, prompt_ids) -> int:
        return 0

    def warm_up(self) -> None:
        pass
