"""The in-process backend: the MLX model and engine, with every turn run on one worker thread.

Faces never call the model directly; they start a turn and read its events from the handle, so the UI
never waits for the model and the model never waits for the UI. One long-lived worker per loaded model (not
a thread per turn): MLX keeps compiled graphs per thread, so the compiled decode step is traced once, at
load, instead of on every turn, and its cache entries die with the thread that made them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlx_harmony_tui.backends.base import ProgressCallback, TurnHandle, TurnRequest
from mlx_harmony_tui.backends.mlx_thread import MlxThread
from mlx_harmony_tui.chat.events import ToolConfirmation, TurnFailed
from mlx_harmony_tui.chat.turn import TurnContext, run_turn
from mlx_harmony_tui.errors import UserError

BUILTIN_NAMES = ("demo", "tiny")


def shard_for_group() -> Callable[[Any], Any] | None:
    """The loader's ``shard`` hook when this process is one rank of a distributed run, else None."""
    from mlx_harmony_tui.engine import distributed

    group = distributed.group()
    if group is None:
        return None
    from mlx_harmony_tui.model.shard import shard_model

    return lambda model: shard_model(model, group)


def resolve_model_path(model: str | Path | None, models_dirs: Any = ()) -> Path:
    """The folder a model name stands for (catalog.resolve: built-ins, paths, models_dirs, the hub cache)."""
    from mlx_harmony_tui.catalog.resolve import resolve

    return resolve(model, models_dirs).path


def _configured_context(app_config: Any) -> int | None:
    """context_limit from the config's profile or file, the context the memory check plans for."""
    if app_config is None:
        return None
    profile, base = app_config.settings_layers()
    value = profile.get("context_limit") or base.get("context_limit")
    return int(value) if isinstance(value, int) else None


class LoadCancelled(UserError):
    """The caller stopped waiting for the model (the app quit while it loaded)."""


