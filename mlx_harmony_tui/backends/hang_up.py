"""Hanging up an HTTP turn's connections the moment it is cancelled (backends/remote.py).

Checking for a cancel between streamed chunks is not enough: none comes while the server holds the request
in its queue or prefills a long prompt, and the face waited for the turn to end (esc, quit) all that time.
"""

from __future__ import annotations

import socket
import threading
from typing import Any


class HangUp:
    """Shuts down the sockets of an httpx client's connections (see ``trace``) once ``cancel`` is set, until
    ``done`` is. ``shutdown`` wakes the read blocked on the socket (a ``close`` from another thread does
    not) and tells the server, which then stops the turn."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel
        self.done = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._watch, name="remote-hang-up", daemon=True).start()

    def trace(self, request: Any) -> None:
        """An httpx request hook: the socket of each new connection, from httpcore's trace extension."""
        request.extensions["trace"] = self._on_trace

    def _on_trace(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            sock = info["return_value"].get_extra_info("socket")
            if sock is not None:
                self._sockets.append(sock)
                if self.cancel.is_set():
                    self._shut()

    def _watch(self) -> None:
        while not self.done.is_set():
            if self.cancel.wait(0.1):
                self._shut()
                return

    def _shut(self) -> None:
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
