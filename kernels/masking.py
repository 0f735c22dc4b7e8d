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
* ``key_padding``: ``[B, Lk]`` bool, True where a key is a real token (the 2-D padding form that
  transformers hands to FlashAttention). ``None`` once a trace holds a single unpadded sequence.
* ``softcap``: logits become ``softcap * tanh(s / softcap)`` after scaling, before masking
  (Gemma 2's ``attn_logit_softcapping``).
* ``sinks``: one extra logit per query head that joins every row's softmax denominator but is
  not a key (gpt-oss ``s_aux``); rows then sum to less than one.
* ``scaling``: the multiplier of q·k, taken from the model's call, never recomputed.

A row whose keys are all masked (a padded query row) is *empty*: its log-sum-exp is ``-inf``
and every view reports zeros for it, never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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

    def __post_init__(self) -> None:
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
        return replace(self, key_padding=None, chunk_start=start)

    def _chunk_origin(self, batch: int) -> int:
        return 0 if self.chunk_start is None else int(self.chunk_start[batch])

    def for_heads(self, heads: list[int]) -> MaskSpec:
        """The spec of the query heads `heads` (in that order) taken out of a call: the per-head
        sink logits follow them; every other fact is shared by all heads."""
        if self.sinks is None:
            return self
        count = self.sinks.shape[0]
        bad = [h for h in heads if not 0 <= h < count]
        if bad:
            raise ValueError(f"query heads must be in [0, {count}), got {bad}")
        return replace(self, sinks=self.sinks[list(heads)])

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
        return lo, max(lo, hi)

    def logits(self, raw_dot: torch.Tensor) -> torch.Tensor:
        """Scaled (and soft-capped) logits from raw q·k, before masking."""
        s = raw_dot * self.scaling
        if self.softcap is not None:
            s = torch.tanh(s / self.softcap) * self.softcap
        return s
