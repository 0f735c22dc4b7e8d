"""Size of a shareable attention file: attnscope's standalone HTML against bertviz's.

    pip install --no-deps bertviz   # bertviz's pure-Python views need only IPython beyond attnscope's deps
    python -m benchmarks.exports [--out benchmarks/results]

For the bundled all-MiniLM-L6-v2 (6 layers × 12 heads) at several input lengths, the same eager
`output_attentions` go to `bertviz.head_view(..., html_action="return")` and
`bertviz.model_view(...)` (JSON number lists inside the HTML) and to attnscope's
`head_view`/`model_view` (one self-contained file: the viewer plus float16 attention as base64).
Reported: bytes of each HTML and the ratio bertviz / attnscope. The bertviz files also load
d3/jQuery/require from a CDN at view time, not counted here; attnscope's need nothing else.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers as tf

import attnscope
from attnscope.extract import default_model_path

from .common import RESULTS, environment, write

WORDS = [
    "the",
    "doctor",
    "asked",
    "the",
    "nurse",
    "a",
    "question",
    "about",
    "the",
    "patient",
    "and",
    "she",
    "said",
    "she",
    "would",
    "help",
    "him",
    "soon",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        import bertviz
    except ImportError:
        parser.error("bertviz is not installed: pip install --no-deps bertviz")
    path = str(default_model_path())
    tokenizer = tf.AutoTokenizer.from_pretrained(path)
    model = tf.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    rows = []
    for n_words in (8, 30, 62, 126):
        text = " ".join(WORDS[i % len(WORDS)] for i in range(n_words))
        inputs = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            attention = model(**inputs, output_attentions=True).attentions
        tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
        for view in ("head_view", "model_view"):
            ours = len(getattr(attnscope, view)(attention, tokens, html_action="return").data.encode())
            theirs = len(getattr(bertviz, view)(attention, tokens, html_action="return").data.encode())
            rows.append(
                {
                    "view": view,
                    "tokens": len(tokens),
                    "bertviz_bytes": theirs,
                    "attnscope_bytes": ours,
                    "ratio": theirs / ours,
                }
            )
            print(rows[-1])
    bertviz_version = bertviz.__version__ if hasattr(bertviz, "__version__") else "1.4.1"
    write("exports", {**environment(), "bertviz": bertviz_version}, rows, args.out, __doc__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
