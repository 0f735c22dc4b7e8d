"""The `attnscope` command line."""

from __future__ import annotations

import argparse
import sys
import time

# Which end of each statistic marks a notable head: low entropy is focused, high mass is strong.
_ORDER = {
    "entropy": "lowest",
    "previous_token": "highest",
    "self": "highest",
    "first_token": "highest",
    "mean_distance": "highest",
}


def _cmd_trace(args: argparse.Namespace) -> int:
    from attnscope import Extractor

    started = time.perf_counter()
    ex = Extractor.from_pretrained(args.model, device=args.device)
    loaded = time.perf_counter()
    tr = ex.trace(args.text, pair=args.pair)
    stats = tr.head_stats()
    done = time.perf_counter()
    name = args.model or "bundled all-MiniLM-L6-v2"
    print(f"model: {name} on {ex.device}  ({tr.num_layers} layers × {tr.num_heads} heads)")
    print(f"tokens ({tr.seq_len}): {' '.join(tr.tokens)}")
    print(f"loaded in {loaded - started:.2f} s, traced + head statistics in {done - loaded:.3f} s")
    for stat, values in stats.items():
        flat = values.flatten()
        order = flat.argsort(descending=_ORDER[stat] == "highest")[: args.top]
        heads = ", ".join(f"L{int(i) // tr.num_heads}.H{int(i) % tr.num_heads}={flat[i]:.3f}" for i in order)
        print(f"{stat:>15} ({_ORDER[stat]}): {heads}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnscope", description="Exact attention views for transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser(
        "trace", help="trace one text and print its tokens and the top heads by each statistic"
    )
    tr.add_argument("text", help="the input text")
    tr.add_argument("--pair", default=None, help="optional second sentence (BERT-style pairs)")
    tr.add_argument("--model", default=None, help="model name or local path (default: the bundled MiniLM)")
    tr.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    tr.add_argument("--top", type=int, default=5, help="heads to list per statistic (default 5)")
    tr.set_defaults(func=_cmd_trace)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"attnscope: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
