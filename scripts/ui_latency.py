"""Measure UI responsiveness while the model streams, in a real terminal (tmux):

- p95 key-to-screen latency: from `tmux send-keys` of one character until `capture-pane` shows it in the
  message box, repeated while a reply is streaming;
- decode tok/s of the same turn with the app on screen (recorded in the session by the app) versus
  headless (the LocalBackend alone, same process setup, same settings).

    python scripts/ui_latency.py [--model tiny] [--tokens 1200] [--rounds 2]

Needs tmux. Uses a temporary XDG home so nothing of yours is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def headless_tps(model: str, tokens: int, env: dict[str, str]) -> float:
    code = f"""
import sys; sys.path.insert(0, {str(ROOT)!r})
from mlx_harmony_tui.backends.local import LocalBackend
from mlx_harmony_tui.backends.base import TurnRequest
from mlx_harmony_tui.chat.events import TurnFinished
from mlx_harmony_tui.chat.settings import ChatSettings
from mlx_harmony_tui.harmony.messages import HMessage
b = LocalBackend.load({model!r})
s = ChatSettings(max_tokens={tokens}, seed=7)
for run in range(2):  # the first is a warm-up
    h = b.start_turn(TurnRequest([HMessage("user", "Tell me a long story about a lighthouse.")], s))
    for e in h.events(timeout=600):
        if isinstance(e, TurnFinished):
            tps = e.metrics.decode_tps
print(tps)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    return float(out.stdout.strip().splitlines()[-1])


class Term:
    def __init__(self, env: dict[str, str]) -> None:
        self.env, self.sock = env, f"uilat-{os.getpid()}"

    def tmux(self, *a: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *a], capture_output=True, text=True, env=self.env).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "app")

    def wait(self, text: str, timeout: float = 120) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.screen()
            if text in s:
                return s
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {text!r}:\n{self.screen()}")


def input_chars(screen: str, ch: str) -> int:
    """Occurrences of ch in the message box (the bordered rows above the footer)."""
    rows = [r for r in screen.splitlines() if r.startswith("▊") and r.rstrip().endswith("▎")]
    return sum(r.count(ch) for r in rows)


def app_round(model: str, tokens: int, env: dict[str, str], cfg: Path, data: Path,
              keys: bool) -> tuple[float, list[float]]:
    """One turn in the app; with keys, type while it streams (that round's tok/s is not used: the
    capture-pane polling itself costs CPU on a small machine)."""
    t = Term(env)
    cmd = f"{sys.executable} -m mlx_harmony_tui --model {model} --config {cfg}"
    t.tmux("new-session", "-d", "-s", "app", "-x", "120", "-y", "40", "-c", str(ROOT), cmd)
    lat: list[float] = []
    try:
        t.wait("Model ready")
        t.tmux("send-keys", "-t", "app", "-l", "Tell me a long story about a lighthouse.")
        t.tmux("send-keys", "-t", "app", "Enter")
        t.wait("generating", 30)
        time.sleep(0.5)
        n = input_chars(t.screen(), "§")
        while not keys and "generating" in t.screen():
            time.sleep(0.5)
        while keys and "generating" in t.screen():
            t0 = time.perf_counter()
            t.tmux("send-keys", "-t", "app", "-l", "§")
            while True:
                s = t.screen()
                if input_chars(s, "§") > n:
                    lat.append(time.perf_counter() - t0)
                    n += 1
                    break
                if time.perf_counter() - t0 > 5:
                    raise SystemExit("a key did not appear within 5 s")
            time.sleep(0.1)
        time.sleep(0.5)
        t.tmux("send-keys", "-t", "app", "C-q")
        time.sleep(1.5)
    finally:
        t.tmux("kill-server")
    newest = max((data / "sessions").glob("*.json"), key=lambda p: p.stat().st_mtime)
    msgs = json.loads(newest.read_text())["messages"]
    tps = [m["metrics"]["decode_tps"] for m in msgs if (m.get("metrics") or {}).get("decode_tps")]
    return float(tps[-1]), lat


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--tokens", type=int, default=1200)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not shutil.which("tmux"):
        print("tmux is needed")
        return 1
    home = Path(tempfile.mkdtemp(prefix="uilat-"))
    env = dict(os.environ, TERM="xterm-256color", PYTHONPATH=str(ROOT), TMUX_TMPDIR=str(home))
    env.setdefault("TIKTOKEN_ENCODINGS_BASE", str(ROOT / "tests" / ".cache" / "vocab"))
    for v in ("CONFIG", "DATA", "CACHE", "STATE"):
        env[f"XDG_{v}_HOME"] = str(home / v.lower())
    env.pop("TMUX", None)
    cfg = home / "config.toml"
    cfg.write_text(f"[sampling]\nmax_tokens = {args.tokens}\nseed = 7\n")
    data = home / "data" / "mlx-harmony-tui"
    heads, apps, lats = [], [], []
    for _ in range(args.rounds):  # interleaved, so load drifts on a shared machine hit both alike
        heads.append(headless_tps(args.model, args.tokens, env))
        apps.append(app_round(args.model, args.tokens, env, cfg, data, keys=False)[0])
        lats.extend(app_round(args.model, args.tokens, env, cfg, data, keys=True)[1])
    h, a = statistics.median(heads), statistics.median(apps)
    lats.sort()
    p95 = lats[min(len(lats) - 1, int(0.95 * len(lats)))] if lats else float("nan")
    print(f"model={args.model} max_tokens={args.tokens} rounds={args.rounds}")
    print(f"decode tok/s headless:  {h:.1f}  (runs {', '.join(f'{x:.1f}' for x in heads)})")
    print(f"decode tok/s app (tmux): {a:.1f}  (runs {', '.join(f'{x:.1f}' for x in apps)})")
    print(f"app / headless:         {a / h * 100:.1f}%  (target >= 97%)")
    print(f"key-to-screen while streaming: p50 {statistics.median(lats) * 1e3:.0f} ms, "
          f"p95 {p95 * 1e3:.0f} ms, max {lats[-1] * 1e3:.0f} ms over {len(lats)} keys "
          "(includes tmux capture-pane polling)")
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
