"""What did the answer read? A needle in a haystack, generated and traced.

    python examples/needle.py --model PATH_TO_A_CAUSAL_LM [--tokens 4000] [--depth 0.4]
    python examples/needle.py --planted [--tokens 2000]     # no download: a tiny hand-set model

Builds a long filler text with one planted fact ("The secret code is 7421."), asks for it, lets the
model generate the answer with its own attention and cache, traces prompt + answer exactly, and
prints the heads with the highest retrieval scores (Wu et al. 2024: how often a head's strongest
key holds the token being generated) and the passages the answer read most (its tokens' attention,
mean over the layers and heads chosen), with whether the planted fact's sentence comes first.

`--planted` builds a 2-layer GPT-2 whose layer 0 head 0 is set by hand to attend from every
position to the code's token and copy it to the output, so the answer must read the fact; it is
what tests/test_needle.py and the viewer's reading test run.
"""

from __future__ import annotations

import argparse
import random
import sys

import torch

import attnscope

FILLER = [
    "The grass is green and the hills are quiet.",
    "A river runs past the old mill every spring.",
    "People walk along the road to the market in town.",
    "The baker opens his shop before the sun comes up.",
    "Children play near the school after their lessons end.",
    "The library keeps long rows of books about the sea.",
    "Clouds move slowly over the fields in the afternoon.",
    "A small boat waits at the end of the wooden pier.",
    "The train to the city leaves twice in the morning.",
    "Farmers bring apples and bread to sell on Sundays.",
    "The lamp in the window stays on late into the night.",
    "Birds gather on the roof when the weather turns cold.",
]
FACT = "The secret code is 7421."
QUESTION = "What is the secret code? The secret code is"
NEEDLE = "7421"


def haystack(tokenizer, tokens: int, depth: float = 0.4, seed: int = 0) -> tuple[str, str]:
    """(prompt, fact): filler sentences to about `tokens` tokens, the fact at `depth` of the way
    in (0 = first, 1 = last), then the question."""
    if not 0 <= depth <= 1:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    rng = random.Random(seed)
    per = max(1, len(tokenizer(FILLER[0], add_special_tokens=False)["input_ids"]))
    sentences = [rng.choice(FILLER) for _ in range(max(1, tokens // per))]
    sentences.insert(round(depth * len(sentences)), FACT)
    return " ".join(sentences) + " " + QUESTION, FACT


def word_tokenizer():
    """A word-level tokenizer over the filler, the fact and the question (no download)."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for text in [*FILLER, FACT, QUESTION] for w in _words(text)})
    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def _words(text: str) -> list[str]:
    from tokenizers import pre_tokenizers

    return [w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)]


def planted_model(tokenizer, positions: int = 4096) -> torch.nn.Module:
    """A 2-layer GPT-2 (random weights) whose layer 0, head 0 attends from every position to the
    needle's token and writes it to the output: feature 0 of the embeddings marks the needle,
    the head's query is a constant along its key's feature 0, its value carries feature 0 to
    the residual stream, and the tied output embedding turns that into the needle's logit."""
    import transformers as tf

    config = tf.GPT2Config(
        n_layer=2,
        n_head=4,
        n_embd=64,
        n_positions=positions,
        vocab_size=len(tokenizer),
        bos_token_id=1,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(config).eval()
    needle = tokenizer.convert_tokens_to_ids(NEEDLE)
    d, hd = config.n_embd, config.n_embd // config.n_head
    with torch.no_grad():
        model.transformer.wte.weight[:, 0] = 0
        model.transformer.wte.weight[needle, 0] = 8.0
        model.transformer.wpe.weight[:, 0] = 0
        attn = model.transformer.h[0].attn
        w, b = attn.c_attn.weight, attn.c_attn.bias  # Conv1D: x @ w + b, columns q | k | v
        w[:, 0:hd], b[0:hd] = 0, 0
        b[0] = 24.0  # the query: a constant along the key's feature 0
        w[:, d : d + hd], b[d : d + hd] = 0, 0
        w[0, d] = 1.0  # the key: feature 0 (large only at the needle)
        w[:, 2 * d : 2 * d + hd], b[2 * d : 2 * d + hd] = 0, 0
        w[0, 2 * d] = 1.0  # the value: feature 0 again
        for block in model.transformer.h:  # only head 0 of layer 0 writes feature 0
            block.attn.c_proj.weight[:, 0] = 0
            block.attn.c_proj.bias[0] = 0
            block.mlp.c_proj.weight[:, 0] = 0
            block.mlp.c_proj.bias[0] = 0
        attn.c_proj.weight[0, 0] = 5.0
    model.generation_config.eos_token_id = None
    return model


def read(ex: attnscope.Extractor, prompt: str, fact: str, new_tokens: int = 4, heads: int = 5) -> dict:
    """Generate, trace, and rank: the top retrieval heads and the passages the answer read."""
    tr = ex.trace(prompt, generate=new_tokens)
    scores = tr.retrieval_scores()
    order = scores.flatten().argsort(descending=True)[:heads]
    top_heads = [(int(i) // tr.num_heads, int(i) % tr.num_heads, float(scores.flatten()[i])) for i in order]
    ranked = tr.passages(top=5)
    fact_words = set(_words(fact))
    texts = [_passage_text(ex, tr, a, b) for a, b, _ in ranked]
    first_is_fact = bool(texts) and fact_words <= set(_words(texts[0]))
    return {
        "trace": tr,
        "answer": tr.generated.text,
        "heads": top_heads,
        "passages": [(a, b, m, t) for (a, b, m), t in zip(ranked, texts, strict=True)],
        "fact_first": first_is_fact,
    }


def _passage_text(ex, tr, start: int, stop: int) -> str:
    ids = torch.tensor(tr.token_ids()[0][start:stop].tolist())
    return ex.tokenizer.decode(ids) if ex.tokenizer is not None else " ".join(tr.tokens[start:stop])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a local causal language model (folder or cached Hub id)")
    which.add_argument("--planted", action="store_true", help="the tiny hand-set model (no download)")
    parser.add_argument("--tokens", type=int, default=2000, help="haystack length in tokens (about)")
    parser.add_argument("--depth", type=float, default=0.4, help="where the fact sits, 0 (first) to 1 (last)")
    parser.add_argument("--new-tokens", type=int, default=4, help="tokens of the answer to generate")
    args = parser.parse_args(argv)
    if args.planted:
        tok = word_tokenizer()
        ex = attnscope.Extractor(planted_model(tok, positions=args.tokens + 256), tok)
    else:
        ex = attnscope.Extractor.from_pretrained(args.model)
    prompt, fact = haystack(ex.tokenizer, args.tokens, args.depth)
    out = read(ex, prompt, fact, args.new_tokens)
    tr = out["trace"]
    print(f"prompt: {tr.prompt_len} tokens; answer: {out['answer']!r}")
    print("top retrieval heads (layer, head, score):")
    for layer, head, score in out["heads"]:
        print(f"  L{layer} H{head}  {score:.2f}")
    print("passages the answer read most (tokens, attention mass):")
    for a, b, mass, text in out["passages"]:
        print(f"  [{a}, {b})  {mass:.3f}  {text[:80]!r}")
    print("the planted fact is read first" if out["fact_first"] else "the planted fact is NOT read first")
    return 0 if out["fact_first"] else 1


if __name__ == "__main__":
    sys.exit(main())
