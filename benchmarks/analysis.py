"""What the head-analysis views of issue 15 cost on top of the digest pass.

Usage: ``python -m benchmarks.analysis [--quick] [--out DIR]``

One GPT-2-shaped attention layer (12 heads, d 64, causal, random Q/K, random token ids with
repeats) at each length; median wall seconds of: the row statistics (the pass every trace makes
once), the digest's head-statistic terms alone, the same with the token ids of the
duplicate-token and induction statistics, one row-weighted pass (one step of attention rollout
for one query: a row vector times P), and span sums over 32 uneven spans; each extra as a ratio
to the plain terms pass. Whatever backend `kernels.backend` picks here (the torch twin on the
CPU, the Triton kernels on CUDA).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from attnscope.kernels import MaskSpec, backend

from .common import RESULTS, environment, median_seconds, write

HEADS, HEAD_DIM, SPANS = 12, 64, 32


def _layer(length: int, device: str):
    gen = torch.Generator().manual_seed(length)
    q = torch.randn(HEADS, length, HEAD_DIM, generator=gen).to(device)
    k = torch.randn(HEADS, length, HEAD_DIM, generator=gen).to(device)
    ids = torch.randint(0, 200, (length,), generator=gen).to(device)  # repeats: duplicate and induction keys
    return q, k, ids


def _spans(length: int, device: str):
    """32 uneven spans covering the input (block ids per position)."""
    cuts = torch.linspace(0, 1, SPANS + 1) ** 1.5 * length
    edges = cuts.long().tolist()
    block = torch.empty(length, dtype=torch.long)
    for i in range(SPANS):
        block[edges[i] : edges[i + 1]] = i
    block[edges[-1] :] = SPANS - 1
    block = block.to(device)
    return block, block, SPANS, SPANS


def measure(length: int, device: str, repeats: int) -> list[dict]:
    q, k, ids = _layer(length, device)
    spec = MaskSpec(scaling=HEAD_DIM**-0.5, causal=True)
    lse, _ = backend.row_stats(q, k, spec)
    weights = torch.zeros(HEADS, length, device=device)
    weights[:, length // 2] = 1.0 / HEADS  # one query's one-hot row, shared by the heads
    passes = {
        "row statistics": lambda: backend.row_stats(q, k, spec),
        "head-statistic terms": lambda: backend.digest(q, k, spec, lse, terms=True),
        "terms + token ids (duplicate, induction)": lambda: backend.digest(
            q, k, spec, lse, terms=True, token_ids=(ids, ids)
        ),
        "rollout step (one query)": lambda: backend.digest(q, k, spec, lse, row_weights=weights),
        "span sums (32 uneven spans)": lambda: backend.digest(q, k, spec, lse, blocks=_spans(length, device)),
    }
    seconds = {name: median_seconds(fn, warmup=1, repeats=repeats) for name, fn in passes.items()}
    base = seconds["head-statistic terms"]
    return [
        {
            "length": length,
            "pass": name,
            "seconds": s,
            "vs_terms": s / base,
            "backend": backend.backend_name(q.device),
        }
        for name, s in seconds.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small lengths (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lengths, repeats = ((96, 160), 2) if args.quick else ((2048, 8192), 3)
    rows = [row for length in lengths for row in measure(length, device, repeats)]
    name = "analysis-quick" if args.quick else f"analysis-{device}"
    columns = [("length", "L"), ("pass", "pass"), ("seconds", "seconds"), ("vs_terms", "× terms pass")]
    write(name, environment(), rows, args.out, __doc__, columns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
