"""What runs inside the python tool's sandboxed child (passed to ``python -I -c`` as text, never imported).

Only limits live here (rlimits on CPU, memory, processes, file size, open files): the isolation itself is
the OS sandbox around this process (tools/sandbox.py), since code in this interpreter could undo anything
this file did in Python. ``once`` reads the cell from stdin and prints to stdout; ``kernel`` serves cells
over framed pipes, each reply tagged with the token of its request so that a frame the cell forges or
leaves behind can never be taken for the answer to a later request.
"""

import ast
import io
import json
import linecache
import os
import struct
import sys
import traceback

MAGIC = b"MHT1"


def set_limits(mem: int, cpu_s: int, nproc: int) -> None:
    import resource

    limits = [
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, 64 << 20),
        (resource.RLIMIT_NOFILE, 256),
        (resource.RLIMIT_CPU, cpu_s),
    ]
    if nproc:  # counted per user: only meaningful inside the sandbox's own user namespace
        limits.append((resource.RLIMIT_NPROC, nproc))
    for lim, val in limits:
        try:
            resource.setrlimit(lim, (val, val))
        except (ValueError, OSError):
            pass


def run_cell(code: str, g: dict) -> None:
    linecache.cache["<cell>"] = (len(code), None, code.splitlines(True), "<cell>")
    try:
        tree = ast.parse(code, "<cell>")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<cell>", "exec"), g)
        if last is not None:
            value = eval(compile(last, "<cell>", "eval"), g)
            if value is not None:
                print(repr(value))
    except SystemExit:
        pass
    except BaseException as e:
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        traceback.print_exception(type(e), e, tb)


class Capped(io.TextIOBase):
    def __init__(self, limit: int) -> None:
        self.limit, self.parts, self.size, self.total = limit, [], 0, 0

    def write(self, s: str) -> int:
        self.total += len(s)
        if self.size < self.limit:
            self.parts.append(s[: self.limit - self.size])
            self.size += len(self.parts[-1])
        return len(s)


def read_exact(f, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = f.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def kernel(maxout: int) -> None:
    cmd_in = os.fdopen(os.dup(0), "rb")
    res_out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    g = {"__name__": "__main__"}
    while True:
        head = read_exact(cmd_in, 4)
        if len(head) < 4:
            break
        request = json.loads(read_exact(cmd_in, struct.unpack(">I", head)[0]).decode("utf-8"))
        buf = Capped(maxout)
        sys.stdout = sys.stderr = buf
        run_cell(request["code"], g)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        body = json.dumps({"output": "".join(buf.parts), "cut": buf.total - buf.size}).encode()
        res_out.write(MAGIC + request["token"].encode("ascii") + struct.pack(">I", len(body)) + body)
        res_out.flush()


def main() -> None:
    mem, maxout, mode, cpu_s, nproc = (
        int(sys.argv[1]),
        int(sys.argv[2]),
        sys.argv[3],
        int(sys.argv[4]),
        int(sys.argv[5]),
    )
    set_limits(mem, cpu_s, nproc)
    sys.dont_write_bytecode = True
    sys.stdout.reconfigure(encoding="utf-8", errors="replace")
    sys.stderr.reconfigure(encoding="utf-8", errors="replace")
    if mode == "once":
        code = sys.stdin.buffer.read().decode("utf-8", "replace")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        run_cell(code, {"__name__": "__main__"})
    else:
        kernel(maxout)


if __name__ == "__main__":
    main()
