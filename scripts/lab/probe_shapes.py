"""Does a new matmul row count cost a JIT compile on this backend? (first call vs repeated call)."""

from __future__ import annotations

import argparse
import time

import mlx.core as mx


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    w = mx.random.randint(0, 1 << 31, (5760, 2880 // 8)).astype(mx.uint32)
    s = mx.random.randint(118, 124, (5760, 2880 // 32)).astype(mx.uint8)
    for dtype in (mx.float32, mx.bfloat16):
        for m in (37, 38, 64, 64, 129, 256, 256):
            x = mx.random.normal((m, 2880)).astype(dtype)
            mx.eval(x)
            t = time.perf_counter()
            mx.eval(mx.quantized_matmul(x, w, s, None, transpose=True, group_size=32, bits=4, mode="mxfp4"))
            print(f"{dtype} M={m}: {(time.perf_counter() - t) * 1000:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
