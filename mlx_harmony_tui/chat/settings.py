"""Everything that shapes one turn, resolved from CLI > session > profile > config file > model defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mlx_harmony_tui.engine.sampling import SamplingParams
from mlx_harmony_tui.harmony.messages import FunctionTool
from mlx_harmony_tui.harmony.render import ResponseFormat

# FunctionTool lives with the renderer's types
__all__ = ["REQUEST_KEYS", "SAMPLING_KEYS", "ChatSettings", "FunctionTool", "ReasoningEffort"]

ReasoningEffort = Literal["low", "medium", "high"]
SAMPLING_KEYS = (
    "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "repetition_context", "logit_bias",
)  # fmt: skip
# The values a turn's request to a server carries when the user set them (backends/remote.py).
REQUEST_KEYS = (*SAMPLING_KEYS, "max_tokens", "seed", "reasoning_effort")


@dataclass
class ChatSettings:
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = 4096  # per generation
    reasoning_effort: ReasoningEffort = "medium"
    instructions: str = ""  # developer message
    system_prompt: str = ""  # extra system text (model identity override)
    knowledge_cutoff: str = "2024-06"
    conversation_date: str | None = None  # fixed per session so the cached prefix stays valid
    # "python", "browser". The sandboxed python tool is on by default: GPT-OSS does arithmetic through it.
    builtin_tools: list[str] = field(default_factory=lambda: ["python"])
    function_tools: list[FunctionTool] = field(default_factory=list)
    mcp_tools: bool = True  # offer the config's MCP servers' tools (the server only with `serve --tools mcp`)
    context_limit: int | None = None  # tokens; None = the model's
    seed: int | None = None
    max_tool_rounds: int = 8
    max_retries: int = 2
    placeholders: dict[str, str] = field(default_factory=dict)  # {name} values for system/developer/user text
    examples: list[dict[str, str]] = field(default_factory=list)  # [{role, content}] shown in the developer message
    greeting: str = ""  # the assistant's first message of a new conversation
    response_format: ResponseFormat | None = None  # the final answer follows this JSON schema (guaranteed)
    logprobs: int | None = None  # None: off; N: each token's log-probability and the N best alternatives
    # Enforced by constrained decoding: "required" = the reply calls one of the tools; "none" = it calls none
    # (the tools stay described to the model, so the prompt and its cache stay the same); "auto" = its choice.
    tool_choice: Literal["auto", "required", "none"] = "auto"
    # The keys (as in config/resolve.py) whose values the user set: config file, profile, session, command
    # line, /set, the params panel. The others hold defaults (the local model's generation_config.json, else
    # built-in ones), which a remote backend does not send, so that its server applies its own model's.
    explicit: frozenset[str] = frozenset()

    def value(self, key: str) -> Any:
        """A setting by its flat key (sampling keys included)."""
        return getattr(self.sampling if key in SAMPLING_KEYS else self, key)

    def set_value(self, key: str, value: Any) -> None:
        """Set a value the user chose (None unsets an optional one: seed, context_limit)."""
        setattr(self.sampling if key in SAMPLING_KEYS else self, key, value)
        self.explicit = self.explicit - {key} if value is None else self.explicit | {key}

    def unset(self, key: str) -> None:
        """Back to the default: a remote backend leaves it to its server again (the value stays as a
        placeholder; a local one keeps using it, as it is its model's default)."""
        self.explicit = self.explicit - {key}
