"""Guaranteed structured output: the final answer follows a JSON schema, enforced token by token.

One llguidance grammar covers the whole generation in Harmony's structure: any number of free analysis
messages (their text is not constrained; commentary preambles only when no final answer can follow), the
calls to the tools the model was offered (function arguments follow each function's own schema), and a
final message whose body is the schema's JSON followed by ``<|return|>``. Its token mask goes to the
engine's sampler (engine/constraint.py), so even a random model can only write a reply that parses.
Three rules bound it:

* the model may write free text for ``reasoning_budget`` tokens; then the constraint closes the message
  itself and only the answer (or a tool call) may follow, so the answer always starts while tokens are left
  for it;
* when few tokens are left (``finish_margin``), the JSON is steered to its end: among the tokens the grammar
  allows, those made only of closing characters come first (starting with ``"``: a string ends; then ``]``
  and ``}``), then separators (``,``); so a string, an array or a number cannot run past the limit, and the
  reply still parses (its values may be cut short);
* once the JSON is complete, ``<|return|>`` is the only token allowed: the model ends there.

The llguidance tokenizer is built from our verified o200k_base file (harmony/vocab.py) and Harmony's special
tokens from openai-harmony, once per process (about 1-2 s).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.harmony.messages import FunctionTool
from mlx_harmony_tui.harmony.vocab import load_ranks

# o200k_base's pre-tokenizer pattern (the regex tiktoken splits text with before BPE).
O200K_PATTERN = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])
# How the JSON is laid out: the separators json.dumps writes, no other whitespace (a random model could
# otherwise write whitespace forever).
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class SchemaError(UserError):
    """The JSON schema cannot be turned into a grammar (unsupported keyword, invalid schema)."""


_tokenizers: dict[int, tuple[Any, tuple[np.ndarray, ...]]] = {}  # n_vocab -> tokenizer, steering masks
_tok_lock = threading.Lock()


def _specials(encoding: Any) -> dict[str, int]:
    return {t: ids[0] for t in encoding.special_tokens_set if len(ids := encoding.encode(t, allowed_special="all")) == 1}


def _words(ids: list[int], n_vocab: int) -> np.ndarray:
    bits = np.zeros(((n_vocab + 31) // 32) * 32, dtype=np.uint8)
    bits[ids] = 1
    return np.packbits(bits, bitorder="little").view(np.int32)


def lltokenizer(encoding: Any, n_vocab: int) -> tuple[Any, tuple[np.ndarray, ...]]:
    """llguidance's tokenizer for o200k + Harmony's special tokens, for a model with ``n_vocab`` logits; and
    the steering masks in order of preference: closing tokens (only ``"]}``) that start with ``"``, the
    other closing tokens, separators (starting with ``,``)."""
    import llguidance as llg

    with _tok_lock:
        entry = _tokenizers.get(n_vocab)
        if entry is None:
            ranks = load_ranks()
            specials = {t: i for t, i in _specials(encoding).items() if i < n_vocab}
            tok = llg.LLTokenizer.from_tiktoken(encoder=ranks, special_tokens=specials, pattern=O200K_PATTERN,
                                                eos_token=specials["<|return|>"], n_vocab=n_vocab)
            closing = {b: r for b, r in ranks.items() if r < n_vocab and b and not b.strip(b'"]}')}
            quotes = [r for b, r in closing.items() if b.startswith(b'"')]
            brackets = [r for b, r in closing.items() if not b.startswith(b'"')]
            separators = [r for b, r in ranks.items() if r < n_vocab and b.startswith(b",")]
            steer = tuple(_words(ids, n_vocab) for ids in (quotes, brackets, separators))
            entry = _tokenizers[n_vocab] = (tok, steer)
        return entry


def _json(schema: dict[str, Any]) -> str:
    s = copy.deepcopy(schema) if isinstance(schema, dict) else schema
    if not isinstance(s, dict):
        raise SchemaError("a JSON schema must be an object")
    s["x-guidance"] = {**JSON_LAYOUT, **(s.get("x-guidance") or {})}
    return "%json " + json.dumps(s, ensure_ascii=False)


def harmony_grammar(schema: dict[str, Any] | None, functions: Sequence[FunctionTool] = (),
                    builtin: Sequence[str] = (), free: bool = True, final_text: bool = False) -> str:
    """The Lark grammar of one assistant generation (the prompt ends in ``<|start|>assistant``): free
    messages (when ``free``), calls of the offered tools, and a final answer following ``schema`` (None: no
    final answer, a tool must be called; with ``final_text``, a final answer of any text)."""
    analysis: list[str] = []
    commentary: list[str] = []
    rules: list[str] = []
    if free:
        analysis.append('<|message|> TEXT <|end|> <|start|> "assistant" msg')
        if schema is None and not final_text:  # a preamble before the final answer would join its text
            commentary.append('<|message|> TEXT <|end|> <|start|> "assistant" msg')
    for i, f in enumerate(functions):
        params = f.parameters if isinstance(f.parameters, dict) else {"type": "object"}
        commentary.append(f"fn{i}")
        rules.append(f'fn{i}: " to=functions.{f.name}" (" " <|constrain|> "json")? <|message|> args{i} <|call|>')
        rules.append(f"args{i}: {_json(params)}")
    if "python" in builtin and (free or not (functions or schema is not None)):
        analysis.append('" to=python" " code"? <|message|> TEXT <|call|>')
    if "browser" in builtin and free:
        analysis.append('" to=browser." BROWSER_FN (" " <|constrain|> "json")? <|message|> TEXT <|call|>')
        rules.append('BROWSER_FN: "search" | "open" | "find"')
    msgs = []
    for name, alts in (("analysis", analysis), ("commentary", commentary)):
        if alts:
            msgs.append(name)
            rules.append(f'{name}: <|channel|> "{name}" ({" | ".join(alts)})')
    if schema is not None:
        msgs.append("final")
        rules.append('final: <|channel|> "final" <|message|> answer <|return|>')
        rules.append(f"answer: {_json(schema)}")
    elif final_text:
        msgs.append("final")
        rules.append('final: <|channel|> "final" <|message|> TEXT <|return|>')
    if not msgs:
        raise SchemaError("nothing the reply could be: no response format and no tool to call")
    if free or final_text or "python" in builtin:
        rules.append("TEXT: /(?s:.*)/")
    return "\n".join(["start: msg", f"msg: {' | '.join(msgs)}", *rules]) + "\n"


class HarmonyJsonConstraint:
    """engine.constraint.TokenConstraint for one generation: the grammar's mask plus the rules above. When
    the free-text budget is spent, the message is closed (``<|end|><|start|>assistant``) and a second
    grammar without free messages takes over: the answer or a tool call must follow."""

    def __init__(self, encoding: Any, n_vocab: int, grammar: str, strict_grammar: str, reasoning_budget: int,
                 max_tokens: int, finish_margin: int) -> None:
        self._tok, self._steer = lltokenizer(encoding, n_vocab)
        self._matcher = self._compile(grammar)
        self._strict = strict_grammar
        sp = _specials(encoding)
        self._end, self._call, self._message = sp["<|end|>"], sp["<|call|>"], sp["<|message|>"]
        self._start = sp["<|start|>"]
        self._close_free = [self._end, self._start, *encoding.encode("assistant")]
        self._encoding = encoding
        self._n_vocab = n_vocab
        self._words = np.zeros((1, (n_vocab + 31) // 32), dtype=np.int32)
        self._budget = max(0, int(reasoning_budget))
        self._free_used = 0
        self._left = int(max_tokens)
        self._margin = int(finish_margin)
        self.steered = False  # the JSON was steered to its end by the token limit
        self._header: list[int] = []
        self._in_free_text = False
        self._forced: list[int] = []
        self._swap = False
        self.error: str | None = None

    def _compile(self, grammar: str) -> Any:
        import llguidance as llg

        matcher = llg.LLMatcher(self._tok, llg.LLMatcher.grammar_from_lark(grammar), log_level=0)
        if matcher.is_error():
            raise SchemaError(f"the response format cannot be enforced: {matcher.get_error()}")
        return matcher

    def allowed(self) -> np.ndarray | None:
        if self.error is not None:
            return None
        if not self._forced and self._in_free_text and self._free_used >= self._budget:
            mask = self._compute()
            if self._allows(mask, self._end):
                self._forced, self._swap = list(self._close_free), True
            elif self._allows(mask, self._call):
                self._forced = [self._call]
        if self._forced:
            return _words([self._forced[0]], self._n_vocab)
        mask = self._compute()
        if self._left <= self._margin and not self._in_free_text:
            for preferred in self._steer:
                narrowed = mask & preferred
                if narrowed.any():
                    self.steered = True
                    return narrowed
        return mask

    def accept(self, token: int) -> None:
        if self.error is not None:
            return
        self._left -= 1
        if self._forced and self._forced[0] == token:
            self._forced.pop(0)
        if not self._matcher.consume_token(token):
            self.error = self._matcher.get_error() or f"token {token} was not allowed"
            return
        if self._swap and not self._forced:
            self._swap = False
            self._matcher = self._compile(self._strict)  # at the new message's start, free messages ruled out
        if token == self._message:
            header = self._encoding.decode(self._header) if self._header else ""
            self._in_free_text = "final" not in header and " to=functions." not in header
            self._header = []
        elif token in (self._end, self._call, self._start):
            self._in_free_text = False
            self._header = []
        elif self._in_free_text:
            self._free_used += 1
        else:
            self._header.append(token)

    @property
    def done(self) -> bool:
        """The grammar is complete (the reply ended with ``<|return|>`` or a tool call)."""
        return self._matcher.is_stopped() or self._matcher.is_accepting()

    def _compute(self) -> np.ndarray:
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self._matcher, self._words)
        return self._words[0]

    @staticmethod
    def _allows(mask: np.ndarray, tok: int) -> bool:
        return bool((int(mask[tok // 32]) >> (tok % 32)) & 1)


def json_constraint(
    encoding: Any, n_vocab: int, schema: dict[str, Any] | None, max_tokens: int,
    functions: Sequence[FunctionTool] = (), builtin: Sequence[str] = (), reasoning_budget: int | None = None,
    final_text: bool = False,
) -> HarmonyJsonConstraint:
    """The constraint for one generation (``schema`` None: a tool call is required). Free text may use half
    the token limit unless told otherwise; the JSON is steered to its end in the last eighth (at most 64)."""
    budget = max_tokens // 2 if reasoning_budget is None else reasoning_budget
    grammar = harmony_grammar(schema, functions, builtin, final_text=final_text)
    strict = harmony_grammar(schema, functions, builtin, free=False, final_text=final_text)
    return HarmonyJsonConstraint(encoding, n_vocab, grammar, strict, budget, max_tokens, min(64, max_tokens // 8))


def constraint_for(options: Any, encoding: Any, n_vocab: int, max_tokens: int,
                   tool_choice: str = "auto") -> HarmonyJsonConstraint | None:
    """The constraint a generation rendered with ``options`` (harmony.render.RenderOptions) needs: with a
    response format, its schema for the final answer; ``tool_choice`` "required": a call of one of the offered
    tools; "none": no call (then a free final answer when there is no schema); otherwise None."""
    schema = options.response_format.schema if options.response_format is not None else None
    functions, builtin = options.function_tools, options.builtin_tools
    if tool_choice == "required" and (functions or "python" in builtin):
        schema = None
    elif tool_choice == "none":
        functions, builtin = [], []
    elif schema is None:
        return None
    final_text = schema is None and tool_choice == "none"
    return json_constraint(encoding, n_vocab, schema, max_tokens, functions, builtin, final_text=final_text)


def check_schema(schema: Any) -> None:
    """Raise SchemaError (a clear sentence) when llguidance cannot enforce ``schema``."""
    import llguidance as llg

    if not isinstance(schema, dict):
        raise SchemaError("a JSON schema must be an object")
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_LAYOUT)  # type: ignore[arg-type]
    except ValueError as e:
        raise SchemaError(f"invalid JSON schema: {e}") from None
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise SchemaError(f"the JSON schema cannot be enforced: {messages[0] if messages else 'unknown error'}")

