"""Measure UI responsiveness while the model streams, in a real terminal (tmux):

- p95 key-to-screen latency while a reply streams, two ways: in tmux (from `tmux send-keys` of one
  character until `capture-pane`, polled every 5 ms, shows it in the message box: includes tmux and the
  polling) and in-process (the app's LatencyProbe: from the key event to the next frame written);
- decode tok/s of the same turn with the app on screen (recorded in the session by the app) versus
  headless (the LocalBackend alone, same process setup, same settings).

    python scripts/ui_latency.py [--model tiny] [--tokens 1200] [--rounds 2] [--root CHECKOUT]

--root runs the app and the headless baseline from another checkout (e.g. the previous commit, extracted
with `git archive`), so two versions can be compared back to back on the same machine.

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
PROMPT = "Tell me a long story about a lighthouse."
QUEUED: list[float] = []  # the probe's key event -> key handled part, over all key rounds
STALL_LOG = ""  # --stall-log: key rounds run under scripts/stall_watch.py, which logs UI-loop stalls there
POLL_S = 0.005  # tmux polling period while waiting for a key (each capture-pane costs CPU too)


def headless_tps(model: str, env: dict[str, str], cfg: Path, root: Path) -> float:
    """The same turn on the LocalBackend alone, with the settings the app builds from the same config
    (model defaults included), warmed up by one turn like the app round."""
    code = f"""
import argparse, sys, time; sys.path.insert(0, {str(root)!r})
from mlx_harmony_tui.backends.local import LocalBackend
from mlx_harmony_tui.backends.base import TurnRequest
from mlx_harmony_tui.chat.events import TurnFinished
from mlx_harmony_tui.harmony.messages import HMessage
from mlx_harmony_tui.tui.command import build_app
s = build_app(argparse.Namespace(model={model!r}, config={str(cfg)!r})).settings
s.conversation_date = time.strftime("%Y-%m-%d")  # as the app's session does
b = LocalBackend.load({model!r})
for run in range(2):  # the first is a warm-up
    h = b.start_turn(TurnRequest([HMessage("user", {PROMPT!r})], s))
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


def finished_generations(data: Path) -> int:
    """Generations recorded with metrics in every session file (a turn's last one closes the turn)."""
    n = 0
    for f in (data / "sessions").glob("*.json") if (data / "sessions").is_dir() else ():
        try:
            msgs = json.loads(f.read_text())["messages"]
        except (OSError, ValueError, KeyError):
            continue  # being written
        n += sum(1 for m in msgs if (m.get("metrics") or {}).get("decode_tps"))
    return n


def app_round(model: str, env: dict[str, str], cfg: Path, data: Path,
              keys: bool, root: Path) -> tuple[float, list[float], list[float]]:
    """Without keys: a warm-up turn, a new session (ctrl+n) and the measured turn, like headless_tps.
    With keys: one turn, typing while it streams (its tok/s is not used: the capture-pane polling itself
    costs CPU on a small machine). Returns tok/s, tmux latencies and the app's own key-to-frame latencies
    (empty for a version without the probe)."""
    probe = Path(tempfile.mkstemp(prefix="uilat-probe-", suffix=".json")[1])
    env = dict(env, MHT_KEY_LATENCY_LOG=str(probe)) if keys else env
    t = Term(env)
    launcher = f"{ROOT / 'scripts' / 'stall_watch.py'} {STALL_LOG}" if STALL_LOG and keys else "-m mlx_harmony_tui"
    cmd = f"{sys.executable} {launcher} --model {model} --config {cfg}"
    t.tmux("new-session", "-d", "-s", "app", "-x", "120", "-y", "40", "-c", str(root), cmd)
    lat: list[float] = []
    try:
        t.wait("Model ready")
        for turn in range(1 if keys else 2):
            if turn:
                t.tmux("send-keys", "-t", "app", "C-n")
                time.sleep(0.5)
            before = finished_generations(data)
            t.tmux("send-keys", "-t", "app", "-l", PROMPT)
            t.tmux("send-keys", "-t", "app", "Enter")
            if keys:
                t.wait("generating", 30)
                time.sleep(0.5)
                lat = type_while_streaming(t)
            end = time.monotonic() + 600
            while finished_generations(data) <= before and time.monotonic() < end:
                time.sleep(0.25)
        time.sleep(0.5)
        t.tmux("send-keys", "-t", "app", "C-q")
        time.sleep(1.5)
    finally:
        t.tmux("kill-server")
    newest = max((data / "sessions").glob("*.json"), key=lambda p: p.stat().st_mtime)
    msgs = json.loads(newest.read_text())["messages"]
    tps = [m["metrics"]["decode_tps"] for m in msgs if (m.get("metrics") or {}).get("decode_tps")]
    doc = json.loads(probe.read_text() or "[]") if keys else []
    probe.unlink(missing_ok=True)
    if isinstance(doc, list):  # an older version: frames only
        doc = {"frames": doc, "queued": []}
    QUEUED.extend(doc.get("queued", []))
    return float(tps[-1]), lat, doc.get("frames", [])


