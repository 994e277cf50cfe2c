"""Flags shared by every face (the TUI, `chat`, `generate`, `serve`), and their resolution into settings and
a backend loader, so each flag means the same and falls back the same way everywhere.

Precedence is command line > profile > config file > model defaults (config.py does the layering; the flags
given here are applied last). Bad values are UserErrors with the flag's name, never a traceback.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from mlx_harmony_tui import paths
from mlx_harmony_tui.chat.events import Delta
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.config.validate import RANGES
from mlx_harmony_tui.errors import UserError

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
FLAG_KEYS = (*SAMPLING_KEYS, "repetition_context", "max_tokens", "seed", "reasoning_effort")
EFFORTS = ("low", "medium", "high")


def add_model_flags(p: argparse.ArgumentParser, remote: bool = True) -> None:
    p.add_argument("--model", "-m", default=None,
                   help="a folder, a name in models_dirs, a downloaded Hugging Face repo (OWNER/NAME[@REV]), or 'demo' "
                   "(default: the config's model, else demo); with --remote: the server's model")
    p.add_argument("--force", action="store_true", help="load even if the model does not seem to fit in memory")
    if remote:
        p.add_argument("--remote", default=None, metavar="URL",
                       help="use an OpenAI-compatible server instead of a local model (e.g. http://127.0.0.1:8000/v1)")
        p.add_argument("--api-key", default=None,
                       help="bearer token for --remote (default: the variable the config's [remote] api_key_env "
                            "names, then $OPENAI_API_KEY)")
    p.add_argument("--profile", default=None, help="settings profile from the config file")
    p.add_argument("--config", default=None, metavar="PATH", help="config file (default: the user's config.toml)")
    add_trace_flags(p)


def finite_float(text: str) -> float:
    """argparse type: a number, not nan or inf (which float() accepts and sampling cannot use)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def seed_int(text: str) -> int:
    """argparse type: a seed is 0 .. 2**64-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"{text!r}: a seed is between 0 and 2**64-1")
    return value


def add_settings_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--temperature", type=finite_float, default=None)
    g.add_argument("--top-p", type=finite_float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--min-p", type=finite_float, default=None)
    g.add_argument("--repetition-penalty", type=finite_float, default=None)
    g.add_argument("--repetition-context", type=int, default=None, help="tokens the repetition penalty looks back over")
    g.add_argument("--max-tokens", type=int, default=None, help="most tokens per generation")
    g.add_argument("--seed", type=seed_int, default=None)
    g.add_argument("--reasoning-effort", choices=EFFORTS, default=None)
    g.add_argument("--system", default=None, help="system prompt text (model identity)")
    g.add_argument("--instructions", default=None, help="developer instructions")
    g.add_argument("--tools", default=None, metavar="LIST",
                   help="built-in tools to offer the model: comma list of python,browser, or 'none' (default: python)")


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, by ChatSettings key (sampling keys flat)."""
    out: dict[str, Any] = {}
    for key in FLAG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    if getattr(args, "system", None) is not None:
        out["system_prompt"] = args.system
    if getattr(args, "instructions", None) is not None:
        out["instructions"] = args.instructions
    if getattr(args, "json_schema", None):
        out["response_format_file"] = args.json_schema
    tools = getattr(args, "tools", None)
    if tools is not None:
        names = [] if tools.strip().lower() in ("", "none") else [t.strip() for t in tools.split(",") if t.strip()]
        unknown = sorted(set(names) - {"python", "browser"})
        if unknown:
            raise UserError(f"--tools: unknown tool {', '.join(unknown)} (known: python, browser, none)")
        out["builtin_tools"] = names
    return out


SET_KEYS = (*SAMPLING_KEYS, "repetition_context", "logit_bias", "max_tokens", "context_limit", "seed",
            "reasoning_effort", "instructions", "system")


