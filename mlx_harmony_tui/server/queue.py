"""``slots`` generations at a time on the model (1, or the backend's continuous-batching concurrency), the
rest served first come first served.

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
    def __init__(self, max_waiting: int = 256, slots: int = 1) -> None:
        self.max_waiting = max_waiting
        self.slots = max(1, slots)
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.served = 0

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    @property
    def busy(self) -> bool:
        return self.running > 0

    def join(self) -> asyncio.Future[None]:
        """Take a place in line now (raises QueueFull at once when the line is too long), so that a streaming
        request can still be answered 429 before its 200 headers go out; await the future with ``wait``."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.running < self.slots and not self._waiters:
            self.running += 1
            fut.set_result(None)
            return fut
        if self.waiting >= self.max_waiting:
            raise QueueFull(f"{self.waiting} requests are already waiting")
        self._waiters.append(fut)
        return fut

    async def wait(self, fut: asyncio.Future[None]) -> None:
        """Wait for the place taken by ``join``; a caller that gives up leaves the line (or passes the slot on)."""
        try:
            await fut
        except asyncio.CancelledError:
            self.leave(fut)
            raise

    def leave(self, fut: asyncio.Future[None]) -> None:
        """Give up a place taken by ``join`` and not used: pass the slot on if it was ours already."""
        if fut.done() and not fut.cancelled():
            self.release()
            return
        fut.cancel()
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass

    async def acquire(self) -> None:
        """Wait for the model. Raises QueueFull at once when the line is too long."""
        await self.wait(self.join())

    def release(self) -> None:
        """Hand the slot to the next waiter in arrival order (must run on the loop's thread)."""
        self.served += 1
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1