def type_while_streaming(t: Term) -> list[float]:
    """One key at a time: seconds from send-keys until capture-pane shows it in the message box."""
    lat: list[float] = []
    n = input_chars(t.screen(), "§")
    while "generating" in t.screen():
        t0 = time.perf_counter()
        t.tmux("send-keys", "-t", "app", "-l", "§")
        while True:
            if input_chars(t.screen(), "§") > n:
                lat.append(time.perf_counter() - t0)
                n += 1
                break
            if time.perf_counter() - t0 > 5:
                raise SystemExit("a key did not appear within 5 s")
            time.sleep(POLL_S)
        time.sleep(0.1)
    return lat


def percentiles(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(0.95 * len(xs)))]
    return (f"p50 {statistics.median(xs) * 1e3:.0f} ms, p95 {p95 * 1e3:.0f} ms, max {xs[-1] * 1e3:.0f} ms "
            f"over {len(xs)} keys")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--tokens", type=int, default=1200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout to run the app from")
    ap.add_argument("--stall-log", default="", help="log the UI loop's stalls (> 150 ms) with stacks here")
    args = ap.parse_args()
    global STALL_LOG
    STALL_LOG = str(Path(args.stall_log).resolve()) if args.stall_log else ""
    if not shutil.which("tmux"):
        print("tmux is needed")
        return 1
    home = Path(tempfile.mkdtemp(prefix="uilat-"))
    root = args.root.resolve()
    env = dict(os.environ, TERM="xterm-256color", PYTHONPATH=str(root), TMUX_TMPDIR=str(home))
    env.setdefault("TIKTOKEN_ENCODINGS_BASE", str(ROOT / "tests" / ".cache" / "vocab"))
    for v in ("CONFIG", "DATA", "CACHE", "STATE"):
        env[f"XDG_{v}_HOME"] = str(home / v.lower())
    env.pop("TMUX", None)
    cfg = home / "config.toml"
    cfg.write_text(f"[sampling]\nmax_tokens = {args.tokens}\nseed = 7\n")
    data = home / "data" / "mlx-harmony-tui"
    heads, apps, lats, inproc = [], [], [], []
    for _ in range(args.rounds):  # interleaved, so load drifts on a shared machine hit both alike
        heads.append(headless_tps(args.model, env, cfg, root))
        apps.append(app_round(args.model, env, cfg, data, False, root)[0])
        _, tm, ip = app_round(args.model, env, cfg, data, True, root)
        lats.extend(tm)
        inproc.extend(ip)
    h, a = statistics.median(heads), statistics.median(apps)
    print(f"root={root} model={args.model} max_tokens={args.tokens} rounds={args.rounds}")
    print(f"decode tok/s headless:  {h:.1f}  (runs {', '.join(f'{x:.1f}' for x in heads)})")
    print(f"decode tok/s app (tmux): {a:.1f}  (runs {', '.join(f'{x:.1f}' for x in apps)})")
    print(f"app / headless:         {a / h * 100:.1f}%  (target >= 97%)")
    print(f"key-to-screen in tmux (5 ms polling): {percentiles(lats)}")
    print(f"key-to-frame in-process (probe):     {percentiles(inproc)}")
    print(f"  of which event -> key handled:      {percentiles(QUEUED)}")
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
