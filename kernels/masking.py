"""The one description of an attention mask, shared by capture, the torch backend and the kernels.

A mask is never stored as an L×L tensor. It is a handful of facts about one attention call,
and `allowed(q_idx, k_idx)` turns them into a boolean block for exactly the indices asked for:

* ``causal``: key ``k`` is visible to query ``q`` only if ``k <= q`` (transformers'
  ``causal_mask_function``; query and key positions share one origin, as in a self-attention
  call without a cache).
* ``window``: sliding window of ``window`` keys including the query itself: ``q - k < window``
  (transformers' ``sliding_window_overlay``: ``kv_idx > q_idx - sliding_window``). Only meaningful
  together with ``causal``; in a bidirectional call it bounds ``|q - k| < window``.
* ``chunk``: chunked attention of ``chunk`` positions: ``k`` is visible to ``q`` only if both lie in
  the same chunk, ``(q - start) // chunk == (k - start) // chunk`` (transformers'
  ``chunked_overlay``, Llama 4's ``attention_chunk_size``), on top of ``causal``. ``chunk_start``
  (``[B]`` int64, or ``None`` for 0) is where each batch item's first chunk begins: transformers
  starts the chunks at a left-padded item's first real token.
* ``segments``: ``[B, L]`` int64, packed sequences: ``k`` is visible to ``q`` only if both carry the
  same segment id (transformers' ``packed_sequence_mask_function``, several documents in one
  row). Self-attention only (queries and keys share positions); ids are non-decreasing along L.
* ``groups``: ``[B, L]`` int64, bidirectional groups: a pair whose query and key carry the same
  non-zero group id is visible whatever ``causal``, ``window`` and ``chunk`` say (a prefix-LM's
  prefix, an image's tokens: transformers' ``or_mask_function`` / ``blockwise_overlay``); 0 = no
  group. Padding and segments still apply. Self-attention only.
* ``bias``: ``[Hq, n]`` additive logit bias per query head by relative offset: the pair ``(q, k)``
  gets ``bias[h, k - q + bias_origin]`` (T5's relative position buckets, looked up once per
  offset with the model's own bucket function and table, so no L×L bias is ever kept). Offsets
  are in the call's own positions, so cutting the same start off queries and keys keeps them.
* ``key_padding``: ``[B, Lk]`` bool, True where a key is a real token (the 2-D padding form that
  transformers hands to FlashAttention). ``None`` once a trace holds a single unpadded sequence.
* ``softcap``: logits become ``softcap * tanh(s / softcap)`` after scaling, before masking
  (Gemma 2's ``attn_logit_softcapping``).
* ``sinks``: one extra logit per query head that joins every row's softmax denominator but is
  not a key (gpt-oss ``s_aux``); rows then sum to less than one.
* ``scaling``: the multiplier of q·k, taken from the model's call, never recomputed.

Order, as transformers composes its masks: ``(causal & window & chunk) | same group``, then
``& same segment & key padding``; logits are ``softcap(scaling · q·k) + bias``.

A row whose keys are all masked (a padded query row) is *empty*: its log-sum-exp is ``-inf``
and every view reports zeros for it, never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import torch


@dataclass(frozen=True)
class MaskSpec:
    """What one attention call may see, and how its logits are formed (see module docstring)."""

    scaling: float
    causal: bool = False
    window: int | None = None
    softcap: float | None = None
    sinks: torch.Tensor | None = None  # [Hq], one logit per query head, in the model's dtype
    key_padding: torch.Tensor | None = None  # [B, Lk] bool, True = real token
    chunk: int | None = None  # chunked attention: chunks of this many positions
    chunk_start: torch.Tensor | None = None  # [B] int64, where chunk 0 begins; None = 0
    segments: torch.Tensor | None = None  # [B, L] int64, packed sequence id per position
    groups: torch.Tensor | None = None  # [B, L] int64, bidirectional group per position, 0 = none
    bias: torch.Tensor | None = None  # [Hq, n] additive bias by relative offset k - q + bias_origin
    bias_origin: int = 0

    def __post_init__(self) -> None:
        if self.segments is not None and bool((self.segments.diff(dim=-1) < 0).any()):
            raise ValueError("packed-sequence ids must be non-decreasing along the sequence")
        if self.window is not None and self.window < 1:
            raise ValueError(f"sliding window must be >= 1 key, got {self.window}")
        if self.chunk is not None and self.chunk < 1:
            raise ValueError(f"attention chunk must be >= 1 position, got {self.chunk}")
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"softcap must be > 0, got {self.softcap}")

    def for_batch_item(self, b: int, keys: slice) -> MaskSpec:
        """The spec of one sequence cut out of a padded batch: padding is gone by construction."""
        if self.key_padding is not None and not bool(self.key_padding[b, keys].all()):
            raise ValueError("the key range kept for a batch item must contain only real tokens")
        start = None
        if self.chunk_start is not None:  # the item's own positions start at keys.start
            shifted = int(self.chunk_start[b]) - (keys.start or 0)
            start = torch.tensor([shifted], dtype=torch.long) if shifted else None
        per_position = {
            name: getattr(self, name)[b : b + 1, keys]
            for name in ("segments", "groups")
            if getattr(self, name) is not None
        }
        return replace(self, key_padding=None, chunk_start=start, **per_position)

    def _chunk_origin(self, batch: int) -> int:
        return 0 if self.chunk_start is None else int(self.chunk_start[batch])

    def for_heads(self, heads: list[int]) -> MaskSpec:
        """The spec of the query heads `heads` (in that order) taken out of a call: the per-head
        sink logits follow them; every other fact is shared by all heads."""
        per_head = {
            name: getattr(self, name) for name in ("sinks", "bias") if getattr(self, name) is not None
        }
        if not per_head:
            return self
        count = next(iter(per_head.values())).shape[0]
        bad = [h for h in heads if not 0 <= h < count]
        if bad:
            raise ValueError(f"query heads must be in [0, {count}), got {bad}")
        return replace(self, **{name: t[list(heads)] for name, t in per_head.items()})

    def torch_only(self) -> list[str]:
        """The facts of this spec the Triton kernels do not take yet (the torch twin takes all):
        none, the kernels take every fact now (kernels/triton_common.mask_args)."""
        return []

    def allowed(self, q_idx: torch.Tensor, k_idx: torch.Tensor, batch: int = 0) -> torch.Tensor | None:
        """Boolean block [len(q_idx), len(k_idx)] of visible (query, key) pairs; None if all are visible."""
        block = None
        if self.causal or self.window is not None:
            diff = q_idx[:, None] - k_idx[None, :]
            if self.causal:
                block = diff >= 0
            if self.window is not None:
                inside = diff < self.window if self.causal else diff.abs() < self.window
                block = inside if block is None else block & inside
        if self.chunk is not None:
            origin = self._chunk_origin(batch)
            same = (q_idx[:, None] - origin).div(self.chunk, rounding_mode="floor") == (
                k_idx[None, :] - origin
            ).div(self.chunk, rounding_mode="floor")
            block = same if block is None else block & same
        if self.groups is not None and block is not None:
            g = self.groups[batch].to(k_idx.device)
            gq = g[q_idx][:, None]
            block = block | ((gq == g[k_idx][None, :]) & (gq != 0))
        if self.segments is not None:
            seg = self.segments[batch].to(k_idx.device)
            same_seg = seg[q_idx][:, None] == seg[k_idx][None, :]
            block = same_seg if block is None else block & same_seg
        if self.key_padding is not None:
            real = self.key_padding[batch].to(k_idx.device)[k_idx][None, :]
            block = real.expand(len(q_idx), -1) if block is None else block & real
        return block

    def allowed_pairs(self, q_idx: torch.Tensor, k_idx: torch.Tensor, batch: int = 0) -> torch.Tensor:
        """Bool [N]: whether each pair (q_idx[i], k_idx[i]) is visible (1-D index tensors of equal length)."""
        diff = q_idx - k_idx
        ok = torch.ones_like(diff, dtype=torch.bool)
        if self.causal:
            ok &= diff >= 0
        if self.window is not None:
            ok &= diff < self.window if self.causal else diff.abs() < self.window
        if self.chunk is not None:
            origin = self._chunk_origin(batch)
            ok &= (q_idx - origin).div(self.chunk, rounding_mode="floor") == (k_idx - origin).div(
                self.chunk, rounding_mode="floor"
            )
        if self.groups is not None:
            g = self.groups[batch].to(k_idx.device)
            ok |= (g[q_idx] == g[k_idx]) & (g[q_idx] != 0)
        if self.segments is not None:
            seg = self.segments[batch].to(k_idx.device)
            ok &= seg[q_idx] == seg[k_idx]
        if self.key_padding is not None:
            ok &= self.key_padding[batch].to(k_idx.device)[k_idx]
        return ok

    def key_range(self, q_start: int, q_stop: int, num_keys: int) -> tuple[int, int]:
        """The smallest key interval holding every key visible to queries [q_start, q_stop)."""
        lo, hi = 0, num_keys
        if self.causal:
            hi = min(hi, q_stop)
        if self.window is not None:
            lo = max(0, q_start - self.window + 1)
            if not self.causal:
                hi = min(hi, q_stop + self.window - 1)
        if self.chunk is not None:  # from the chunk of q_start to the end of the chunk of q_stop - 1
            origins = [0] if self.chunk_start is None else [int(s) for s in self.chunk_start]
            c = self.chunk
            lo = max(lo, min(((q_start - o) // c) * c + o for o in origins), 0)
            if not self.causal:
                hi = min(hi, max(((q_stop - 1 - o) // c + 1) * c + o for o in origins))
        if self.groups is not None:  # a group's keys may lie before a window or after the query
            group_lo, group_hi = self._group_reach
            lo = min(lo, int(group_lo[:, q_start:q_stop].min()))
            hi = max(hi, min(num_keys, int(group_hi[:, q_start:q_stop].max())))
        if self.segments is not None:  # nothing outside the segments of the first and last rows
            seg_lo, seg_hi = self._segment_reach
            lo = max(lo, int(seg_lo[:, q_start].min()))
            hi = min(hi, int(seg_hi[:, q_stop - 1].max()))
        return lo, max(lo, hi)

    def masked_columns(self, q_start: int, q_stop: int, k_start: int, k_stop: int) -> tuple[int, int]:
        """A key interval [j0, j1) inside [k_start, k_stop) outside which every key is visible to
        every query of [q_start, q_stop): a chunk's mask need only be applied there. Empty when
        nothing is masked; for a plain causal mask, the keys after q_start (the diagonal block)."""
        if not (self.causal or self.window is not None or self.chunk is not None) and (
            self.segments is None and self.key_padding is None
        ):
            return k_start, k_start  # groups alone widen a mask; without one they change nothing
        plain_causal = self.causal and all(
            getattr(self, name) is None for name in ("window", "chunk", "segments", "key_padding", "groups")
        )
        if plain_causal:  # keys k <= q_start are visible to every row q >= q_start
            return min(k_stop, max(k_start, q_start + 1)), k_stop
        return k_start, k_stop

    @cached_property
    def _group_reach(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _extent(self.groups, zero_is_alone=True)

    @cached_property
    def _segment_reach(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _extent(self.segments, zero_is_alone=False)

    def bias_block(self, heads: torch.Tensor, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
        """The additive bias [len(heads), len(q_idx), len(k_idx)] of those heads and pairs."""
        offset = k_idx[None, :] - q_idx[:, None] + self.bias_origin
        return self.bias.to(q_idx.device)[heads][:, offset]

    def logits(
        self,
        raw_dot: torch.Tensor,
        heads: torch.Tensor | None = None,
        q_idx: torch.Tensor | None = None,
        k_idx: torch.Tensor | None = None,
        scaled: bool = False,
    ) -> torch.Tensor:
        """Scaled (and soft-capped) logits from raw q·k [h, cq, ck], before masking; with a
        `bias`, the heads and positions of the block are needed to add it. `scaled`: raw_dot
        already holds the scaling (folded into the queries)."""
        s = raw_dot if scaled else raw_dot * self.scaling
        if self.softcap is not None:
            s = torch.tanh(s / self.softcap) * self.softcap
        if self.bias is not None:
            if heads is None or q_idx is None or k_idx is None:
                raise ValueError("a spec with a position bias needs the heads and positions of its logits")
            s = s + self.bias_block(heads, q_idx, k_idx).to(s.dtype)
        return s


def _extent(ids: torch.Tensor, zero_is_alone: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, L], [B, L]): the first position and one past the last position carrying each
    position's id; with `zero_is_alone`, id 0 marks a position in no group (its own extent)."""
    b, n = ids.shape
    pos = torch.arange(n, device=ids.device).expand(b, n)
    lo, hi = pos.clone(), pos + 1
    for i in range(b):
        uniq, inverse = torch.unique(ids[i], return_inverse=True)
        first = torch.full((len(uniq),), n, dtype=torch.long, device=ids.device)
        last = torch.full((len(uniq),), -1, dtype=torch.long, device=ids.device)
        first = first.scatter_reduce(0, inverse, pos[i], "amin")
        last = last.scatter_reduce(0, inverse, pos[i], "amax")
        keep = (ids[i] != 0) if zero_is_alone else torch.ones(n, dtype=torch.bool, device=ids.device)
        lo[i] = torch.where(keep, first[inverse], lo[i])
        hi[i] = torch.where(keep, last[inverse] + 1, hi[i])
    return lo, hi
