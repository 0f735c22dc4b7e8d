"""Kernel benchmark: the passes of every kernel family, against the hardware floor.

    python -m benchmarks.kernels                    # on a CUDA GPU: every family; L = 4k, 16k, 32k; d = 64, 128
    python -m benchmarks.kernels --family digest    # one family (repeat --family for several)
    python -m benchmarks.kernels --quick            # anywhere: small sizes, checks that the script works
    python -m benchmarks.kernels --dry-run          # anywhere, in seconds: every pass once at L = 40
    ATTNSCOPE_BACKEND=triton TRITON_INTERPRET=1 python -m benchmarks.kernels --dry-run   # the kernels, on a CPU

Floor per pass (H200 figures from the issue): max(2·pairs·d / 790e12, pairs / 3.9e12, bytes / 4.8e12)
seconds, where pairs counts every (query, key) pair of the region the pass covers (all L² for a
whole-layer pass, one row for the neuron view) — the Q·Kᵀ multiply at dense bf16 tensor-core
rate, one exponential per score at the SFU rate, or reading Q and K and writing the result once at
HBM bandwidth. A causal pass needs only about half of the pairs, so causal ratios below 1 are
possible. Achieved TFLOP/s counts 2·d flops per visible pair.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from attnscope.kernels import MaskSpec, backend

from .common import RESULTS, environment, median_seconds, write

PEAK_FLOPS = 790e12
PEAK_EXP = 3.9e12
PEAK_BYTES = 4.8e12


@dataclass
class Pass:
    """One timed call: `fn`, over `rows` × `cols` (query, key) pairs of each of `heads` heads,
    of which `visible` are visible per head, moving at least `bytes` to and from memory."""

    name: str
    fn: Callable[[], object]
    heads: int
    rows: int
    cols: int
    visible: float
    bytes: float


def _visible(rows: int, cols: int, causal: bool) -> float:
    """Visible pairs of the top-left rows × cols corner of a self-attention matrix."""
    if not causal:
        return rows * cols
    return sum(min(cols, r + 1) for r in range(rows)) if rows <= 4096 else rows * (rows + 1) / 2


def _rowstats(q, k, spec, lse, causal):
    h, length = q.shape[:2]
    io = (q.numel() + k.numel()) * q.element_size() + 2 * h * length * 4
    return [
        Pass(
            "row_stats",
            partial(backend.row_stats, q, k, spec),
            h,
            length,
            length,
            _visible(length, length, causal),
            io,
        )
    ]


def _tiles(q, k, spec, lse, causal):
    n = min(4096, q.shape[1])
    io = 2 * n * q.shape[2] * q.element_size() + n * n * 4
    tile = partial(backend.probs_tile, q, k, spec, lse, 0, range(n), range(n))
    return [Pass(f"tile_{n}", tile, 1, n, n, _visible(n, n, causal), io)]


def _digest(q, k, spec, lse, causal):
    h, length, _ = q.shape
    size = min(256, length)
    io = (q.numel() + k.numel()) * q.element_size()
    pairs = (length, length, _visible(length, length, causal))
    everything = dict(pooled_size=(size, size), received=True, terms=True)
    return [
        Pass(
            f"pooled_{size}",
            partial(backend.digest, q, k, spec, lse, pooled_size=(size, size)),
            h,
            *pairs,
            io,
        ),
        Pass("digest_all", partial(backend.digest, q, k, spec, lse, **everything), h, *pairs, io),
        # One head's heatmap costs one head (backend.select_heads), not the layer.
        Pass(
            f"pooled_{size}_one_head",
            partial(backend.digest, q, k, spec, lse, pooled_size=(size, size), heads=[0]),
            1,
            *pairs,
            io / h,
        ),
    ]


def _topk(q, k, spec, lse, causal):
    length, d = q.shape[1:]
    io = 2 * length * d * q.element_size() + length * 16 * 12
    fn = partial(backend.top_k, q, k, spec, lse, 0, 16, range(length))
    return [Pass("top16", fn, 1, length, length, _visible(length, length, causal), io)]


def _neuron(q, k, spec, lse, causal):
    length, d = q.shape[1:]
    io = length * d * (q.element_size() + 4) + 2 * length * 4
    fn = partial(backend.neuron_view, q, k, spec, lse, 0, length - 1, range(length))
    return [Pass("neuron", fn, 1, 1, length, length, io)]


#: family -> its passes (each family of kernels/ that a trace runs; masking, scores and backend
#: hold no kernel of their own).
FAMILIES = {"rowstats": _rowstats, "tiles": _tiles, "digest": _digest, "topk": _topk, "neuron": _neuron}


def floor_seconds(p: Pass, d: int) -> float:
    pairs = p.heads * p.rows * p.cols
    return max(2 * pairs * d / PEAK_FLOPS, pairs / PEAK_EXP, p.bytes / PEAK_BYTES)


def run(
    families: list[str],
    lengths: list[int],
    dims: list[int],
    heads: int,
    dtype: torch.dtype,
    device: str,
    warmup: int = 2,
    repeats: int = 7,
) -> list[dict]:
    rows = []
    for length in lengths:
        for d in dims:
            for causal in (False, True):
                gen = torch.Generator(device=device).manual_seed(0)
                q = torch.randn(heads, length, d, device=device, dtype=dtype, generator=gen)
                k = torch.randn(heads, length, d, device=device, dtype=dtype, generator=gen)
                spec = MaskSpec(scaling=d**-0.5, causal=causal)
                lse, _ = backend.row_stats(q, k, spec)
                for family in families:
                    for p in FAMILIES[family](q, k, spec, lse, causal):
                        seconds = median_seconds(p.fn, warmup=warmup, repeats=repeats)
                        floor = floor_seconds(p, d)
                        rows.append(
                            {
                                "family": family,
                                "pass": p.name,
                                "L": length,
                                "d": d,
                                "heads": p.heads,
                                "causal": causal,
                                "backend": backend.backend_name(q.device),
                                "ms": seconds * 1e3,
                                "tflops": p.heads * p.visible * 2 * d / seconds / 1e12,
                                "floor_ms": floor * 1e3,
                                "ratio_to_floor": seconds / floor,
                            }
                        )
                        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="families: " + ", ".join(FAMILIES),
    )
    parser.add_argument(
        "--family",
        action="append",
        choices=list(FAMILIES),
        metavar="NAME",
        help=f"a kernel family to time, one of {', '.join(FAMILIES)} (repeatable; default: all)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes on any device (a smoke run)")
    size.add_argument(
        "--dry-run",
        action="store_true",
        help="every pass once at L = 40 on any device (the torch backend on a CPU, or Triton with "
        "ATTNSCOPE_BACKEND=triton TRITON_INTERPRET=1): checks that each family runs, times nothing useful",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for kernels.json and kernels.md")
    args = parser.parse_args(argv)
    families = list(dict.fromkeys(args.family or FAMILIES))
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if args.dry_run:
        rows = run(families, [40], [16], 2, torch.float32, device, warmup=0, repeats=1)
        name = "kernels-dry-run"
    elif args.quick:
        rows = run(families, [256, 300], [64], heads=2, dtype=torch.float32, device=device)
        name = "kernels-quick"
    elif not cuda:
        parser.error("the full kernel benchmark needs a CUDA GPU; use --quick or --dry-run on a CPU")
    else:
        rows = run(families, [4096, 16384, 32768], [64, 128], heads=16, dtype=torch.bfloat16, device="cuda")
        name = "kernels"
    if args.family:  # a subset must not overwrite the whole run's table
        name += "-" + "-".join(families)
    columns = [
        ("pass", "pass"),
        ("family", "family"),
        ("L", "L"),
        ("d", "d"),
        ("heads", "heads"),
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
