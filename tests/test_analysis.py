"""Head analysis (extract/analysis.py) against dense float64 references from transformers' eager
attention on tiny random models: the duplicate-token and induction statistics, head classes on
planted patterns, sinks, renormalised traces (every view), attention rollout, span maps and
sentence spans; the Triton path under the interpreter.

Inputs repeat random runs of tokens, so that duplicate and induction keys exist (within
Mistral's window of 8 too: runs of 5).
"""

from __future__ import annotations

import pytest
import torch

from attnscope import Extractor
from attnscope.extract import DenseTrace, IndexOutOfRange, LayerQK, Trace
from attnscope.extract.analysis import HEAD_CLASSES, key_shares, sentence_spans
from attnscope.kernels import MaskSpec, backend, triton_common

from eager import ATOL, check_views, decoder_inputs, eager_attentions
from reference import assert_close
from tiny_models import WORDS, build, word_tokenizer

FAMILIES = ["llama", "bert", "mistral", "bart"]
SELF_KINDS = ("encoder", "decoder")


def repeated_text(gen: torch.Generator, run: int = 5, times: int = 3, extra: int = 12) -> str:
    """A random run of `run` distinct words repeated `times` times, then `extra` random words."""
    words = torch.randperm(len(WORDS), generator=gen)[:run].tolist()
    tail = torch.randint(0, len(WORDS), (extra,), generator=gen).tolist()
    return " ".join(WORDS[i] for i in words * times + tail)


def traced(family: str, dtype=torch.float64, seed: int | None = None):
    """(trace, eager attentions kind -> [layers][H, Lq, Lk], token ids kind -> (q_ids, k_ids))."""
    seed = int(torch.randint(0, 2**31 - 1, ())) if seed is None else seed
    print(f"random seed: {seed}")
    model = build(family, dtype=dtype)
    tok = word_tokenizer()
    text = repeated_text(torch.Generator().manual_seed(seed))
    tr = Extractor(model, tok).trace(text)
    ids = tok(text, return_tensors="pt")["input_ids"]
    dec = decoder_inputs(model, ids) if model.config.is_encoder_decoder else None
    eager = eager_attentions(model, ids, None, dec)
    src = ids[0]
    if dec is None:
        token_ids = {kind: (src, src) for kind in eager}
    else:
        token_ids = {"encoder": (src, src), "decoder": (dec[0], dec[0]), "cross": (dec[0], src)}
    return tr, eager, token_ids


@pytest.fixture(scope="module", params=FAMILIES)
def case(request):
    return traced(request.param)


# ---- dense references (explicit loops over the definitions) ---------------------------------
def dense_token_stats(p: torch.Tensor, q_ids, k_ids, sinks: bool = False) -> dict[str, torch.Tensor]:
    """duplicate_token and induction [H] as kernels/headstats.py defines them; visible = P > 0."""
    h, lq, lk = p.shape
    visible = (p > 0).any(0)
    nonempty = torch.ones(h, lq, dtype=torch.bool) if sinks else p.sum(-1) > 0
    out = {}
    for name in ("duplicate_token", "induction"):
        values = torch.zeros(h, dtype=torch.float64)
        for head in range(h):
            total, rows = 0.0, 0
            for q in range(lq):
                if not nonempty[head, q]:
                    continue
                if name == "duplicate_token":
                    keys = [k for k in range(lk) if k != q and k_ids[k] == q_ids[q] and visible[q, k]]
                else:
                    keys = [
                        k for k in range(1, lk) if k - 1 != q and k_ids[k - 1] == q_ids[q] and visible[q, k]
                    ]
                if keys:
                    total += float(sum(p[head, q, k] for k in keys))
                    rows += 1
            values[head] = total / rows if rows else 0.0
        out[name] = values
    return out


def dense_renormalized(p: torch.Tensor, keys: list[int]) -> torch.Tensor:
    """P [H, Lq, Lk] without `keys`, each row divided by 1 - Σ_E P; rows with nothing left zero."""
    out = p.clone()
    h, lq, _ = p.shape
    for head in range(h):
        for q in range(lq):
            removed = float(p[head, q, keys].sum())
            out[head, q, keys] = 0
            if float(out[head, q].sum()) > 0 and removed < 1:
                out[head, q] /= 1 - removed
            else:
                out[head, q] = 0
    return out


def dense_rollout(layers: list[torch.Tensor], queries, residual, heads=None, chosen=None) -> torch.Tensor:
    n = layers[0].shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    out = eye[queries]
    for layer in sorted(chosen if chosen is not None else range(len(layers)), reverse=True):
        p = layers[layer] if heads is None else layers[layer][heads]
        out = out @ (residual * eye + (1 - residual) * p.mean(0))
    return out


