"""``mlx-harmony-tui models list|pull|info|rm``: the models on this machine, by name, and getting more.

Names are what the resolver accepts everywhere (``--model``, the config's ``model``, the picker); ``pull``
fetches a Hugging Face repo into the shared hub cache with huggingface_hub and checks it before saying
it is ready. Only ``pull`` uses the network; ``rm`` asks before deleting.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from mlx_harmony_tui.confirm import confirm
from mlx_harmony_tui.errors import UserError

HEADERS = ["NAME", "SOURCE", "SIZE", "LAYOUT", "QUANTIZATION", "FITS"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list, download, inspect and remove models")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    sub = p.add_subparsers(dest="action", metavar="ACTION")

    def common(a: argparse.ArgumentParser) -> None:
        a.add_argument(
            "--config", default=None, metavar="PATH", help="config file (models_dirs, context_limit)"
        )
        a.add_argument("--profile", default=None, help="settings profile from the config file")

    a = sub.add_parser(
        "list", help="every GPT-OSS model here: models_dirs folders and the Hugging Face cache"
    )
    a.add_argument("--json", action="store_true", help="machine-readable output")
    common(a)
    a.set_defaults(func=cmd_list)

    a = sub.add_parser("pull", help="download a Hugging Face repo (OWNER/NAME[@REVISION]) and verify it")
    a.add_argument("repo", help="e.g. openai/gpt-oss-20b or mlx-community/gpt-oss-20b-MXFP4-Q8@main")
    a.add_argument("--progress-lines", action="store_true", help=argparse.SUPPRESS)  # the TUI reads these
    common(a)
    a.set_defaults(func=cmd_pull)

    a = sub.add_parser("info", help="a model's size, shape and memory need")
    a.add_argument("name", help="a name as `models list` shows it, a repo id or a folder")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    common(a)
    a.set_defaults(func=cmd_info)

    a = sub.add_parser("rm", help="delete a downloaded model from the Hugging Face cache")
    a.add_argument("name")
    a.add_argument("--yes", "-y", action="store_true", help="do not ask")
    common(a)
    a.set_defaults(func=cmd_rm)


def _config(args: argparse.Namespace) -> tuple[list[str], int | None, int | None, str | None]:
    """(models_dirs, context_limit, kv_bits, kv_mode) from the config file and profile."""
    from mlx_harmony_tui.faces.common import load_app_config

    cfg = load_app_config(args)
    profile, base = cfg.settings_layers()
    context = profile.get("context_limit") or base.get("context_limit")
    return list(cfg.models_dirs), context if isinstance(context, int) else None, cfg.kv_bits, cfg.kv_mode


def cmd_list(args: argparse.Namespace) -> int:
    from mlx_harmony_tui.catalog.hub import cache_dir
    from mlx_harmony_tui.catalog.listing import columns, find_models
    from mlx_harmony_tui.engine.memory import memory_budget

    dirs, context, kv_bits, kv_mode = _config(args)
    entries = find_models(dirs, context=context, kv_bits=kv_bits, kv_mode=kv_mode)
    budget = memory_budget()
    if args.json:
        rows = [dict(zip([h.lower() for h in HEADERS], columns(e), strict=True)) | {
            "path": str(e.path), "size_bytes": e.size_bytes, "fits": e.fits, "problem": e.problem,
        } for e in entries]  # fmt: skip
        json.dump({"models": rows, "memory_bytes": budget.nbytes, "memory_source": budget.source}, sys.stdout)
        print()
        return 0
    rows = [HEADERS] + [columns(e) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for e in entries:
        if e.problem:
            print(f"! {e.name}: {e.problem}")
    for d in dirs:  # a mistyped (or unmounted) folder would otherwise just leave its models out
        if not Path(d).expanduser().is_dir():
            print(f"! models_dirs: {d} is not a folder")
    if not entries:
        where = f"models_dirs ({', '.join(dirs)})" if dirs else "models_dirs (none configured)"
        print(
            f"(no GPT-OSS models in {where} or the Hugging Face cache ({cache_dir()}); only the built-in demo. "
            "Get one with: mlx-harmony-tui models pull openai/gpt-oss-20b)"
        )
    memory = f"{budget.nbytes / 1e9:.1f} GB, {budget.source}" if budget.nbytes else "unknown"
    print(f"\nFITS: weights + KV cache for {context or 'the model’s full'} context + working memory, "
          f"against what MLX can have here ({memory}). `models info NAME` shows the numbers.")  # fmt: skip
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from mlx_harmony_tui.catalog import hub
    from mlx_harmony_tui.catalog.fit import fits, memory_need
    from mlx_harmony_tui.catalog.listing import human_bytes
    from mlx_harmony_tui.catalog.verify import bad_files, verify

    parsed = hub.parse_repo(args.repo)
    if not parsed:
        raise UserError(hub.not_a_repo(args.repo))
    repo, revision = parsed
    _, context, kv_bits, kv_mode = _config(args)
    if not hub.offline():  # (offline, pull says so in one line)
        print(f"pulling {args.repo} from {hub.endpoint()} into {hub.cache_dir()}", file=sys.stderr)
    progress = None
    if args.progress_lines:  # "done total" byte counts, one line each, for a parent process (tui/pull.py)

        def progress(done: int, total: int) -> None:
            print(f"progress {done} {total}", flush=True)

    def interrupted(_sig: int, _frame: Any) -> None:
        print(f"\ninterrupted: run `{hub.pull_command(repo, revision)}` again to continue "
              "(finished files are kept)", file=sys.stderr, flush=True)  # fmt: skip
        sys.stdout.flush()
        # Straight out: huggingface_hub's download threads cannot be stopped, and a KeyboardInterrupt would
        # wait for every file in flight (gigabytes) on its way out; the next pull removes their partial files.
        os._exit(130)

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        path = hub.pull(repo, revision, progress=progress, verify=bad_files)
    finally:
        signal.signal(signal.SIGINT, previous)
    summary = verify(path, args.repo, f"run `{hub.pull_command(repo, revision)}` again")
    ok = fits(memory_need(summary, context, kv_bits, kv_mode=kv_mode))
    verdict = {True: "fits this machine's memory", False: "does NOT fit this machine's memory", None: ""}[ok]
    print(f"ready: {args.repo} ({human_bytes(summary.weight_bytes)}, {summary.quantization}){', ' if verdict else ''}"
          f"{verdict}\nrun it: mlx-harmony-tui --model {args.repo}")  # fmt: skip
    return 0


def info_dict(
    name: str, found: Any, summary: Any, context: int | None, kv_bits: int | None, kv_mode: str | None = None
) -> dict[str, Any]:
    from mlx_harmony_tui.catalog.fit import memory_need
    from mlx_harmony_tui.engine.memory import memory_budget

    need = memory_need(summary, context, kv_bits, kv_mode=kv_mode)
    budget = memory_budget()
    return {
        "name": name, "path": str(found.path), "source": found.source, "layout": summary.layout,
        "quantization": summary.quantization, "layers": summary.layers, "full_attention_layers": summary.full_layers,
        "sliding_window": summary.sliding_window, "experts": summary.experts,
        "experts_per_token": summary.experts_per_token, "context": summary.context,
        "parameters": summary.parameters, "weight_bytes": summary.weight_bytes,
        "kv_bytes_per_token": summary.kv_bytes(2, kv_bits, kv_mode) - summary.kv_bytes(1, kv_bits, kv_mode),
        "planned_context": need.context, "kv_bits": kv_bits, "kv_mode": kv_mode,
        "memory_need_bytes": need.total, "memory_bytes": budget.nbytes, "memory_source": budget.source,
        "fits": None if not budget.nbytes else need.total <= budget.nbytes,
    }  # fmt: skip


def cmd_info(args: argparse.Namespace) -> int:
    from mlx_harmony_tui.catalog.fit import memory_need
    from mlx_harmony_tui.catalog.listing import human_bytes, human_count
    from mlx_harmony_tui.catalog.resolve import ResolvedModel, resolve, tiny_path
    from mlx_harmony_tui.catalog.summary import tiny_summary
    from mlx_harmony_tui.catalog.verify import verify
    from mlx_harmony_tui.engine.cache import kv_label, kv_setting
    from mlx_harmony_tui.model.cache import DEFAULT_MARGIN

    dirs, context, kv_bits, kv_mode = _config(args)
    if args.name.strip() == "tiny" and not (tiny_path() / "config.json").is_file():
        # read-only: described in memory rather than generated (~100 MB) by resolve() just to be read
        found = ResolvedModel(tiny_path(), "tiny", "built-in, generated on first use")
        summary = tiny_summary()
    else:
        found = resolve(args.name, dirs)
        summary = verify(found.path, found.name, found.fix)
    d = info_dict(found.name, found, summary, context, kv_bits, kv_mode)
    if args.json:
        print(json.dumps(d))
        return 0
    need = memory_need(summary, context, kv_bits, kv_mode=kv_mode)
    fit = {True: "fits", False: "does NOT fit", None: "unknown"}[d["fits"]]
    budget = f"{d['memory_bytes'] / 1e9:.1f} GB, {d['memory_source']}" if d["memory_bytes"] else "unknown"
    print(f"""{found.name}  ({found.source}: {found.path})
  layout        {summary.layout}, {summary.quantization}
  layers        {summary.layers} ({summary.full_layers} full attention, the rest a {
        summary.sliding_window
    }-token window)
  experts       {summary.experts}, {summary.experts_per_token} per token
  context       {summary.context} tokens
  parameters    {human_count(summary.parameters)}
  weights       {human_bytes(summary.weight_bytes)}
  KV cache      {d["kv_bytes_per_token"]} bytes per token of context{
        f" ({kv_label(*kv_setting(kv_bits, kv_mode))})" if kv_bits or kv_mode else ""
    } (full-attention layers; the window layers hold at most {summary.sliding_window} + {
        DEFAULT_MARGIN
    } positions)
  memory        ~{need.total / 1e9:.1f} GB ({need.words()}): {fit} ({budget})""")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from mlx_harmony_tui.catalog import hub
    from mlx_harmony_tui.catalog.listing import human_bytes
    from mlx_harmony_tui.catalog.resolve import BUILTIN, resolve

    dirs, *_ = _config(args)
    if args.name.strip() in BUILTIN:  # before resolve(), which would generate 'tiny' just to refuse it
        raise UserError(f"{args.name} is built into mlx-harmony-tui: there is nothing to delete")
    found = resolve(args.name, dirs)
    if found.source != "hf-cache":
        raise UserError(
            f"{args.name} is not in the Hugging Face cache ({found.path}, {found.source}); "
            "`models rm` only deletes downloads: remove that folder yourself if you mean to"
        )
    revs = [r for r in hub.cached_revisions() if r.path == found.path]
    if not revs:
        raise UserError(f"{args.name}: no cached revision at {found.path}")
    rev = revs[0]
    if not args.yes and not confirm(f"delete {rev.name} ({human_bytes(rev.size_bytes)}, {rev.path})"):
        print("kept")
        return 1
    freed = hub.remove(rev)
    print(f"deleted {rev.name}: {human_bytes(freed)} freed")
    return 0
