"""Capture of Q (after RoPE), K and the mask description from any transformers model.

The ``"attnscope"`` attention implementation is registered with transformers'
`AttentionInterface`, and its mask function with `AttentionMaskInterface` (without one,
transformers would build no mask at all for a custom name and silently drop causality). The mask
function returns the 2-D ``[B, Lk]`` padding form, as transformers does for FlashAttention, so no
L×L mask is ever built; causality, sliding window, soft-cap, sinks and scaling are read from the
call's keyword arguments and the module.

Never silently wrong: the 2-D mask carries the ``mask_function`` transformers handed the mask
interface, and each call's `MaskSpec` is checked against it, and completed by the facts it adds
(chunks, packed sequences, bidirectional groups), in mask_check.py; an additive ``position_bias``
(T5) is described and checked in position_bias.py. Either raises `MaskMismatch` rather than return
attention attnscope cannot reproduce.

Capture is scoped: `capturing(model)` switches the model to ``"attnscope"``, records every
attention call into a `Recording` while the block runs, and restores the model's implementation
afterwards. Outside such a block the function still computes the correct output and records
nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from ..kernels.interrupt import checkpoint
from ..kernels.masking import MaskSpec
from . import position_bias as bias_source
from .attend import attention_output
from .mask_check import _SOURCE_ATTR, MaskSource
from .mismatch import MaskMismatch as MaskMismatch  # raised during capture; imported from here

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
    if getattr(attention_mask, _SOURCE_ATTR, None) is not None:
        # A mask this function built, handed back by a model to its inner model (PaliGemma's to its
        # Gemma): the outer mask is the one computed, as an eager 4-D mask would pass through as is.
        return attention_mask
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
