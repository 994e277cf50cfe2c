"""Loading a model into the running app: on a Textual thread worker, with a progress bar; a failure keeps the
previous model, and with none, the welcome panel and the next send say why and how to pick one. Quitting makes
the loader's progress callback raise, so a load stops at its next layer (nothing left inside MLX at exit).
A mixin of HarmonyApp (tui/app.py), which owns the controller, the loader and the screen."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

from textual import work
from textual.widgets import ProgressBar, Static

from mlx_harmony_tui.backends.base import Backend
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.tui.widgets.metrics_bar import MetricsBar

if TYPE_CHECKING:
    from mlx_harmony_tui.tui.app import HarmonyApp

    _Base = HarmonyApp
else:
    _Base = object


PICK_MODEL = "Pick a model with ctrl+o, or start with --model PATH (a folder with config.json and *.safetensors)."


class ModelLoading(_Base):
    def pick_hint(self) -> str:
        """What to do without a model: pick one, or with a server, check it and reconnect."""
        if self.remote:
            return (f"Is the server at {self.remote} running? ctrl+o connects again; without --remote (and the "
                    "config's [remote] endpoint) a local model runs here.")
        return PICK_MODEL

    def start_loading(self, model: str) -> None:
        self.loading = True  # at once: a message sent before the thread starts is told to wait, not to pick
        self.load_error = None
        self.load_model(model)

    @work(thread=True, exclusive=True, group="load")
    def load_model(self, model: str) -> None:
        """Slow (reads GBs): runs on a thread; a failure keeps the previous model."""
        self.loading = True
        self.call_from_thread(self._show_progress, 0.0, f"loading {model}")

        def progress(frac: float, msg: str) -> None:
            if self._quitting:  # stop at the next layer: nothing may be left inside MLX at exit
                from mlx_harmony_tui.backends.local import LoadCancelled

                raise LoadCancelled("the app is quitting")
            self.call_from_thread(self._show_progress, frac, msg)

        try:
            backend = self.loader(model, progress)
        except UserError as e:
            self.call_from_thread(self._load_failed, str(e))
            return
        except Exception as e:  # noqa: BLE001 - show it, keep the previous model
            self.call_from_thread(self._load_failed, f"{type(e).__name__}: {e}")
            return
        if self._quitting:
            backend.close()
            return
        self.call_from_thread(self._load_done, backend)

    def _show_progress(self, frac: float, msg: str) -> None:
        screen = self.screen_chat
        screen.query_one("#load-bar").remove_class("hidden")
        screen.query_one("#load-text", Static).update(f"{msg} ")
        screen.query_one("#load-progress", ProgressBar).update(progress=max(0.0, min(1.0, frac)))
        if not self.generating:  # a reply streaming meanwhile keeps its own status
            screen.query_one(MetricsBar).set_status("loading")

    def _load_failed(self, message: str) -> None:
        self.loading = False
        if self.backend is None:
            self.load_error = message
            for w in self.conversation.query("#welcome").results(Static):  # the welcome panel says so too
                w.update(f"The model could not be loaded: {message}\n{self.pick_hint()}\n\n{self.screen_chat.welcome}")
        self.screen_chat.query_one("#load-bar").add_class("hidden")
        self.notify(message, title="Model not loaded", severity="error", timeout=10)
        self.screen_chat.query_one(MetricsBar).set_status("ready" if self.backend else "no model")

    def _load_done(self, backend: Backend) -> None:
        self.loading = False
        self.screen_chat.query_one("#load-bar").add_class("hidden")
        if self.generating:
            # Closing the previous model waits for its running turn: on the UI thread that froze the app
            # until the reply ended. The new model takes over when it does (HarmonyApp.pump).
            if self.next_backend is not None:  # picked twice during one reply: the newest wins
                self.next_backend.close()
            self.next_backend = backend
            self.screen_chat.query_one(MetricsBar).set_status("generating")
            self.notify(f"Model ready: {backend.model_name}; it takes over when this reply ends")
            return
        self.switch_backend(backend)

    def switch_backend(self, backend: Backend) -> None:
        for w in self.conversation.query("#welcome").results(Static):  # no longer "could not be loaded"
            w.update(self.screen_chat.welcome)
        if self.chat.use_backend(backend):
            gc.unfreeze()  # the previous model's objects may be in the frozen generation: let them go
            gc.collect()
        # Python's full collections walked every object of the app and the model: 30-60 ms pauses of the
        # UI, several per streamed reply. What exists once the model is loaded lives for the session;
        # frozen, those pauses measured 7-15 ms (headless, tiny model).
        gc.freeze()
        self.screen_chat.query_one(MetricsBar).set_status("ready")
        self._backend_ready()
        self.notify(f"Model ready: {backend.model_name}")