class LocalBackend:
    """Owns one loaded model and the worker thread that runs its turns, one at a time, in order."""

    def __init__(
        self, model: Any, config: Any, path: Path, name: str, tools: Any | None = None, app_config: Any | None = None,
        *, thread: MlxThread | None = None,
    ) -> None:
        """``thread``: the MlxThread the model was loaded on (``load``); one is started otherwise."""
        from mlx_harmony_tui.engine.generator import Engine
        from mlx_harmony_tui.harmony.vocab import load_encoding

        self.path = path
        self._name = name
        self.config = config
        self.app_config = app_config  # config.AppConfig: tool settings and [[tools.functions]]
        self._thread = thread or MlxThread()
        self._worker = self._thread.thread
        kv = {k: getattr(app_config, k, None) for k in ("kv_bits", "kv_mode", "prefill_step")}  # its stream: that thread's
        from mlx_harmony_tui.engine import distributed

        group = distributed.group()

        def make_engine() -> Engine:
            if group is not None:  # --distributed: this rank drives; the others follow (faces/distributed.py)
                return distributed.DistributedEngine(model, config, group, model_id=str(path), **kv)
            return Engine(model, config, model_id=str(path), **kv)

        self.engine = self._thread.call(make_engine)
        self.encoding = load_encoding(str(path))
        self.tools = tools
        from mlx_harmony_tui.tools import RegistryCache

        self._registries = RegistryCache(app_config)
        self._handles: weakref.WeakSet[TurnHandle] = weakref.WeakSet()  # turns not yet finished
        self._thread.interrupt = self._cancel_turns
        self.trace: Any | None = None  # chat.trace.TurnTrace (--debug-file / --metrics-log), set by the face
        self._thread.submit(self.engine.warm_up)  # trace the compiled step on the thread that will use it
        self.scheduler: Any | None = None  # engine/batch.py's BatchScheduler once enable_batching ran (serve)

    def enable_batching(self, max_concurrency: int, kv_budget: int | None = None) -> None:
        """Continuous batching (``serve``): up to ``max_concurrency`` turns decode together, each turn's
        pipeline on its own thread, the model's work on the model's thread (engine/batch.py). ``kv_budget``:
        bytes of KV cache the requests' slots may hold together."""
        from mlx_harmony_tui.engine.batch import BatchScheduler

        if max_concurrency > 1 and not getattr(self.engine, "stops_by_token", False):
            self.scheduler = BatchScheduler(self.engine, self._thread.submit, max_concurrency, kv_budget)
            self._thread.submit(self.scheduler.warm_up)  # before the first request, on the model's thread

    def prime(self, settings: Any) -> None:
        """Prefill the start every conversation with ``settings`` shares (the system and developer messages,
        ~200 tokens) into the prompt cache now, on the model's thread, while the user types: the first
        message then prefills only itself (docs/benchmarks.md, "Cold start"). Best effort: a failure here
        only means the first turn does the work."""
        from mlx_harmony_tui.chat.turn import turn_render_options
        from mlx_harmony_tui.engine.generator import GenerationOptions
        from mlx_harmony_tui.harmony.render import render_prompt

        if getattr(self.engine, "stops_by_token", False):
            return  # a distributed engine: every generation is a round all ranks take part in

        def job() -> None:
            try:
                tools = self._tools_for(TurnRequest([], settings))
                ids = render_prompt([], turn_render_options(settings, tools), self.encoding)
                for _ in self.engine.generate(ids, GenerationOptions(max_tokens=0)):
                    pass
            except Exception:  # noqa: BLE001 - an optimization only
                pass

        self._thread.submit(job)

    @property
    def max_concurrency(self) -> int:
        """How many turns may run at once (1 without batching: the server's queue hands out that many)."""
        return self.scheduler.max_concurrency if self.scheduler is not None else 1

    @classmethod
    def load(
        cls,
        model: str | Path | None = "demo",
        progress: ProgressCallback | None = None,
        tools: Any | None = None,
        app_config: Any | None = None,
        cancel: threading.Event | None = None,
        force: bool = False,
        context: int | None = None,
    ) -> LocalBackend:
        """Resolve ``model``, verify its files, check it fits in memory (unless ``force``), load it on a new
        MlxThread (the caller only waits). Setting ``cancel`` stops the load at the next layer with
        LoadCancelled, and the thread is ended: nothing is left inside MLX. ``context``: the context length
        to plan memory for (default: the config's context_limit, else the model's own)."""

        def report(frac: float, msg: str) -> None:
            if cancel is not None and cancel.is_set():
                raise LoadCancelled("model loading cancelled")
            if progress:
                progress(frac, msg)

        def load_here() -> LocalBackend:
            from mlx_harmony_tui.catalog.fit import check_fit
            from mlx_harmony_tui.catalog.resolve import resolve
            from mlx_harmony_tui.catalog.verify import verify
            from mlx_harmony_tui.engine.memory import set_wired_limit_for
            from mlx_harmony_tui.harmony.vocab import ensure_vocabulary
            from mlx_harmony_tui.model import load_model

            found = resolve(model, getattr(app_config, "models_dirs", ()) or ())
            path = found.path
            report(0.0, f"checking {found.name}")
            summary = verify(path, found.name, found.fix)  # every shard there and whole, before any tensor is read
            # A clear sentence with numbers instead of a swap storm or a crash:
            from mlx_harmony_tui.engine import distributed

            planned = context if context is not None else _configured_context(app_config)
            group = distributed.group()
            ranks = group.size() if group is not None else 1  # each rank holds its share
            kv_bits, kv_mode = getattr(app_config, "kv_bits", None), getattr(app_config, "kv_mode", None)
            need = check_fit(found.name, summary, planned, force, kv_bits, ranks, kv_mode)
            report(0.0, f"loading {path}")
            ensure_vocabulary(path)
            loaded, config = load_model(path, progress=report, shard=shard_for_group())
            set_wired_limit_for(need.weights)  # macOS: keep the weights wired; a no-op elsewhere
            report(1.0, "ready")
            return cls(loaded, config, path, found.name, tools=tools, app_config=app_config, thread=thread)

        thread = MlxThread()
        try:
            return thread.call(load_here)
        except BaseException:
            thread.stop()
            raise

    @property
    def mcp(self) -> Any:
        """The MCP servers of the config (tools/mcp.McpHub: states, on_change), for faces to report on."""
        return self._registries.mcp

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def context_limit(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 0) or 131072)

    def start_turn(self, request: TurnRequest, *, run_tools: bool = True) -> TurnHandle:
        """Queue a turn on the model's worker. With run_tools=False (the server), a tool call ends the turn."""
        handle = TurnHandle()
        self._handles.add(handle)

        def confirm(req: ToolConfirmation) -> bool:
            return handle.wait_confirmation(req.call_id)

        from mlx_harmony_tui.engine.batch import BatchedEngine

        ctx = TurnContext(
            engine=BatchedEngine(self.scheduler) if self.scheduler is not None else self.engine,  # type: ignore[arg-type]
            encoding=self.encoding,
            context_limit=self.context_limit,
            tools=self._tools_for(request) if run_tools else None,
            confirm=confirm,
            cancel=handle.cancel_event,
            trace=self.trace,
            live=handle.put,  # prefill progress while it runs, not after the first token
        )

        def work() -> None:
            try:
                for event in run_turn(ctx, request.messages, request.settings):
                    handle.put(event)
                    if ctx.trace is not None:
                        ctx.trace.observe(event)
            except Exception as e:  # noqa: BLE001 - a worker must always close its handle
                handle.put(TurnFailed(f"{type(e).__name__}: {e}"))
            finally:
                handle.close()

        if self.scheduler is not None:  # the turn's own thread; its model work joins the batch
            threading.Thread(target=work, name="mlx-harmony-turn", daemon=True).start()
        else:
            self._thread.submit(work)
        return handle

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the model's worker, after the turns queued before it (the server's raw completions
        use the engine directly)."""
        self._thread.submit(job)

    def _tools_for(self, request: TurnRequest) -> Any | None:
        """One registry per tool selection, kept across turns (a persistent python kernel lives on)."""
        if self.tools is not None:
            return self.tools
        return self._registries.get(request.settings)

    def count_tokens(self, request: TurnRequest) -> int | None:
        from mlx_harmony_tui.chat.turn import render_options_from_settings
        from mlx_harmony_tui.harmony.render import render_prompt

        return len(render_prompt(request.messages, render_options_from_settings(request.settings), self.encoding))

    def save_cache(self, path: str | Path) -> None:
        """On the model's thread, after the turns queued before it."""
        self._thread.call(lambda: self.engine.save_cache(path))

    def load_cache(self, path: str | Path) -> bool:
        return bool(self._thread.call(lambda: self.engine.load_cache(path)))

    def _cancel_turns(self) -> None:
        for handle in list(self._handles):
            handle.cancel()

    def close(self) -> None:
        """Finish queued turns, stop the worker, and stop tool processes (e.g. a persistent kernel)."""
        self._thread.stop()
        self._registries.close()
        close_engine = getattr(self.engine, "close", None)
        if close_engine is not None:  # a distributed engine releases the other ranks
            close_engine()
