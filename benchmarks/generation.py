"""What tracing a generation costs on top of generating.

Usage: ``python -m benchmarks.generation [--quick] [--out DIR]``

A GPT-2-shaped language model (random weights: 2 layers, 12 heads, d 64, width 768; on CUDA 12
layers, GPT-2 small) and random prompts of each length; median wall seconds of: the model's own
`generate` of 32 new tokens (greedy, sdpa, its KV cache), the same generation traced
(`ex.trace(prompt, generate=32)`: generation, then one captured forward over prompt + completion
with its row statistics), that plus the retrieval scores of every head at the 32 generated
positions (the fused top-1), and plus the passages the answer read (attention from the 32
generated tokens over every layer and head); the steps run in turn, round after round, and each
is given as its median (and best) over the rounds and as a ratio of medians to generation alone.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from .common import RESULTS, environment, median_seconds, write

NEW_TOKENS = 32


def _model(quick: bool, device: str, max_len: int):
    import transformers as tf

    layers = 12 if device == "cuda" and not quick else 2
    width, heads = (64, 4) if quick else (768, 12)
    config = tf.GPT2Config(
        n_layer=layers, n_head=heads, n_embd=width, n_positions=max_len + NEW_TOKENS, vocab_size=50257
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = tf.GPT2LMHeadModel(config).eval()
    model.generation_config.eos_token_id = None  # always the full 32 tokens
    return model


def measure(length: int, model, repeats: int) -> list[dict]:
    from attnscope import Extractor

    ex = Extractor(model)
    device = next(model.parameters()).device
    ids = torch.randint(0, 50257, (1, length), generator=torch.Generator().manual_seed(length)).to(device)

    def generate():
        with torch.inference_mode():
            model.set_attn_implementation("sdpa")
            model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False
            )

    def traced():
        tr = ex.trace(input_ids=ids, generate=NEW_TOKENS)
        tr.row_stats(tr.num_layers - 1)
        return tr

    steps = {
        "generate (model alone)": generate,
        "generate + trace": traced,
        "+ retrieval scores": lambda: traced().retrieval_scores(),
        "+ retrieval + passages read": lambda: _read(traced()),
    }
    # In turn, round after round (a shared machine's load then weighs on every step alike), after a
    # warm-up round; the median and the best of each step's rounds.
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(repeats + 1):
        for name, fn in steps.items():
            seconds = median_seconds(fn, warmup=0, repeats=1)
            if round_:
                times[name].append(seconds)
    base = statistics.median(times["generate (model alone)"])
    return [
        {
            "length": length,
            "step": name,
            "seconds": statistics.median(t),
            "best_s": min(t),
            "vs_generate": statistics.median(t) / base,
            "device": str(device),
        }
        for name, t in times.items()
    ]


def _read(tr) -> None:
    tr.retrieval_scores()
    tr.passages(spans=[(a, min(a + 64, tr.prompt_len)) for a in range(0, tr.prompt_len, 64)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and short prompts (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.quick:
        lengths, repeats = (40, 90), 1
    elif device == "cuda":
        lengths, repeats = (1024, 4096, 16384), 3
    else:
        lengths, repeats = (256, 1024, 2048), 5
    model = _model(args.quick, device, max(lengths))
    rows = [row for length in lengths for row in measure(length, model, repeats)]
    name = "generation-quick" if args.quick else f"generation-{device}"
    columns = [
        ("length", "prompt tokens"),
        ("step", "step"),
        ("seconds", "median s"),
        ("best_s", "best s"),
        ("vs_generate", "× generate"),
    ]
    write(name, environment(), rows, args.out, __doc__, columns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