def dense_span_pooled(p: torch.Tensor, spans, key_spans) -> torch.Tensor:
    out = torch.zeros(p.shape[0], len(spans), len(key_spans), dtype=torch.float64)
    for i, (a, b) in enumerate(spans):
        for j, (c, d) in enumerate(key_spans):
            out[:, i, j] = p[:, a:b, c:d].sum((1, 2)) / (b - a)
    return out


def dense_shares(layers: list[torch.Tensor]) -> torch.Tensor:
    mass = sum(p.sum((0, 1)) for p in layers)
    seen = sum(p.shape[0] * (p > 0).any(0).sum(0).double() for p in layers)
    return torch.where(seen > 0, mass / seen.clamp(min=1), torch.zeros_like(mass))


# ---- statistics --------------------------------------------------------------------------------
def test_token_statistics_match_dense(case):
    tr, eager, ids = case
    for kind, layers in eager.items():
        stats = tr.head_stats(kind=kind)
        dense = DenseTrace({kind: torch.stack(layers)}, {kind: (tr.query_tokens(kind), tr.key_tokens(kind))})
        dense_stats = dense.head_stats(kind)
        assert set(stats) == set(dense_stats) and {"duplicate_token", "induction"} <= set(stats)
        for layer, p in enumerate(layers):
            expected = dense_token_stats(p, *ids[kind])
            for name, values in expected.items():
                assert_close(stats[name][layer], values, 10 * ATOL, f"{kind} L{layer} {name}")
                assert_close(dense_stats[name][layer], values, 1e-6, f"dense {kind} L{layer} {name}")
            if kind in SELF_KINDS:  # the repeated runs give every head some of each
                assert (expected["duplicate_token"] > 0).all() and (expected["induction"] > 0).all()
        for name in stats:
            assert_close(dense_stats[name], stats[name], 10 * ATOL, f"dense vs trace {kind} {name}")


def test_given_token_ids_are_what_the_statistics_compare(rng):
    tr, _, _ = traced("llama", seed=int(torch.randint(0, 2**31 - 1, (), generator=rng)))
    layers = {kind: [tr.layer_qk(i, kind) for i in range(tr.num_layers)] for kind in tr.kinds}
    tokens = {kind: (tr.query_tokens(kind), tr.key_tokens(kind)) for kind in tr.kinds}
    n = tr.seq_len
    distinct = Trace(layers, tokens, token_ids={"decoder": (torch.arange(n), torch.arange(n))})
    stats = distinct.head_stats()
    assert (stats["duplicate_token"] == 0).all() and (stats["induction"] == 0).all()
    assert_close(stats["self"], tr.head_stats()["self"], 1e-12, "position statistics unchanged")
    with pytest.raises(ValueError, match=r"token ids must be \[\d+\] and \[\d+\]"):
        Trace(layers, tokens, token_ids={"decoder": (torch.arange(3), torch.arange(n))}).head_stats()