def parse_value(key: str, text: str, typed: str | None = None) -> Any:
    """Text of `/set key=value` -> a checked value of the right type; errors name ``typed`` (what the user
    wrote), else the key."""
    name = typed or key
    key = key.strip().replace("-", "_")
    text = text.strip()
    try:
        if key in ("temperature", "top_p", "min_p", "repetition_penalty"):
            value: Any = finite_float(text)
        elif key in ("top_k", "max_tokens", "repetition_context"):
            value = int(text)
        elif key in ("seed", "context_limit"):  # none: unset (a fresh seed each turn; the model's context)
            value = None if text.lower() in ("", "none", "off") else seed_int(text) if key == "seed" else int(text)
        elif key == "logit_bias":
            value = parse_logit_bias(text, name)
        elif key in ("reasoning_effort", "instructions", "system_prompt", "system"):
            value = text
        else:
            raise UserError(f"unknown setting {name!r}; known: {', '.join(SET_KEYS)}")
    except ValueError:
        raise UserError(f"{name}: {text!r} is not a valid number") from None
    except argparse.ArgumentTypeError as e:
        try:
            float(text)
        except ValueError:  # not a number at all
            raise UserError(f"{name}: {text!r} is not a valid number") from None
        raise UserError(f"{name}: {e}") from None  # a number, but not finite or out of the seed's range
    return value


def parse_logit_bias(text: str, name: str = "logit_bias") -> dict[int, float]:
    """``1234:-100,5678:2.5`` (token id: bias) -> dict; "" or "none" clears it."""
    if text.strip().lower() in ("", "none", "off"):
        return {}
    out: dict[int, float] = {}
    for item in text.split(","):
        tid, sep, bias = item.partition(":")
        try:
            out[int(tid)] = float(bias)
        except ValueError:
            raise UserError(f"{name}: {item.strip()!r}: expected token_id:bias, e.g. 1234:-100") from None
        if not sep or int(tid) < 0 or not -100 <= float(bias) <= 100:
            raise UserError(f"{name}: {item.strip()!r}: token ids are >= 0 and biases -100..100")
    return out


def apply_overrides(settings: ChatSettings, overrides: dict[str, Any], typed: str | None = None) -> ChatSettings:
    """Apply flat overrides in place after checking their ranges (UserError naming the bad one: ``typed``,
    what the user wrote in `/set`, or else the command-line flag)."""
    for key, value in overrides.items():
        key = "system_prompt" if key == "system" else key
        check(key, value, typed)
        settings.set_value(key, value)  # the user's: sent to a remote server (None, e.g. seed=none: unset)
    return settings


def resume_overrides(args: argparse.Namespace) -> Callable[[ChatSettings], ChatSettings] | None:
    """What a resumed session's recorded settings become with the command line's flags, which win over them
    (docs/config.md: command line > session); None without flags. The change is recorded with the next reply."""
    flags = cli_overrides(args)
    if not flags:
        return None
    return lambda recorded: apply_overrides(copy.deepcopy(recorded), flags)


def check(key: str, value: Any, name: str | None = None) -> None:
    flag = name or "--" + key.replace("_", "-")
    most_context = RANGES["repetition_context"][1]  # the config's bound, which the server reads too
    bad = {
        "temperature": lambda v: not 0 <= v <= 10,
        "top_p": lambda v: not 0 < v <= 1,
        "top_k": lambda v: v < 0,
        "min_p": lambda v: not 0 <= v <= 1,
        "repetition_penalty": lambda v: v <= 0,
        "repetition_context": lambda v: not 0 <= v <= most_context,  # a window of token ids (huge: MemoryError)
        "max_tokens": lambda v: v < 1,
        "context_limit": lambda v: v is not None and v < 1,
        "reasoning_effort": lambda v: v not in EFFORTS,
    }.get(key)
    if bad is not None and bad(value):
        hint = {"reasoning_effort": " (low, medium or high)", "top_p": " (0 < top_p <= 1)",
                "min_p": " (0..1)", "temperature": " (0..10)", "max_tokens": " (at least 1)",
                "context_limit": " (at least 1 token; none = the model's)",
                "repetition_context": f" (0..{most_context:g} tokens)"}.get(key, "")
        raise UserError(f"{flag}: invalid value {value!r}{hint}")


def load_app_config(args: argparse.Namespace) -> Any:
    """The config file (and profile) the flags name; problems are printed as warnings, not fatal."""
    cfg, problems = load_app_config_quietly(args)
    for problem in problems:
        print(f"mlx-harmony-tui: config: {problem}", file=sys.stderr)
    return cfg


