"""transformers' eager attention as the dense truth, and a check of every Trace view against it."""

from __future__ import annotations

import torch

from reference import STATS, assert_close, dense_entropy, dense_head_stats, dense_pooled
from tiny_models import CAUSAL

ATOL = 1e-5


def eager_attentions(model, ids, token_types=None, decoder_ids=None) -> dict[str, list[torch.Tensor]]:
    """kind -> per-layer [H, Lq, Lk] float64 from transformers' eager attention (batch of one)."""
    model.set_attn_implementation("eager")
    kwargs = {"input_ids": ids, "output_attentions": True}
    if token_types is not None:
        kwargs["token_type_ids"] = token_types
    if decoder_ids is not None:
        kwargs["decoder_input_ids"] = decoder_ids
    with torch.no_grad():
        out = model(**kwargs, use_cache=False)
    if decoder_ids is not None:
        return {
            "encoder": [a[0] for a in out.encoder_attentions],
            "decoder": [a[0] for a in out.decoder_attentions],
            "cross": [a[0] for a in out.cross_attentions],
        }
    kind = "decoder" if model.config.model_type.replace("-", "_") in CAUSAL else "encoder"
    return {kind: [a[0] for a in out.attentions]}


def decoder_inputs(model, ids):
    return torch.cat([torch.tensor([[model.config.decoder_start_token_id]]), ids[:, :-1]], dim=1)


def check_views(tr, eager: dict[str, list[torch.Tensor]]) -> None:
    """Every Trace view against the dense eager tensors."""
    assert set(tr.kinds) == set(eager)
    for kind, layers in eager.items():
        assert layers, f"no eager attentions of kind {kind}: is the reference model on eager?"
        assert tr.shape(kind)[:2] == (len(layers), layers[0].shape[0])
        stats = tr.head_stats(kind=kind)
        for layer, p in enumerate(layers):
            h, lq, _lk = p.shape
            for head in range(h):
                assert_close(tr.attention(layer, head, kind=kind), p[head], ATOL, f"{kind} L{layer}H{head}")
            assert_close(
                tr.pooled(5, layers=layer, kind=kind)[0], dense_pooled(p, 5, 5), ATOL, f"{kind} pooled"
            )
            assert_close(tr.received(layers=[layer], kind=kind)[0], p.sum(1), 10 * ATOL, f"{kind} received")
            sinks = tr.layer_qk(layer, kind).spec.sinks  # the sink share is an outcome of the entropy
            expected = dense_head_stats(p, sinks)
            for name in STATS:
                assert_close(stats[name][layer], expected[name], 10 * ATOL, f"{kind} L{layer} {name}")
            _lse, ent = tr.row_stats(layer, kind=kind)
            assert_close(ent, dense_entropy(p, sinks), 10 * ATOL, f"{kind} L{layer} entropy")
            head, row = h - 1, lq - 2
            idx, probs = tr.topk(3, layer, head, queries=slice(row, row + 1), kind=kind)
            assert_close(probs[0], p[head, row].sort(descending=True).values[:3], ATOL, "topk probs")
            assert_close(p[head, row, idx[0]], probs[0], ATOL, "topk indices")
            view = tr.neuron(layer, head, row, kind=kind)
            assert_close(view.probs, p[head, row], ATOL, "neuron probs")
