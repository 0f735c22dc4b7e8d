"""Kernel benchmark: the row-statistics pass and the pooled pass, against the hardware floor.

    python -m benchmarks.kernels            # on a CUDA GPU: L = 4k, 16k, 32k; d = 64, 128; causal or not
    python -m benchmarks.kernels --quick    # anywhere: tiny sizes, checks that the script works

Floor per head (H200 figures from the issue): max(2·L²·d / 790e12, L² / 3.9e12) seconds — the
Q·Kᵀ multiply at dense bf16 tensor-core rate, or one exponential per score at the SFU rate. The
floor counts all L² pairs; a causal pass needs only about half of them, so causal ratios below 1
are possible. Achieved TFLOP/s counts 2·d flops per visible pair.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch

from attnscope.kernels import MaskSpec, backend

from .common import RESULTS, environment, median_seconds, write

PEAK_FLOPS = 790e12
PEAK_EXP = 3.9e12


def floor_seconds(length: int, d: int, heads: int) -> float:
    return heads * max(2 * length * length * d / PEAK_FLOPS, length * length / PEAK_EXP)


def run(lengths: list[int], dims: list[int], heads: int, dtype: torch.dtype, device: str) -> list[dict]:
    rows = []
    for length in lengths:
        for d in dims:
            for causal in (False, True):
                gen = torch.Generator(device=device).manual_seed(0)
                q = torch.randn(heads, length, d, device=device, dtype=dtype, generator=gen)
                k = torch.randn(heads, length, d, device=device, dtype=dtype, generator=gen)
                spec = MaskSpec(scaling=d**-0.5, causal=causal)
                lse, _ = backend.row_stats(q, k, spec)
                size = min(256, length)
                passes = {
                    "row_stats": partial(backend.row_stats, q, k, spec),
                    "pooled_256": partial(backend.pooled_map, q, k, spec, lse, size, size),
                }
                pairs = length * (length + 1) / 2 if causal else length * length
                floor = floor_seconds(length, d, heads)
                for name, fn in passes.items():
                    seconds = median_seconds(fn)
                    rows.append(
                        {
                            "pass": name,
                            "L": length,
                            "d": d,
                            "heads": heads,
                            "causal": causal,
                            "backend": backend.backend_name(q.device),
                            "ms": seconds * 1e3,
                            "tflops": heads * pairs * 2 * d / seconds / 1e12,
                            "floor_ms": floor * 1e3,
                            "ratio_to_floor": seconds / floor,
                        }
                    )
                    print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes on any device (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for kernels.json and kernels.md")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.quick:
        rows = run([256, 300], [64], heads=2, dtype=torch.float32, device="cuda" if cuda else "cpu")
        name = "kernels-quick"
    elif not cuda:
        parser.error("the full kernel benchmark needs a CUDA GPU; use --quick for a smoke run")
    else:
        rows = run([4096, 16384, 32768], [64, 128], heads=16, dtype=torch.bfloat16, device="cuda")
        name = "kernels"
    columns = [
        ("pass", "pass"),
        ("L", "L"),
        ("d", "d"),
        ("causal", "causal"),
        ("backend", "backend"),
        ("ms", "ms"),
        ("tflops", "TFLOP/s"),
        ("floor_ms", "floor ms"),
        ("ratio_to_floor", "× floor"),
    ]
    write(name, environment(), rows, args.out, __doc__, columns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