def load_app_config_quietly(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """(config, its problems as text) for a face that shows them itself (the TUI, once its screen is up)."""
    from mlx_harmony_tui import config as config_mod

    path = getattr(args, "config", None)
    profile = getattr(args, "profile", None)
    cfg, problems = config_mod.load_config(Path(path).expanduser() if path else None, profile)
    try:
        check_profile(cfg, profile)
    except UserError as e:  # the file's own problems may say why (a TOML error in the profile's table)
        why = [f"config: {p}" for p in problems or [] if p.key != "profile"]  # not "using no profile": we stop
        raise UserError("\n".join([str(e), *why])) from None
    return cfg, [str(p) for p in problems or []]


def check_profile(cfg: Any, profile: str | None) -> None:
    """A profile named on the command line must exist (a typo would silently run without it)."""
    from mlx_harmony_tui import config as config_mod

    if profile and cfg.active_profile != profile:
        known = config_mod.list_profiles(cfg)
        raise UserError(f"--profile {profile}: no such profile (known: {', '.join(known) or 'none'}; profiles are "
                        f"[profiles.NAME] tables in {cfg.source} or files in {paths.config_dir() / 'profiles'})")


def add_trace_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug-file", default=None, metavar="PATH",
                   help="append a JSON line per generation attempt: prompt with special tokens, raw completion, "
                        "parse and repairs, retry decision, timings (local model)")
    p.add_argument("--metrics-log", default=None, metavar="PATH",
                   help="append one line of figures per turn (JSON lines; TSV if PATH ends in .tsv)")


def attach_trace(backend: Any, args: argparse.Namespace) -> None:
    """Give the backend the trace files the flags name (a remote one traces its requests and replies)."""
    debug, metrics = getattr(args, "debug_file", None), getattr(args, "metrics_log", None)
    if not (debug or metrics):
        return
    if not hasattr(backend, "trace"):
        print("mlx-harmony-tui: --debug-file/--metrics-log apply to a local model; ignored with a remote one",
              file=sys.stderr)
        return
    from mlx_harmony_tui.chat.trace import TurnTrace

    backend.trace = TurnTrace(Path(debug) if debug else None, Path(metrics) if metrics else None,
                              model=backend.model_name)


def resolve_settings_from_args(args: argparse.Namespace, cfg: Any = None, *,
                               strict: bool = True) -> tuple[ChatSettings, str]:
    """(settings: CLI > profile > config file > model defaults, model name or path). ``strict``: a model
    that cannot be found is an error now (line faces); else its defaults are skipped and the loader reports
    it (the TUI, where the user can pick another)."""
    from mlx_harmony_tui import config as config_mod

    cfg = cfg if cfg is not None else load_app_config(args)
    model = getattr(args, "model", None) or cfg.model or "demo"
    model_dir: Path | None = None
    if not remote_url(args, cfg):
        from mlx_harmony_tui.backends.local import resolve_model_path

        try:
            model_dir = resolve_model_path(model, cfg.models_dirs)
        except UserError:
            if strict:
                raise
    cli = cli_overrides(args)
    for key, value in cli.items():
        check(key, value)
    settings = config_mod.settings_from_config(
        cfg, cli=cli, model_dir=model_dir if model_dir is not None and model_dir.is_dir() else None
    )
    return settings, str(model)


def remote_url(args: argparse.Namespace, cfg: Any) -> str | None:
    """The server to talk to: ``--remote URL``, else the config's ``[remote] endpoint`` (--model then picks the
    server's model). ``serve`` has no --remote: it always runs its model here."""
    if not hasattr(args, "remote"):
        return None
    return str(args.remote or cfg.remote.endpoint) or None


def remote_api_key(args: argparse.Namespace, cfg: Any) -> str | None:
    """--api-key, else the variable the config's ``[remote] api_key_env`` names, else $OPENAI_API_KEY."""
    return (
        getattr(args, "api_key", None)
        or (os.environ.get(cfg.remote.api_key_env) if cfg.remote.api_key_env else None)
        or os.environ.get("OPENAI_API_KEY")
    )


BackendLoader = Callable[[str, Any], Any]  # (model name or path, progress callback or None) -> Backend


