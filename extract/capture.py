"""Capture of Q (after RoPE), K and the mask description from any transformers model.

The ``"attnscope"`` attention implementation is registered with transformers'
`AttentionInterface`, and its mask function with `AttentionMaskInterface` (without one,
transformers would build no mask at all for a custom name and silently drop causality). The mask
function returns the 2-D ``[B, Lk]`` padding form, as transformers does for FlashAttention, so no
L×L mask is ever built; causality, sliding window, soft-cap, sinks and scaling are read from the
call's keyword arguments and the module.

Never silently wrong: the 2-D mask carries the ``mask_function`` transformers handed the mask
interface (chunked attention, packed sequences, prefix / image-token overlays all live there, not
in the keyword arguments). Each attention call checks the `MaskSpec` it built against that function
on the index pairs that decide (diagonal and neighbours, window and chunk edges, padding edges,
first and last positions, a bounded random sample of the rest, per batch item) and raises
`MaskMismatch` on any disagreement, before the call returns. Each distinct mask is checked once
per forward pass against each distinct (causal, window) description, not once per layer.

Capture is scoped: `capturing(model)` switches the model to ``"attnscope"``, records every
attention call into a `Recording` while the block runs, and restores the model's implementation
afterwards. Outside such a block the function still computes the correct output and records
nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from ..kernels import backend
from ..kernels.interrupt import checkpoint
from ..kernels.masking import MaskSpec
from . import position_bias as bias_source
from .attend import attention_output
from .mismatch import MaskMismatch, layer_name

IMPLEMENTATION = "attnscope"


@dataclass
class CapturedCall:
    """One attention call as the model made it."""

    module: torch.nn.Module
    query: torch.Tensor  # [B, Hq, Lq, D], after RoPE
    key: torch.Tensor  # [B, Hkv, Lk, D], grouped-query heads not expanded
    spec: MaskSpec
    #: True when `spec` was checked against the mask function transformers built the mask from.
    mask_checked: bool = False


@dataclass
class Recording:
    calls: list[CapturedCall] = field(default_factory=list)
    #: time.monotonic() after which the forward pass stops at the next attention layer.
    deadline: float | None = None
    #: the model being captured (only read to name it and its layers in an error message).
    model: torch.nn.Module | None = None


_ACTIVE: contextvars.ContextVar[Recording | None] = contextvars.ContextVar(
    "attnscope_recording", default=None
)


def _compact(t: torch.Tensor) -> torch.Tensor:
    """Detach, and copy only if the view would keep a larger buffer alive (GPT-2's fused qkv)."""
    t = t.detach()
    if t.untyped_storage().nbytes() > t.numel() * t.element_size():
        t = t.clone()
    return t


def attnscope_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: SDPA-equivalent output, plus Q/K capture when recording."""
    position_bias = kwargs.get("position_bias")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            "attnscope expects the 2-D [batch, keys] padding mask that its mask function builds, "
            f"got a {attention_mask.dim()}-D mask of shape {tuple(attention_mask.shape)}; "
            "pass a 2-D attention_mask to the model"
        )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    source: MaskSource | None = getattr(attention_mask, _SOURCE_ATTR, None)
    if source is not None:
        attention_mask = source.key_padding  # None when nothing is padded
    spec = MaskSpec(
        # SDPA's own default when a module passes no scaling; never recomputed otherwise.
        scaling=float(scaling) if scaling is not None else query.shape[-1] ** -0.5,
        causal=bool(causal),
        window=int(sliding_window) if sliding_window is not None else None,
        softcap=float(softcap) if softcap else None,
        sinks=s_aux.detach() if s_aux is not None else None,
        key_padding=attention_mask.bool() if attention_mask is not None else None,
    )
    recording = _ACTIVE.get()
    if position_bias is not None:
        spec = replace(
            spec, **bias_source.describe(position_bias, module, query.shape[2], key.shape[2], recording)
        )
    if source is not None:
        spec = source.resolve(spec, module, query, key.shape[2], recording)
    if recording is not None and recording.deadline is not None and time.monotonic() > recording.deadline:
        raise TimeoutError(
            f"deadline exceeded during the forward pass, after {len(recording.calls)} attention layers"
        )
    checkpoint()  # between layers: an abandoned call stops here (kernels/interrupt.py)
    out = attention_output(query, key, value, spec, dropout)
    if recording is not None:
        recording.calls.append(
            CapturedCall(module, _compact(query), _compact(key), spec, mask_checked=source is not None)
        )
    return out, None


#: Attribute of the 2-D mask tensor that carries its `MaskSource` to the attention calls.
_SOURCE_ATTR = "_attnscope_mask_source"
#: Bounds of the check: query rows sampled at random, keys sampled at random per row.
_RANDOM_ROWS, _RANDOM_KEYS = 16, 12
#: At most this many multiples of a window or chunk size are visited as edges per batch item.
_EDGE_MULTIPLES = 6


def _evaluate(fn: Callable, b: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """`fn(batch, head=0, q, kv)` on 1-D index tensors of equal length, elementwise: bool [N].

    Index-based mask functions (all of transformers' own) broadcast; others are vmapped as
    transformers does for custom overlays.
    """
    h = torch.zeros_like(q)
    try:
        out = torch.as_tensor(fn(b, h, q, k), device=q.device)
        if out.shape != q.shape:
            out = out.expand(q.shape)
        return out.bool()
    except Exception:  # a scalar-only function: evaluate it the way transformers does
        from torch._dynamo._trace_wrapped_higher_order_op import TransformGetItemToIndex

        with TransformGetItemToIndex():
            return torch.vmap(fn)(b, h, q, k).bool()


@dataclass(eq=False)
class MaskSource:
    """What transformers asked the mask interface for: the truth a layer's `MaskSpec` must equal."""

    mask_function: Callable
    batch_size: int
    q_length: int
    kv_length: int
    q_offset: int
    kv_offset: int
    padding: torch.Tensor | None  # [B, >= kv_offset + kv_length] bool as transformers pads it
    key_padding: torch.Tensor | None  # [B, kv_length] bool handed to the attention, None if all real
    config: object | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: (causal, window) descriptions already found equal to this mask in this forward pass.
    verified: set = field(default_factory=set)
    #: (causal, window, lq, lk) -> the chunk facts found to make the description exact.
    resolved: dict = field(default_factory=dict)

    def resolve(
        self, spec: MaskSpec, module: torch.nn.Module, query: torch.Tensor, lk: int, recording
    ) -> MaskSpec:
        """`spec`, completed with the facts transformers' mask adds that the call's keyword
        arguments do not carry (chunked attention, from the config's ``attention_chunk_size``),
        once the completed description is verified; `MaskMismatch` when none is exact."""
        lq = query.shape[2]
        key = (spec.causal, spec.window, lq, lk)
        if key in self.resolved:
            return replace(spec, **self.resolved[key])
        try:
            self.verify(spec, module, lq, lk, recording)
            self.resolved[key] = {}
            return spec
        except MaskMismatch as mismatch:
            chunk = getattr(self.config, "attention_chunk_size", None)
            if not (isinstance(chunk, int) and chunk >= 1 and spec.causal):
                raise
            facts = {"chunk": chunk, "chunk_start": self._left_padding()}
            try:
                self.verify(replace(spec, **facts), module, lq, lk, recording)
            except MaskMismatch:
                raise mismatch from None
        # The backend computes chunked layers on the torch twin; only an explicit demand for the
        # Triton kernels (which do not take chunks yet) is refused.
        forced = os.environ.get("ATTNSCOPE_BACKEND", "").strip().lower() == "triton"
        if forced and query.dtype != torch.float64 and backend.backend_name(query.device) == "triton":
            self._fail(
                module,
                recording,
                spec,
                f"chunked attention (attention_chunk_size={chunk})",
                "attnscope's Triton kernels do not take chunks yet (the torch backend does): trace "
                "in float64, or set ATTNSCOPE_BACKEND=torch",
            )
        self.resolved[key] = facts
        return replace(spec, **facts)

    def _left_padding(self) -> torch.Tensor | None:
        """Leading padding tokens per batch item (where transformers starts the first chunk)."""
        if self.padding is None:
            return None
        lead = (self.padding.long().cumsum(-1) == 0).sum(-1)
        return lead if bool(lead.any()) else None

    def _scales(self, spec: MaskSpec) -> list[int]:
        """Window and chunk sizes whose edges decide: the spec's and the config's."""
        sizes = {spec.window}
        for name in ("attention_chunk_size", "sliding_window", "chunk_size"):
            value = getattr(self.config, name, None)
            if isinstance(value, int) and not isinstance(value, bool):
                sizes.add(value)
        return sorted(s for s in sizes if s is not None and s >= 1)

    def _pairs(self, spec: MaskSpec, b: int, lq: int, lk: int, gen: torch.Generator):
        """Query and key indices (1-D, equal length) of the pairs that decide for batch item `b`."""
        scales = self._scales(spec)
        edges = [0, 1, 2]
        if self.key_padding is not None:
            real = self.key_padding[b].nonzero().flatten().tolist()
            if real:
                first, last = real[0], real[-1]
                edges += [first - 1, first, first + 1, last - 1, last, last + 1]
        else:
            first = 0
        rows = set(edges) | {lq - 1, lq - 2, lq - 3}
        for s in scales:
            step = max(1, (lq // s) // _EDGE_MULTIPLES) * s
            for m in range(0, lq + s, step):
                for base in (m, m + first):
                    rows.update((base - 1, base, base + 1, base + s - 1, base + s))
        rows.update(int(i * (lq - 1) / 7) for i in range(8))
        rows.update(torch.randint(0, lq, (_RANDOM_ROWS,), generator=gen).tolist())
        q = torch.tensor(sorted(r for r in rows if 0 <= r < lq), dtype=torch.long)
        rel = [-2, -1, 0, 1, 2]
        for s in scales:
            rel += [-s - 1, -s, -s + 1, s - 1, s, s + 1]
        cols = [q[:, None] + torch.tensor(rel)[None, :]]
        absolute = sorted({0, 1, lk - 2, lk - 1, *[e for e in edges if e > 2]})
        cols.append(torch.tensor(absolute, dtype=torch.long)[None, :].expand(len(q), -1))
        for s in scales:  # the chunk edges around each row, from 0 and from the first real token
            for origin in {0, first}:
                start = ((q - origin).div(s, rounding_mode="floor")) * s + origin
                cols.append(torch.stack([start - 1, start, start + s - 1, start + s], dim=1))
        cols.append(torch.randint(0, lk, (len(q), _RANDOM_KEYS), generator=gen))
        k = torch.cat(cols, dim=1)
        q = q[:, None].expand_as(k)
        keep = (k >= 0) & (k < lk)
        return q[keep], k[keep]

    def verify(
        self, spec: MaskSpec, module: torch.nn.Module, lq: int, lk: int, recording: Recording | None
    ) -> None:
        """Raise `MaskMismatch` unless `spec` equals transformers' mask on the pairs that decide."""
        key = (spec.causal, spec.window, spec.chunk, lq, lk)
        if key in self.verified:
            return
        if (lq, lk) != (self.q_length, self.kv_length):
            self._fail(
                module,
                recording,
                spec,
                "the shape",
                f"transformers built the mask for {self.q_length} queries x {self.kv_length} keys, "
                f"the call has {lq} x {lk}",
            )
        gen = torch.Generator().manual_seed(lq * 1_000_003 + lk)
        device = self.device
        for b in range(self.batch_size):
            q, k = self._pairs(spec, b, lq, lk, gen)
            q, k = q.to(device), k.to(device)
            batch = torch.full_like(q, b)
            truth = _evaluate(self.mask_function, batch, q + self.q_offset, k + self.kv_offset)
            if self.padding is not None:
                truth = truth & self.padding[b].to(device)[k + self.kv_offset]
            assumed = spec.allowed_pairs(q, k, batch=b)
            wrong = (truth != assumed).nonzero().flatten()
            if len(wrong):
                i = int(wrong[0])
                qi, ki = int(q[i]), int(k[i])
                self._fail(
                    module,
                    recording,
                    spec,
                    self._kind(spec, b, qi, ki, bool(truth[i])),
                    f"at batch item {b}, query {qi}, key {ki} transformers' mask says "
                    f"{'visible' if truth[i] else 'masked'}, attnscope's says "
                    f"{'visible' if assumed[i] else 'masked'}",
                )
        self.verified.add(key)

    def _kind(self, spec: MaskSpec, b: int, q: int, k: int, truth: bool) -> str:
        """Name the part of the mask where the two disagree at (q, k)."""
        if truth:  # attnscope masks a pair transformers shows: which of its facts did it?
            if self.key_padding is not None and not bool(self.key_padding[b, k]):
                return "padding"
            if spec.causal and k > q:
                return "causal (transformers lets this query see a later key)"
            if spec.window is not None:
                return f"sliding window (window={spec.window})"
            return "the mask pattern"
        chunk = getattr(self.config, "attention_chunk_size", None)
        if isinstance(chunk, int) and q // chunk != k // chunk:
            return f"chunked attention (attention_chunk_size={chunk}), which attnscope does not model"
        if not spec.causal and k > q:
            return "causal (transformers masks later keys, attnscope assumes bidirectional attention)"
        if spec.window is None and getattr(self.config, "sliding_window", None):
            return "sliding window (transformers masks it, attnscope assumes none)"
        return "a mask pattern attnscope does not model (chunked, packed, prefix or custom)"

    def _fail(self, module, recording, spec: MaskSpec, kind: str, where: str) -> None:
        model = recording.model if recording is not None else None
        model_name = type(model).__name__ if model is not None else type(self.config).__name__
        layer = layer_name(module, model)
        assumed = "causal" if spec.causal else "bidirectional"
        if spec.window is not None:
            assumed += f", sliding window {spec.window}"
        if spec.chunk is not None:
            assumed += f", chunks of {spec.chunk}"
        if self.key_padding is not None:
            assumed += ", key padding"
        raise MaskMismatch(
            f"{model_name}, layer {layer}: the attention mask differs in {kind}. attnscope assumes "
            f"a {assumed} mask; {where}. attnscope cannot trace this mask exactly and refuses "
            "rather than show wrong attention."
        )


def attnscope_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """The 2-D padding mask [B, kv_length] (True = real token), carrying its `MaskSource`.

    The tensor is all True when nothing is padded (the attention call then sees no padding); it
    travels to every layer that uses this mask, which checks its description against
    `mask_function`. Without a mask function (never from transformers' own builders) the old
    contract holds: the padding alone, or None.
    """
    key_padding = None
    if attention_mask is not None:
        key_padding = attention_mask[:, -kv_length:].bool()
        if key_padding.shape[1] == kv_length and bool(key_padding.all()):
            key_padding = None
    if mask_function is None:
        return key_padding
    padding = None
    if attention_mask is not None:
        padding = attention_mask.bool()
        if (extra := kv_length + kv_offset - padding.shape[-1]) > 0:
            padding = torch.nn.functional.pad(padding, (0, extra))
    device = kwargs.get("device")
    if key_padding is not None:
        carrier = key_padding.clone()
    else:
        carrier = torch.ones(batch_size, kv_length, dtype=torch.bool, device=device)
    setattr(
        carrier,
        _SOURCE_ATTR,
        MaskSource(
            mask_function=mask_function,
            batch_size=batch_size,
            q_length=q_length,
            kv_length=kv_length,
            q_offset=int(q_offset),
            kv_offset=int(kv_offset),
            padding=padding,
            key_padding=key_padding,
            config=kwargs.get("config"),
            device=carrier.device,
        ),
    )
    return carrier


def register() -> None:
    """Make ``attn_implementation="attnscope"`` known to transformers (idempotent)."""
    AttentionInterface.register(IMPLEMENTATION, attnscope_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, attnscope_mask)


@contextlib.contextmanager
def capturing(model: torch.nn.Module, deadline: float | None = None) -> Iterator[Recording]:
    """Run `model` with the attnscope implementation and record its attention calls.

    With a `deadline` (a time.monotonic() value) the forward pass raises TimeoutError at the first
    attention layer reached after it.
    """
    register()
    previous = model.config._attn_implementation
    recording = Recording(deadline=deadline, model=model)
    token = _ACTIVE.set(recording)
    model.set_attn_implementation(IMPLEMENTATION)
    try:
        yield recording
    finally:
        _ACTIVE.reset(token)
        model.set_attn_implementation(previous or "sdpa")
