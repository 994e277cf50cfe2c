"""Run scripts/long_context_gpu.py with the settings scripts/lab/long_context_lab.py chose (its choice.json):
the decode attention variant is set on the module, the prefill step is
passed on as ``--prefill-step``.

    python scripts/lab/apply_choice.py CHOICE_JSON -- --out $OUT --lengths 16384,65536 ...
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    if len(sys.argv) < 3 or "--" not in sys.argv or sys.argv[1] in ("-h", "--help"):
        print("usage: apply_choice.py CHOICE_JSON -- [scripts/long_context_gpu.py's arguments]")
        print(__doc__)
        sys.exit(0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2)
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    choice = json.loads(Path(sys.argv[1]).read_text())
    from long_context_lab import use

    use(choice["kernel"])
    rest = sys.argv[sys.argv.index("--") + 1 :]
    print("choice:", choice, flush=True)
    sys.argv = [str(here.parent / "long_context_gpu.py"), "--prefill-step", str(choice["prefill_step"]), *rest]
    runpy.run_path(sys.argv[0], run_name="__main__")