def backend_loader(args: argparse.Namespace, cfg: Any) -> BackendLoader:
    """How every face gets its backend: the server the flags or config name (checked to answer, so a wrong
    URL fails at once), else a local model by name or path (the TUI's model picker passes another one)."""
    url = remote_url(args, cfg)
    if url:
        key, remote_model = remote_api_key(args, cfg), getattr(args, "model", None) or cfg.remote.model or None

        def remote(_model: str, progress: Any = None) -> Any:
            from mlx_harmony_tui.backends.remote import RemoteBackend

            if progress:
                progress(0.2, f"connecting to {url}")
            backend = RemoteBackend(url, api_key=key, model=remote_model, app_config=cfg)  # declares its tools
            backend.connect()  # fails here, clearly, if the server cannot be reached or lacks --model
            attach_trace(backend, args)
            return backend

        return remote

    def local(model: str, progress: Any = None) -> Any:
        from mlx_harmony_tui.backends.local import LocalBackend

        backend = LocalBackend.load(  # the config's tools, models_dirs and context_limit too
            model, progress=progress, app_config=cfg, force=getattr(args, "force", False)
        )
        attach_trace(backend, args)
        backend.prime(resolve_settings_from_args(args, cfg)[0])  # the conversation's fixed start, prefilled now
        return backend

    return local


def make_backend(args: argparse.Namespace, progress: Any = None) -> tuple[Any, ChatSettings]:
    """The backend the flags ask for (local model, or --remote URL / the config's remote) and the settings."""
    cfg = load_app_config(args)
    settings, model = resolve_settings_from_args(args, cfg)
    return backend_loader(args, cfg)(model, progress), settings


def finish_note(ev: Any, settings: ChatSettings, raise_hint: str) -> str | None:
    """What a line face says when a turn (its ``TurnFinished``) ended short of a complete answer; None for a
    normal end or a stop the user asked for. ``raise_hint``: how this face raises max_tokens."""
    if ev.reason == "length":
        m = ev.metrics
        limits = [x for x in (settings.context_limit, m.context_limit) if x]
        # with the context known, whether it is full: a structured answer steered to its end near max_tokens
        # stops short of max_tokens too (it said 'the end of the context (458 tokens)' of 131072)
        full = m.context_tokens >= min(limits) - 1 if limits else bool(m.generated_tokens) and (
            m.generated_tokens < settings.max_tokens)
        if full:
            return f"cut at the end of the context ({m.context_tokens} tokens)"
        return f"cut at the token limit (max_tokens {settings.max_tokens}); {raise_hint} raises it"
    if ev.reason == "tool_rounds":
        return f"stopped after {settings.max_tool_rounds} tool calls in a row without an answer"
    return None if ev.reason in ("stop", "cancelled") else f"stopped: {ev.reason}"


class StreamPrinter:
    """Writes the visible text of streamed ``Delta`` events as it arrives, for the line faces (chat, generate).

    Text addressed to a tool is never shown (the faces print calls themselves); analysis only when asked,
    behind an ``[analysis] `` mark, with a line break wherever the stream switches between reasoning and answer.
    """

    def __init__(self, out: TextIO, show_analysis: bool) -> None:
        self.out = out
        self.show_analysis = show_analysis
        self.section: str | None = None  # what was printed last: "analysis", "final" or None (a new line)

    def delta(self, ev: Delta) -> None:
        if ev.recipient is not None or (ev.channel == "analysis" and not self.show_analysis):
            return
        kind = "analysis" if ev.channel == "analysis" else "final"
        if kind != self.section:
            if self.section is not None:
                self.out.write("\n")
            if kind == "analysis":
                self.out.write("[analysis] ")
            self.section = kind
        self.out.write(ev.text)
        self.out.flush()

    def new_line(self) -> None:
        """Something else was printed on its own line: the next text starts a fresh section."""
        self.section = None


def release_mlx_streams() -> None:
    """Free the main thread's MLX streams when the interpreter exits (else MLX may abort the process).

    Registered with atexit rather than called at once: freeing them now would break later MLX use in this
    process (tests call several commands in one interpreter).
    """
    global _EXIT_HOOK
    if _EXIT_HOOK or "mlx.core" not in sys.modules:
        return
    _EXIT_HOOK = True

    def clear() -> None:
        try:
            sys.modules["mlx.core"].clear_streams()
        except Exception:  # noqa: BLE001 - cleanup only
            pass

    atexit.register(clear)


_EXIT_HOOK = False