# ---- head classes ------------------------------------------------------------------------------
def planted(n: int = 40, run: int = 12) -> tuple[torch.Tensor, list[str]]:
    """One causal layer [1, 8, n, n] whose heads are exactly: previous-token, induction,
    duplicate-token, first-token, self, local (3 keys), diffuse (uniform), mixed; and its tokens
    (a run of distinct words repeated)."""
    ids = (list(range(run)) * (n // run + 1))[:n]
    tokens = [WORDS[i] for i in ids]
    p = torch.zeros(8, n, n, dtype=torch.float64)
    for q in range(n):
        earlier = [j for j in range(q) if ids[j] == ids[q]]
        p[0, q, max(q - 1, 0)] = 1
        p[1, q, earlier[-1] + 1 if earlier else 0] = 1
        p[2, q, earlier[-1] if earlier else q] = 1
        p[3, q, 0] = 1
        p[4, q, q] = 1
        p[5, q, max(0, q - 2) : q + 1] = 1 / len(range(max(0, q - 2), q + 1))
        p[6, q, : q + 1] = 1 / (q + 1)
        p[7, q, 0] += 0.3
        p[7, q, max(0, q - 10)] += 0.35
        p[7, q, q // 2] += 0.35
    return p[None], tokens


def test_head_classes_on_planted_patterns():
    p, tokens = planted()
    tr = DenseTrace({"decoder": p}, {"decoder": (tokens, tokens)})
    assert tr.head_classes() == {(0, h): label for h, label in enumerate(HEAD_CLASSES)}


def test_head_classes_of_a_trace_from_planted_queries_and_keys():
    """Q/K whose logits single out one key per row (30 on it, 0 elsewhere): heads previous-token,
    self, first-token and, with Q = 0, diffuse."""
    n = 24
    eye = torch.eye(n, dtype=torch.float64)
    k = eye[None].repeat(4, 1, 1)  # key j is e_j
    previous = torch.cat([eye[:1], eye[:-1]]) * 60  # query i is 60 e_{i-1}
    q = torch.stack([previous, eye * 60, eye[[0] * n] * 60, torch.zeros(n, n, dtype=torch.float64)])
    tokens = [WORDS[i] for i in range(n)]
    layer = LayerQK(q, k, MaskSpec(scaling=1.0, causal=True))
    tr = Trace({"decoder": [layer]}, {"decoder": (tokens, tokens)})
    classes = tr.head_classes()
    assert classes == {(0, 0): "previous-token", (0, 1): "self", (0, 2): "first-token", (0, 3): "diffuse"}


# ---- sinks -------------------------------------------------------------------------------------
def test_sinks_are_the_keys_with_a_large_mean_share(case):
    tr, eager, _ = case
    for kind, layers in eager.items():
        expected = dense_shares(layers)
        assert_close(key_shares(tr, kind), expected, 10 * ATOL, f"{kind} shares")
        threshold = float(expected.max()) * 0.6
        assert tr.sinks(threshold, kind=kind) == [int(k) for k in torch.nonzero(expected >= threshold)]
    for bad in (0, 1.5, -0.1, True, "0.2"):
        with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\]"):
            tr.sinks(bad)


def test_sinks_find_a_planted_sink():
    p, tokens = planted()
    p = p.clone()
    p[0, :, :, 0] += 1.0  # every head gives key 0 half its mass (plus what it gave before)
    p = p / p.sum(-1, keepdim=True)
    tr = DenseTrace({"decoder": p}, {"decoder": (tokens, tokens)})
    assert tr.sinks(0.5) == [0]
    assert tr.renormalized(tr.sinks(0.5)).sinks(0.5) == []


# ---- renormalised traces -----------------------------------------------------------------------
def _excluded(kind: str, lk: int) -> list[int]:
    return [0, lk // 2, lk - 1]


def test_renormalized_trace_every_view_matches_dense(case):
    tr, eager, ids = case
    for kind in tr.kinds:
        lk = tr.shape(kind)[3]
        keys = _excluded(kind, lk)
        renorm = tr.renormalized(keys, kind=kind)
        expected = {
            k: [dense_renormalized(p, keys) for p in layers] if k == kind else layers
            for k, layers in eager.items()
        }
        check_views(renorm, expected)  # attention, pooled, received, top-k, neuron, statistics
        stats = renorm.head_stats(kind=kind)
        for layer, p in enumerate(expected[kind]):
            for name, values in dense_token_stats(p, *ids[kind]).items():
                assert_close(stats[name][layer], values, 10 * ATOL, f"renormalized {kind} L{layer} {name}")
        if kind in SELF_KINDS:
            got = renorm.rollout([1, lk - 2], 0.5, kind=kind)
            assert_close(got, dense_rollout(expected[kind], [1, lk - 2], 0.5), 10 * ATOL, f"{kind} rollout")
        spans = [(0, 3), (3, tr.shape(kind)[2])]
        ks = spans if kind in SELF_KINDS else [(0, 2), (2, 5)]
        got = renorm.span_pooled(spans, kind=kind, key_spans=ks)
        for layer, p in enumerate(expected[kind]):
            assert_close(got[layer], dense_span_pooled(p, spans, ks), 10 * ATOL, f"{kind} span_pooled")
        dense = DenseTrace(
            {kind: torch.stack(eager[kind])}, {kind: (tr.query_tokens(kind), tr.key_tokens(kind))}
        )
        assert_close(
            dense.renormalized(keys).attention(1, 0), expected[kind][1][0], 1e-6, "dense renormalized"
        )
    if "decoder" in eager and "encoder" not in eager:  # causal: query 0 saw key 0 only, now nothing
        assert (tr.renormalized([0]).attention(0, 0)[0] == 0).all()


def test_renormalized_with_attention_sinks_keeps_the_sink_logit(rng):
    """gpt-oss: the sink logit stays in every row's denominator, so rows sum to 1 minus the sink's
    share after renormalising too, and a row whose keys are all left out gives the sink everything."""
    tr, eager, _ = traced("gpt_oss", seed=int(torch.randint(0, 2**31 - 1, (), generator=rng)))
    keys = [0, 5, tr.seq_len - 1]
    expected = {"decoder": [dense_renormalized(p, keys) for p in eager["decoder"]]}
    renorm = tr.renormalized(keys)
    check_views(renorm, expected)
    assert (renorm.attention(1, 0)[0] == 0).all()  # row 0 had key 0 only: the sink takes all
    assert float(renorm.attention(1, 0).sum(-1).max()) < 1


def test_renormalized_refuses_bad_keys(case):
    tr, _, _ = case
    lk = tr.shape()[3]
    with pytest.raises(IndexOutOfRange, match=rf"key position must be in \[-{lk}, {lk}\)"):
        tr.renormalized([lk])
    with pytest.raises(ValueError, match="list of key positions"):
        tr.renormalized(3)
    assert torch.equal(tr.renormalized([]).attention(0, 0), tr.attention(0, 0))


# ---- rollout -----------------------------------------------------------------------------------
def test_rollout_matches_dense_products(case):
    tr, eager, _ = case
    for kind, layers in eager.items():
        n = tr.shape(kind)[2]
        if kind not in SELF_KINDS:
            with pytest.raises(ValueError, match="rollout needs self-attention"):
                tr.rollout([0], kind=kind)
            continue
        queries = [n - 1, 0, n // 2]
        for residual, heads, chosen in (
            (0.0, None, None),
            (0.5, [0, 2], None),
            (0.5, [3], [1]),
            (1.0, None, None),
        ):
            got = tr.rollout(queries, residual, heads=heads, kind=kind, layers=chosen)
            expected = dense_rollout(layers, queries, residual, heads, chosen)
            assert got.dtype == torch.float32 and got.shape == (3, n)
            assert_close(
                got, expected, 10 * ATOL, f"{kind} rollout r={residual} heads={heads} layers={chosen}"
            )
            assert_close(got.sum(-1), expected.sum(-1), 10 * ATOL, "rows keep their mass")


def test_rollout_refuses_bad_arguments(case):
    tr, _, _ = case
    n = tr.seq_len
    with pytest.raises(ValueError, match=r"residual must be a number in \[0, 1\]"):
        tr.rollout([0], residual=1.5)
    with pytest.raises(ValueError, match="queries is empty"):
        tr.rollout([])
    with pytest.raises(IndexOutOfRange, match=rf"query must be in \[0, {n}\), got {n}"):
        tr.rollout([n])
    with pytest.raises(ValueError, match="layers must be distinct"):
        tr.rollout([0], layers=[1, 1])


# ---- span maps ---------------------------------------------------------------------------------
def test_span_pooled_with_uneven_spans_matches_dense(case):
    tr, eager, _ = case
    for kind, layers in eager.items():
        _, _, lq, lk = tr.shape(kind)
        spans = [(4, 11), (0, 1), (13, lq), (1, 4)]  # uneven, unordered, 11-13 in none
        given = None if kind in SELF_KINDS else [(6, lk), (0, 6)]  # cross: spans of the keys' own text
        key_spans = given or spans
        got = tr.span_pooled(spans, kind=kind, key_spans=given)
        assert got.shape == (2, 4, 4, len(key_spans))
        for layer, p in enumerate(layers):
            assert_close(got[layer], dense_span_pooled(p, spans, key_spans), 10 * ATOL, f"{kind} L{layer}")
        some = tr.span_pooled(spans, layers=[1], heads=[3, 1], kind=kind, key_spans=given)
        assert_close(some[0], got[1, [3, 1]], 1e-6, f"{kind} selection")


@pytest.mark.parametrize(
    ("spans", "message"),
    [
        ([(0, 5), (4, 8)], r"spans \(0, 5\) and \(4, 8\) overlap"),
        ([(0, 99)], r"0 <= start < stop <= \d+"),
        ([(3, 3)], r"0 <= start < stop"),
        ([(-1, 2)], r"0 <= start < stop"),
        ([], "spans is empty"),
        ([(0, 1.5)], "pair of ints"),
        ("0:5", "list of"),
    ],
)
def test_span_pooled_refuses_bad_spans(case, spans, message):
    tr, _, _ = case
    with pytest.raises(ValueError, match=message):
        tr.span_pooled(spans)


def test_sentence_spans_split_on_sentence_ending_tokens():
    tokens = ["[CLS]", "the", "cat", "sat", ".", "it", "purred", "!", "[SEP]"]
    assert sentence_spans(tokens) == [(0, 5), (5, 9)]
    assert sentence_spans(["<s>", "ĠHi", "Ġthere", ".", "ĠBye", "?", '"', "</s>"]) == [(0, 4), (4, 8)]
    assert sentence_spans(["▁No", "▁end", "▁here"]) == [(0, 3)]
    pair = ["[CLS]", "a", "b", "[SEP]", "c", "d", "[SEP]"]
    assert sentence_spans(pair, sentence_b_start=4) == [(0, 4), (4, 7)]
    tr = DenseTrace(
        {"encoder": torch.full((1, 1, 9, 9), 1 / 9, dtype=torch.float64)}, {"encoder": (tokens, tokens)}
    )
    assert tr.sentence_spans() == [(0, 5), (5, 9)]
    assert tr.span_pooled(tr.sentence_spans()).shape == (1, 1, 2, 2)


# ---- the Triton path ---------------------------------------------------------------------------
@pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("family", ["llama", "bart"])
def test_triton_backend_analysis_matches_eager(family, rng, monkeypatch):
    """Statistics, renormalised views, rollout and span maps on the Triton kernels (interpreted on
    the CPU), float32."""
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "triton")
    assert backend.backend_name(torch.device("cpu")) == "triton"
    tr, eager, ids = traced(family, torch.float32, seed=int(torch.randint(0, 2**31 - 1, (), generator=rng)))
    kind = tr.default_kind
    layers = [p.double() for p in eager[kind]]
    stats = tr.head_stats(kind=kind)
    for layer, p in enumerate(layers):
        for name, values in dense_token_stats(p, *ids[kind]).items():
            assert_close(stats[name][layer], values, 10 * ATOL, f"triton {kind} L{layer} {name}")
    n = tr.seq_len
    assert_close(
        tr.rollout([n - 1, 3], 0.5), dense_rollout(layers, [n - 1, 3], 0.5), 10 * ATOL, "triton rollout"
    )
    spans = [(0, 2), (2, 9), (9, n)]
    got = tr.span_pooled(spans)
    for layer, p in enumerate(layers):
        assert_close(got[layer], dense_span_pooled(p, spans, spans), 10 * ATOL, "triton span_pooled")
    keys = [0, n // 2]
    renorm = tr.renormalized(keys)
    for layer, p in enumerate(layers):
        dense = dense_renormalized(p, keys)
        assert_close(renorm.attention(layer, 1), dense[1], ATOL, "triton renormalized attention")
        assert_close(
            renorm.received(layers=[layer])[0], dense.sum(1), 10 * ATOL, "triton renormalized received"
        )


@pytest.mark.parametrize(
    "facts",
    [
        {},
        {"causal": True},
        {"causal": True, "window": 4},
        {"window": 3},
        {"causal": True, "window": 5, "padding": True},
        {"padding": True},
        {"causal": True, "chunk": 4},
    ],
)
@pytest.mark.parametrize(("lq", "lk"), [(13, 13), (9, 15)])
def test_visible_counts_match_the_mask(facts, lq, lk):
    from attnscope.extract.analysis import visible_counts

    facts = dict(facts)
    if facts.pop("padding", False):
        real = torch.ones(lk, dtype=torch.bool)
        real[[0, 3, lk - 1]] = False
        facts["key_padding"] = real[None]
    spec = MaskSpec(scaling=1.0, **facts)
    allowed = spec.allowed(torch.arange(lq), torch.arange(lk))
    allowed = torch.ones(lq, lk, dtype=torch.bool) if allowed is None else allowed
    rows, cols = visible_counts(spec, lq, lk, "cpu")
    assert rows.tolist() == allowed.sum(1).tolist() and cols.tolist() == allowed.sum(0).tolist()


def test_sentence_spans_come_from_the_texts_offsets():
    """The word tokenizer turns "w3." into [UNK]: only the character offsets find the sentences.
    "Dr." does not end one; the pair's text starts its own."""
    model = build("bert")
    tok = word_tokenizer()
    tr = Extractor(model, tok).trace("w1 w2 w3. w4 w5! Dr. w6 w7", pair="w8 w9. w10")
    assert tr.tokens[3] == "[UNK]" and tr.sentence_b_start == 10
    assert tr.sentence_spans() == [(0, 4), (4, 6), (6, 10), (10, 12), (12, 14)]
    assert tr.renormalized([0]).sentence_spans() == tr.sentence_spans()
    assert tr.span_pooled(tr.sentence_spans()).shape == (2, 4, 5, 5)
