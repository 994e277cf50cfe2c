"""One conversation without a UI: backend, settings, history, the session record and its prompt cache.

Every face that holds a conversation (the TUI, the line chat, ``generate``) drives one ChatController: it sends
intents (a user message, regenerate, take back the last exchange, new settings, open a session, answer a tool
confirmation, stop) and draws the events of the running turn, which the controller hands on after recording
them. Nothing here blocks on or knows about a UI: the TUI drains events from a timer (``drain``), the line
faces iterate them (``events``).

Sessions are created with the first message (opening a face leaves no empty files); session writes never
end the chat: a failed write is reported through ``notify`` and the conversation goes on.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

from mlx_harmony_tui.backends.base import Backend, TurnHandle, TurnRequest, leaves_defaults_to_server
from mlx_harmony_tui.chat import events as ev
from mlx_harmony_tui.chat.attachments import Attachment, read_attachment, with_attachments
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.controller import prompt_cache
from mlx_harmony_tui.controller.session_settings import (
    session_settings,
    settings_from_session,
    settings_params,
)
from mlx_harmony_tui.errors import UserError
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.harmony.placeholders import expand_placeholders
from mlx_harmony_tui.sessions import branches
from mlx_harmony_tui.sessions.recorder import SessionRecorder, to_hmessages
from mlx_harmony_tui.sessions.schema import Session
from mlx_harmony_tui.sessions.store import SessionStore

Notify = Callable[[str, str], None]  # (message, severity: "information" | "warning" | "error")


def _ignore(message: str, severity: str) -> None:
    pass


class ChatController:
    """Owns one conversation. Not thread-safe: call it from one thread (the TUI's event loop, or main)."""

    def __init__(
        self,
        backend: Backend | None = None,
        settings: ChatSettings | None = None,
        *,
        model_ref: str = "",
        store: SessionStore | None = None,
        record: bool = True,
        keep_prompt_cache: bool = True,
        notify: Notify | None = None,
    ) -> None:
        """``record``: keep a session (off for one-shot ``generate``); ``keep_prompt_cache``: save the
        prompt cache when the session closes and restore it when it opens; ``notify``: how the face shows
        what the user should know but that does not stop the chat (session write failures, cache notes)."""
        self.backend = backend
        self.settings = settings or ChatSettings()
        self.model_ref = model_ref or (backend.model_name if backend is not None else "")
        self.history: list[HMessage] = []
        self.handle: TurnHandle | None = None
        self.session_id: str | None = None  # set once the session exists or is opened
        self.recorder: SessionRecorder | None = None
        self.title = ""  # title of the session the first message creates
        self.record = record
        self.keep_prompt_cache = keep_prompt_cache
        self.notify: Notify = notify if notify is not None else _ignore
        self._store = store
        self._settings_dirty = False
        self._cache_loaded_for: str | None = None
        self.attachments: list[Attachment] = []  # files that go with the next message

    @property
    def store(self) -> SessionStore:
        """The sessions folder, opened on first use (its ``problems`` are for the face to show)."""
        if self._store is None:
            self._store = SessionStore()
        return self._store

    @property
    def session(self) -> Session | None:
        return self.recorder.session if self.recorder is not None else None

    @property
    def generating(self) -> bool:
        return self.handle is not None

    # ---- backend and settings -------------------------------------------------------------------------
    def use_backend(self, backend: Backend) -> bool:
        """Switch to a (newly loaded) backend; the previous one is closed. True when one was replaced."""
        old, self.backend = self.backend, backend
        self.model_ref = backend.model_name
        replaced = old is not None and old is not backend
        if replaced:
            assert old is not None
            old.close()
        self.restore_cache()
        return replaced

    def set_settings(self, settings: ChatSettings) -> None:
        """Settings for the next turns; the session records them with the next message."""
        self.settings = settings
        self._settings_dirty = True

    def _params(self) -> dict[str, Any]:
        """The generation parameters to record: with a remote backend only those the user set (the server
        chose the others)."""
        return settings_params(self.settings, only_set=leaves_defaults_to_server(self.backend))

    # ---- turns ----------------------------------------------------------------------------------------
    @property
    def greeting(self) -> str:
        """The assistant's greeting of a new conversation (config ``greeting``, placeholders expanded), or ""."""
        if not self.settings.greeting or any(m.role != "system" for m in self.history):
            return ""
        return expand_placeholders(self.settings.greeting, self.settings.placeholders)

    def add_user(self, text: str) -> None:
        """Append the user's message to the conversation and its record (creating the session if needed).
        ``{name}`` placeholders are expanded here, once: the model and the record see the expanded text.
        A new conversation starts with the configured greeting, as the assistant's first message. Files
        attached since the last message (``attach``) follow the text."""
        greeting = self.greeting
        text = expand_placeholders(text, self.settings.placeholders)
        # a new session's title: the words typed (else the files' names), not the attached text
        title = " ".join(text.split())[:60] or ", ".join(a.name for a in self.attachments)[:60]
        if self.attachments:  # files attached since the last message go with this one (not expanded)
            text = with_attachments(text, self.attachments)
            self.attachments = []
        if greeting:
            self.history.append(HMessage(role="assistant", text=greeting, channel="final"))
        self.history.append(HMessage(role="user", text=text))
        if self.ensure_session(title):
            recorder = self.recorder
            assert recorder is not None
            recorder.set_params(self._params())
            if greeting:
                self._guard(recorder.add_assistant_text, greeting)
            self._guard(recorder.add_user, text)
            self._save_settings()
            self.history = to_hmessages(recorder.session)

    def start_turn(self) -> TurnHandle:
        """Generate the reply to the history as it is now (UserError when it cannot start)."""
        if self.backend is None:
            raise UserError("no model loaded yet")
        if self.handle is not None:
            raise UserError("still generating: stop the running turn first")
        request = TurnRequest(messages=list(self.history), settings=copy.deepcopy(self.settings))
        self.handle = self.backend.start_turn(request)
        return self.handle

    def send(self, text: str) -> TurnHandle:
        """``add_user`` + ``start_turn``."""
        if self.backend is None:
            raise UserError("no model loaded yet")
        if self.handle is not None:
            raise UserError("still generating: stop the running turn first")
        self.add_user(text)
        return self.start_turn()

    def attach(self, path: str) -> Attachment:
        """Read a text file for the next message (AttachmentError, a UserError, says why one cannot be)."""
        attachment = read_attachment(path)
        if any(a.path == attachment.path for a in self.attachments):
            raise UserError(f"{attachment.name} is already attached to the next message")
        self.attachments.append(attachment)
        return attachment

    def observe(self, event: ev.Event) -> None:
        """Record one event of the running turn and keep the history in step with it."""
        if self.recorder is not None:
            self._guard(self.recorder.on_event, event)
        if isinstance(event, ev.MessageDone):
            self.history.append(HMessage(role="assistant", text=event.text, channel=event.channel,
                                         recipient=event.recipient, content_type=event.content_type))
        elif isinstance(event, ev.ToolResult):
            self.history.append(HMessage(role="tool", text=event.error or event.output, author=event.recipient,
                                         channel="commentary", recipient="assistant"))

    def drain(self) -> tuple[list[ev.Event], bool]:
        """Non-blocking: the events queued since the last call (recorded) and whether the turn has ended.
        The face calls ``end_turn`` once it has drawn the last batch."""
        if self.handle is None:
            return [], False
        events, done = self.handle.drain()
        for e in events:
            self.observe(e)
        return events, done

    def events(self) -> Iterator[ev.Event]:
        """Blocking: the running turn's events, each recorded; the turn ends when they do. After a
        KeyboardInterrupt, ``cancel()`` and iterate again to let the turn end with its record complete."""
        handle = self.handle
        if handle is None:
            return
        for e in handle.events():
            self.observe(e)
            yield e
        if self.handle is handle:
            self.end_turn()

    def end_turn(self) -> None:
        """The turn's events are all applied: save the record and take the history from it."""
        self.handle = None
        if self.recorder is not None:
            self._guard(self.recorder.finish)
            self.history = to_hmessages(self.recorder.session)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def confirmation(self, event: ev.ToolConfirmation) -> Callable[[bool | None], None]:
        """The answer to a tool confirmation, bound to the turn that asked (a late answer reaches no other)."""
        handle = self.handle

        def answer(allowed: bool | None) -> None:
            if handle is not None:
                handle.confirm(event.call_id, bool(allowed))

        return answer

    def drop_last_exchange(self, keep_user: bool) -> str | None:
        """Take back the last reply (and the user message unless ``keep_user``) from the conversation; the
        user message's text, or None when there is none. In a session what is taken back stays as a branch
        (``fork_at``). Regenerate = keep_user + ``start_turn``; edit = not keep_user + ``send``."""
        session = self.session
        if session is not None:
            users = [k for k, m in enumerate(session.messages) if m.role == "user"]
            if not users:
                return None
            text = session.messages[users[-1]].content
            self.fork_at(users[-1] + (1 if keep_user else 0))
            return text
        i = next((k for k in range(len(self.history) - 1, -1, -1) if self.history[k].role == "user"), None)
        if i is None:
            return None
        text = self.history[i].text
        del self.history[i + (1 if keep_user else 0):]
        return text

    # ---- branches (sessions/branches.py): positions are indexes into session.messages -------------------
    def fork_at(self, position: int) -> str | None:
        """Move the conversation from ``position`` on into a branch (kept, never deleted); the text of the
        message there when it is the user's. Editing any user message = fork_at(it) + ``send(new text)``;
        regenerating any reply = fork_at(its first message) + ``start_turn``."""
        session = self.session
        if session is None or self.generating or not 0 <= position <= len(session.messages):
            return None
        there = session.messages[position] if position < len(session.messages) else None
        branches.fork(session, position)
        self._branch_changed()
        return there.content if there is not None and there.role == "user" else None

    def branch_points(self) -> dict[int, tuple[int, int]]:
        """Position -> (active branch number, branches) for each place with more than one version."""
        return branches.branch_points(self.session) if self.session is not None else {}

    def flip(self, position: int | None = None, step: int = 1) -> bool:
        """Show the next (or, with step -1, the previous) version at ``position`` (default: the last place
        with more than one); the model sees the active branch from the next turn on."""
        session = self.session
        if session is None or self.generating:
            return False
        if position is None:
            points = branches.branch_points(session)
            if not points:
                return False
            position = max(points)
        if not branches.flip(session, position, step):
            return False
        self._branch_changed()
        return True

    def _branch_changed(self) -> None:
        recorder = self.recorder
        assert recorder is not None
        self._guard(recorder.save)
        self.recorder = self._new_recorder(recorder.session)
        self.history = to_hmessages(recorder.session)

    # ---- sessions -------------------------------------------------------------------------------------
    def ensure_session(self, title: str = "") -> bool:
        """Create the session (with the first message, so opening a face leaves no empty files); ``title``
        when the user named none (/save)."""
        if self.recorder is not None:
            return True
        if not self.record:
            return False
        if not self.settings.conversation_date:  # fixed per session, so the cached prefix survives midnight
            self.settings.conversation_date = time.strftime("%Y-%m-%d")
        model = self.backend.model_name if self.backend is not None else self.model_ref
        session = self._guard(self.store.create, self.title or title, model, self._params(),
                              session_settings(self.settings))
        if session is None:
            return False
        self._guard(self.store.lock, session.id)
        self.session_id = session.id
        self.recorder = self._new_recorder(session)
        self._settings_dirty = False
        return True

    def open_session(self, id_or_prefix: str) -> Session:
        """Continue a saved session (UserError when it cannot be opened; the open one then stays)."""
        store = self.store
        sid = store.resolve(id_or_prefix)
        if sid != self.session_id:
            store.lock(sid)
        try:
            session = store.load(sid)
        except UserError:
            if sid != self.session_id:
                store.unlock(sid)
            raise
        if sid != self.session_id:
            self.close_session()
        self.session_id = sid
        self.settings = settings_from_session(self.settings, session)
        self.recorder = self._new_recorder(session)
        self.history = to_hmessages(session)
        self.restore_cache()
        return session

    def new_session(self) -> None:
        """An empty conversation; the open session is closed (its next file comes with the next message)."""
        self.history = []
        self.close_session()

    def close_session(self) -> None:
        if self.session_id:
            self.save_cache()
            if self._store is not None:
                self._store.unlock(self.session_id)
        self.recorder = None
        self.session_id = None
        self._cache_loaded_for = None

    def close(self) -> None:
        """However the face ends: stop the turn, close the session (lock released, cache saved), the backend."""
        self.cancel()
        self.close_session()
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()

    # ---- prompt cache ---------------------------------------------------------------------------------
    def restore_cache(self) -> None:
        sid = self.session_id
        if not sid or self.backend is None or not self.keep_prompt_cache or self._cache_loaded_for == sid:
            return
        try:
            loaded = prompt_cache.restore(self.backend, sid)
        except prompt_cache.CACHE_ERRORS as e:
            self._cache_loaded_for = sid
            self.notify(f"prompt cache not restored: {e}", "warning")
            return
        if loaded is not None:
            self._cache_loaded_for = sid
            if loaded:
                self.notify("Prompt cache restored", "information")

    def save_cache(self) -> None:
        """Save the open session's prompt cache, so resuming it skips the prefill (not while generating)."""
        if not self.session_id or self.backend is None or not self.keep_prompt_cache or self.generating:
            return
        try:
            prompt_cache.save(self.backend, self.session_id)
        except prompt_cache.CACHE_ERRORS as e:
            self.notify(f"prompt cache not saved: {e}", "warning")

    # ---- helpers --------------------------------------------------------------------------------------
    def _new_recorder(self, session: Session) -> SessionRecorder:
        return SessionRecorder(self.store, session, params=self._params())

    def _save_settings(self) -> None:
        if self.recorder is not None and self._settings_dirty:
            self.recorder.session.settings.update(session_settings(self.settings))
            self._settings_dirty = False
            self._guard(self.recorder.save)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Session writes must never kill the chat: report the problem and carry on."""
        try:
            return fn(*args)
        except UserError as e:
            self.notify(str(e), "error")
        except OSError as e:
            self.notify(f"could not save the session: {e}", "error")
        return None
