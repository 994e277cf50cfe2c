"""How a conversation's ChatSettings are written into its session record and read back on resume.

Two parts: the generation parameters (recorded on the first reply whose parameters differ, so a session shows
where the user changed them) and the prompt settings (system prompt, instructions, date, tools: one set per
session, since changing them rewrites the prompt's prefix).
"""

from __future__ import annotations

import copy
from typing import Any

from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.sessions.schema import Session

SAMPLING_PARAMS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
TURN_PARAMS = ("max_tokens", "context_limit", "reasoning_effort")
PROMPT_SETTINGS = ("system_prompt", "instructions", "reasoning_effort", "conversation_date", "builtin_tools")


def settings_params(s: ChatSettings, only_set: bool = False) -> dict[str, Any]:
    """What the session records as the generation parameters of a reply. ``only_set``: just the values the
    user set (a remote backend's: the others are the server's, unknown here, so recording them would lie)."""
    return {k: s.value(k) for k in (*SAMPLING_PARAMS, *TURN_PARAMS) if not only_set or k in s.explicit}


def session_settings(s: ChatSettings) -> dict[str, Any]:
    """The prompt settings the session keeps (its ``settings`` field)."""
    out = {k: getattr(s, k) for k in PROMPT_SETTINGS}
    out["builtin_tools"] = list(s.builtin_tools)
    return out


def settings_from_session(base: ChatSettings, session: Session) -> ChatSettings:
    """Resume with the session's prompts and its last recorded parameters (``base`` fills the rest)."""
    s = copy.deepcopy(base)
    params = dict(session.params or {})
    for m in session.messages:
        if m.params:
            params = dict(m.params)
    for k in (*SAMPLING_PARAMS, *TURN_PARAMS):
        if k in params:
            s.set_value(k, params[k])  # recorded, so chosen for this session: a remote server is sent them too
    for k in PROMPT_SETTINGS:
        if session.settings.get(k) is not None:
            setattr(s, k, session.settings[k])
    return s
