"""Run the app with a watchdog that logs the UI thread's Python stack whenever its event loop stalls.

    python scripts/stall_watch.py LOG [app arguments...]

A helper thread asks the loop to stamp the time every 10 ms; when no stamp has landed for 150 ms it
appends the main thread's stack to LOG (again every further 150 ms of the same stall), so a frozen key can
be traced to the code that held the loop. Used by `scripts/ui_latency.py --stall-log`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
import traceback

from mlx_harmony_tui.tui.app import HarmonyApp
from mlx_harmony_tui.tui.turn_view import TurnView

THRESHOLD_S = 0.15


def watch(loop: asyncio.AbstractEventLoop, log_path: str, main_id: int) -> None:
    last = [time.monotonic()]

    def stamp() -> None:
        last[0] = time.monotonic()

    reported = 0.0
    with open(log_path, "a", encoding="utf-8") as log:
        while not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stamp)
            except RuntimeError:
                return
            time.sleep(0.01)
            stalled = time.monotonic() - last[0]
            if stalled < THRESHOLD_S:
                reported = 0.0
                continue
            if stalled - reported >= THRESHOLD_S:
                reported = stalled
                frame = sys._current_frames().get(main_id)
                stack = "".join(traceback.format_stack(frame, limit=25)) if frame else "(no frame)\n"
                log.write(f"--- loop stalled {stalled * 1000:.0f} ms at {time.time():.3f}\n{stack}")
                log.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log", help="file the stalls are appended to")
    ap.add_argument("app_args", nargs=argparse.REMAINDER, help="arguments of mlx-harmony-tui")
    args = ap.parse_args()
    log_path = args.log
    sys.argv[1:] = args.app_args
    original = HarmonyApp.on_mount

    def on_mount(self: HarmonyApp) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=watch, args=(loop, log_path, threading.get_ident()), daemon=True).start()
        original(self)

    HarmonyApp.on_mount = on_mount  # type: ignore[method-assign]
    flush = TurnView.flush_text

    async def timed_flush(self: TurnView) -> None:
        """Text writes hold a batch_update, during which no frame reaches the terminal: log the long ones."""
        t0 = time.monotonic()
        await flush(self)
        took = time.monotonic() - t0
        if took >= 0.1:
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"--- text write (frames held) {took * 1000:.0f} ms at {time.time():.3f}\n")

    TurnView.flush_text = timed_flush  # type: ignore[method-assign]
    begin, end = HarmonyApp._begin_batch, HarmonyApp._end_batch
    opened: list[tuple[float, str]] = []

    def begin_batch(self: HarmonyApp) -> None:
        if not self._batch_count:
            opened[:] = [(time.monotonic(), "".join(traceback.format_stack(limit=12)))]
        begin(self)

    def end_batch(self: HarmonyApp) -> None:
        end(self)
        if not self._batch_count and opened:
            t0, stack = opened.pop()
            took = time.monotonic() - t0
            if took >= 0.1:
                with open(log_path, "a", encoding="utf-8") as log:
                    log.write(f"--- batch_update held frames {took * 1000:.0f} ms at {time.time():.3f}, opened at\n{stack}")

    HarmonyApp._begin_batch = begin_batch  # type: ignore[method-assign]
    HarmonyApp._end_batch = end_batch  # type: ignore[method-assign]
    from mlx_harmony_tui.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
