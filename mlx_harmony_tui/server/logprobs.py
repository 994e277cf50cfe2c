"""Token log-probabilities in OpenAI's shape (chat ``logprobs.content``, Responses ``output_text.logprobs``)."""

from __future__ import annotations

from typing import Any

from mlx_harmony_tui.chat.events import TokenLogprob


def visible(ev: TokenLogprob) -> bool:
    """A token of the text the client sees as the answer (not reasoning, not tool-call arguments)."""
    return ev.channel != "analysis" and ev.recipient is None


def entry(ev: TokenLogprob) -> dict[str, Any]:
    return {
        "token": ev.token,
        "logprob": ev.logprob,
        "bytes": list(ev.raw or ev.token.encode()),
        "top_logprobs": [{"token": t, "logprob": v, "bytes": list(raw)} for t, v, raw in ev.top],
    }
