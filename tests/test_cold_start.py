"""Cold start: the faces prefill the conversation's fixed start (system + developer messages) while the
user types (LocalBackend.prime), so the first message prefills only itself and answers exactly as before."""

from __future__ import annotations

import json
from pathlib import Path

from mlx_harmony_tui.backends.base import TurnRequest
from mlx_harmony_tui.backends.local import LocalBackend
from mlx_harmony_tui.chat.events import Delta, TurnFinished
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.cli import main
from mlx_harmony_tui.harmony.messages import HMessage


def _first_turn(model_dir: Path, prime: bool) -> tuple[str, int, int]:
    backend = LocalBackend.load(model_dir)
    try:
        settings = ChatSettings(max_tokens=12, conversation_date="2025-01-01")
        settings.sampling.temperature = 0.0
        if prime:
            backend.prime(settings)
        handle = backend.start_turn(TurnRequest([HMessage(role="user", text="Hello! Who are you?")], settings))
        text, reused, prompt = [], -1, 0
        for event in handle.events():
            if isinstance(event, Delta):
                text.append(event.text)
            if isinstance(event, TurnFinished):
                reused, prompt = event.metrics.reused_tokens, event.metrics.prompt_tokens
        return "".join(text), reused, prompt
    finally:
        backend.close()


def test_a_primed_backend_reuses_the_system_prompt_and_answers_the_same(tiny_model_dir: Path) -> None:
    cold = _first_turn(tiny_model_dir, prime=False)
    warm = _first_turn(tiny_model_dir, prime=True)
    assert cold[1] == 0
    assert warm[0] == cold[0] and warm[2] == cold[2]
    assert warm[1] >= cold[2] - 20  # all but the user message and the assistant header came from the cache


def test_generate_primes_before_the_first_message(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    rc = main(["generate", "-m", "demo", "-p", "Hello! Who are you?", "--max-tokens", "4", "--temperature", "0",
               "--metrics-log", str(log)])
    assert rc == 0
    (line,) = log.read_text().splitlines()
    doc = json.loads(line)
    assert doc["reused_tokens"] > 150 and doc["prompt_tokens"] - doc["reused_tokens"] < 20
