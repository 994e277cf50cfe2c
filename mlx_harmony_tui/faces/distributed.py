"""``--distributed``: every rank started by ``mlx.launch`` runs the same command line; rank 0 runs the face
(``serve``, ``generate``, ``chat``), every other rank loads its shard of the same model and follows rank 0's
generations until rank 0 closes the model or a rank dies. See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import os
import sys

FLAG = "--distributed"


def take_flag(argv: list[str]) -> tuple[list[str], str | None]:
    """(argv without ``--distributed[=BACKEND]``, the backend asked for or None when the flag is absent)."""
    rest: list[str] = []
    backend: str | None = None
    for arg in argv:
        if arg == FLAG:
            backend = "any"
        elif arg.startswith(FLAG + "="):
            backend = arg.split("=", 1)[1] or "any"
        else:
            rest.append(arg)
    return rest, backend


def start(backend: str) -> int:
    """Join the group; returns this process's rank."""
    from mlx_harmony_tui.engine import distributed

    return int(distributed.init(backend).rank())


def follow(args: argparse.Namespace) -> int:
    """A rank other than 0: load this rank's part of the model the command names, then follow rank 0."""
    from mlx_harmony_tui.backends.local import resolve_model_path, shard_for_group
    from mlx_harmony_tui.engine import distributed
    from mlx_harmony_tui.faces.common import load_app_config
    from mlx_harmony_tui.model import load_model

    app_config = load_app_config(args)
    model = getattr(args, "model", None) or app_config.model or "demo"
    path = resolve_model_path(model, app_config.models_dirs)
    loaded, config = load_model(path, shard=shard_for_group())
    engine = distributed.DistributedEngine(
        loaded,
        config,
        distributed.group(),
        model_id=str(path),
        kv_bits=getattr(app_config, "kv_bits", None),
        kv_mode=getattr(app_config, "kv_mode", None),
        prefill_step=getattr(app_config, "prefill_step", None),
    )
    try:
        engine.follow()
    except RuntimeError as e:  # a rank died or rank 0 went away: say so and exit, never hang
        print(f"mlx-harmony-tui: rank {engine.rank}: the distributed run ended: {e}", file=sys.stderr, flush=True)
        os._exit(1)  # not a normal exit: the ring's threads may still be waiting on the dead peer
    return 0
