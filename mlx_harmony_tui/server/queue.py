"""One generation at a time on the model, served first come first served.

A slot is taken in the event loop and released by whoever finishes the generation (the pump thread, via the
loop), so a client that disconnects mid-turn never lets a second generation overlap the first on the model.
A client that gives up while still waiting simply leaves the line.
"""

from __future__ import annotations

import asyncio
from collections import deque


class QueueFull(Exception):
    """More clients waiting than the server accepts."""


class GenerationQueue:
    def __init__(self, max_waiting: int = 256) -> None:
        self.max_waiting = max_waiting
        self._busy = False
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.served = 0

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    @property
    def busy(self) -> bool:
        return self._busy

    async def acquire(self) -> None:
        """Wait for the model. Raises QueueFull at once when the line is too long."""
        if not self._busy and not self._waiters:
            self._busy = True
            return
        if self.waiting >= self.max_waiting:
            raise QueueFull(f"{self.waiting} requests are already waiting")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us just as we gave up: pass it on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        """Hand the slot to the next waiter in arrival order (must run on the loop's thread)."""
        self.served += 1
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._busy = False
