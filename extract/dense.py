"""`DenseTrace`: the Trace interface over attention tensors a user already has (bertviz's input:
`output_attentions` from an eager run), so the same views and files serve them.

Pooled maps and head statistics are computed by the same functions as the kernels' torch twin
(`kernels.pooled.add_blocks` / `finish_blocks`, `kernels.headstats.chunk_terms` and
`reduce_head_stats`), over the whole matrix as one chunk; there are no q/k vectors, so there is
no neuron view. The head analysis (extract/analysis.py) runs on the same primitives as a Trace's,
here dense products over P; a key is visible to a query where any head gives it mass (P > 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ..kernels.facts import DEFAULT_POOLED_SIZE
from ..kernels.headstats import HEAD_STAT_NAMES, chunk_terms, chunk_token_terms, reduce_head_stats
from ..kernels.pooled import add_blocks, block_of, finish_blocks
from . import analysis
from .selection import IndexOutOfRange, choose, index, span
from .trace import KINDS, TokensByKind


def _stack(attention: Sequence[torch.Tensor], what: str) -> torch.Tensor:
    """Per-layer [1, H, Lq, Lk] (or [H, Lq, Lk]) tensors -> [layers, H, Lq, Lk] float64."""
    if attention is None or len(attention) == 0:
        raise ValueError(f"{what} must be a non-empty tuple of per-layer attention tensors")
    layers = []
    for i, a in enumerate(attention):
        a = torch.as_tensor(a).detach().cpu().double()
        if a.dim() == 4:
            if a.shape[0] != 1:
                raise ValueError(f"{what}[{i}] has batch size {a.shape[0]}; pass one input (batch size 1)")
            a = a[0]
        if a.dim() != 3:
            raise ValueError(f"{what}[{i}] must be [1, heads, queries, keys], got shape {tuple(a.shape)}")
        layers.append(a)
    return torch.stack(layers)


class DenseTrace(TokensByKind):
    """Views of given attention probabilities, per kind: "encoder", "decoder", "cross"."""

    #: How the attention was obtained: given dense probabilities (eager `output_attentions`).
    method = "eager"

    def __init__(
        self,
        attention: dict[str, torch.Tensor],
        tokens: dict[str, tuple[list[str], list[str]]],
        sentence_b_start: int | None = None,
        token_ids: dict | None = None,
    ) -> None:
        """`token_ids`: kind -> (query ids, key ids), as for `Trace`."""
        self._p = self._by_kind = attention  # kind -> [layers, H, Lq, Lk] float64
        self._tokens = tokens
        self._given_ids = token_ids
        self._ids = None
        self.sentence_b_start = sentence_b_start
        self.default_kind = next(k for k in KINDS if k in attention)
        for kind, p in attention.items():
            lq, lk = len(tokens[kind][0]), len(tokens[kind][1])
            if p.shape[-2:] != (lq, lk):
                raise ValueError(
                    f"{kind} attention is {tuple(p.shape[-2:])} but there are {lq} × {lk} tokens"
                )

    @classmethod
    def from_bertviz(
        cls,
        attention=None,
        tokens=None,
        sentence_b_start=None,
        encoder_attention=None,
        decoder_attention=None,
        cross_attention=None,
        encoder_tokens=None,
        decoder_tokens=None,
        include_layers: Iterable[int] | None = None,
        include_heads: Iterable[int] | None = None,
    ):
        """bertviz's arguments: `attention` + `tokens`, or the encoder/decoder/cross variants."""
        if attention is not None:
            if tokens is None:
                raise ValueError("tokens are required with attention")
            tensors = {"encoder": _stack(attention, "attention")}
            toks = {"encoder": (list(tokens), list(tokens))}
        else:
            if encoder_attention is None and decoder_attention is None:
                raise ValueError("pass attention, or encoder_attention / decoder_attention / cross_attention")
            tensors, toks = {}, {}
            if encoder_attention is not None:
                tensors["encoder"] = _stack(encoder_attention, "encoder_attention")
                toks["encoder"] = (list(encoder_tokens), list(encoder_tokens))
            if decoder_attention is not None:
                tensors["decoder"] = _stack(decoder_attention, "decoder_attention")
                toks["decoder"] = (list(decoder_tokens), list(decoder_tokens))
            if cross_attention is not None:
                tensors["cross"] = _stack(cross_attention, "cross_attention")
                toks["cross"] = (list(decoder_tokens), list(encoder_tokens))
        for kind, p in tensors.items():
            if include_layers is not None:
                p = p[choose(list(include_layers), p.shape[0], "include_layers")]
            if include_heads is not None:
                p = p[:, choose(list(include_heads), p.shape[1], "include_heads")]
            tensors[kind] = p
        return cls(tensors, toks, sentence_b_start)

    # ---- the Trace interface used by views and exports ---------------------------------------
    def shape(self, kind: str | None = None) -> tuple[int, int, int, int]:
        return tuple(self._p[self._kind(kind)].shape)  # type: ignore[return-value]

    def attention(
        self, layer: int, head: int, queries=None, keys=None, kind: str | None = None
    ) -> torch.Tensor:
        p = self._p[self._kind(kind)]
        layer = index(layer, p.shape[0], "layer")
        head = index(head, p.shape[1], "head")
        q, k = span(queries, p.shape[2], "queries"), span(keys, p.shape[3], "keys")
        return p[layer, head, q.start : q.stop, k.start : k.stop].float()

    def pooled(
        self, size: int = DEFAULT_POOLED_SIZE, layers=None, heads=None, kind: str | None = None
    ) -> torch.Tensor:
        p = self._p[self._kind(kind)]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        p = p[choose(layers, p.shape[0], "layer")][:, choose(heads, p.shape[1], "head")]
        lq, lk = p.shape[-2:]
        sq, sk = min(size, lq), min(size, lk)
        maps = []
        for layer in p:  # [H, Lq, Lk]
            acc = torch.zeros(layer.shape[0], sq, sk, dtype=torch.float64)
            add_blocks(acc, layer, block_of(lq, sq), block_of(lk, sk))
            maps.append(finish_blocks(acc, lq, sq))
        return torch.stack(maps)

    def head_stats(self, kind: str | None = None) -> dict[str, torch.Tensor]:
        kind = self._kind(kind)
        p = self._p[kind]  # [layers, H, Lq, Lk]
        q_ids, k_ids = self.token_ids(kind)
        out = {name: [] for name in HEAD_STAT_NAMES}
        for layer in p:
            mass = layer.sum(-1)
            lse = torch.where(mass > 0, torch.zeros_like(mass), torch.full_like(mass, float("-inf")))
            entropy = torch.where(
                layer > 0, -layer * layer.clamp_min(1e-300).log(), torch.zeros_like(layer)
            ).sum(-1)
            terms = chunk_terms(layer, 0, 0)
            visible = (layer > 0).any(0)  # the mask, as far as P shows it
            token_terms = chunk_token_terms(layer, visible, q_ids, k_ids, 0, 0, mass > 0)
            for name, values in reduce_head_stats(lse, entropy, terms, token_terms).items():
                out[name].append(values)
        return {name: torch.stack(v) for name, v in out.items()}

    def head_dim(self, kind: str | None = None) -> int:
        """0: attention tensors hold no query/key vectors."""
        self._kind(kind)
        return 0

    def num_key_heads(self, kind: str | None = None) -> int:
        return self.shape(kind)[1]

    def received(self, layers=None, heads=None, kind: str | None = None) -> torch.Tensor:
        """Attention each key receives (column sums) [layers, heads, Lk]."""
        p = self._p[self._kind(kind)]
        p = p[choose(layers, p.shape[0], "layer")][:, choose(heads, p.shape[1], "head")]
        return p.sum(2).float()

    def topk(self, k: int, layer: int, head: int, queries=None, kind: str | None = None):
        """(indices int64 [q, k], probs float32 [q, k]); keys with probability 0 count as not
        visible, so rows with fewer than k such keys are padded with -1 and 0 (as Trace.topk)."""
        p = self._p[self._kind(kind)]
        lk = p.shape[3]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= lk:
            raise IndexOutOfRange(f"k must be an int in [1, {lk}], got {k!r}")
        rows = span(queries, p.shape[2], "queries")
        block = p[index(layer, p.shape[0], "layer"), index(head, p.shape[1], "head"), rows.start : rows.stop]
        probs, idx = block.topk(k, dim=-1)
        visible = probs > 0
        return torch.where(visible, idx, torch.full_like(idx, -1)), torch.where(visible, probs, 0.0).float()

    def renormalized(self, exclude_keys, kind: str | None = None) -> DenseTrace:
        """As `Trace.renormalized`: the keys left out, each row divided by 1 - Σ_E P."""
        keys = analysis.by_kind(self, exclude_keys, kind)
        p = {k: analysis.renormalize_probs(v, keys[k]) if keys.get(k) else v for k, v in self._p.items()}
        return self._carry_text_facts(DenseTrace(p, self._tokens, self.sentence_b_start, self._given_ids))

    # ---- analysis' primitives ----------------------------------------------------------------
    def _device(self, kind: str) -> torch.device:
        return torch.device("cpu")

    def _dtype(self, kind: str) -> torch.dtype:
        return torch.float64

    def _has_sink(self, layer: int, kind: str) -> bool:
        return False

    def _visibility(self, layer: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        visible = (self._p[kind][layer] > 0).any(0)  # [Lq, Lk]
        return visible.sum(1), visible.sum(0)

    def _weighted_received(self, layer: int, heads: list[int], weights: torch.Tensor, kind: str):
        return torch.einsum("hq,hqk->hk", weights.double(), self._p[kind][layer, heads])

    def _span_sums(self, layer: int, heads: list[int], blocks, kind: str):
        q_block, k_block, nq, nk = blocks
        onehot_q = (q_block[:, None] == torch.arange(nq)[None, :]).double()  # -1 matches nothing
        onehot_k = (k_block[:, None] == torch.arange(nk)[None, :]).double()
        return onehot_q.T @ self._p[kind][layer, heads] @ onehot_k

    def nbytes(self) -> int:
        """Memory the kept probabilities take."""
        return sum(p.numel() * p.element_size() for p in self._p.values())

    def bytes_by_device(self) -> dict[str, int]:
        """The kept probabilities' bytes, all on the CPU."""
        return {"cpu": self.nbytes()}

    def neuron(self, *args, **kwargs):
        raise ValueError(
            "attention tensors hold no query/key vectors: use attnscope.neuron_view(model, tokenizer, ...)"
        )

    def layer_qk(self, *args, **kwargs):
        return self.neuron()
