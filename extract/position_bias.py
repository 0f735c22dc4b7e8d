"""Additive position biases (T5-style relative attention), described without an L×L tensor.

T5, mT5, Flan-T5, UMT5 (and their copies: LongT5's global layers, Switch Transformers, UDOP,
Pix2Struct...) hand each attention call a ``position_bias`` ``[1, H, Lq, Lk]`` that the model
built for its own forward from one module's bucket table: ``bias[h, q, k] = table[bucket(k - q), h]``
with the bucket function and its parameters (bidirectional or not, number of buckets, maximum
distance) those of the module that owns the table (T5: the stack's first layer, shared by the
others; UMT5: every layer its own). It depends on ``k - q`` alone, so attnscope keeps one value
per head and relative offset, ``[H, Lq + Lk - 1]``, computed by that module's own
``compute_bias`` (its own bucket function and table, so the values are the model's exactly)
and checked against the tensor the model passed on every offset and on a sample of pairs. Cross
attention's all-zero bias is no bias. Anything else raises `MaskMismatch`: attnscope refuses
rather than show attention it cannot reproduce.
"""

from __future__ import annotations

import torch

from .mismatch import MaskMismatch, layer_name

#: The description found for a bias tensor, kept on the tensor: layers sharing one bias
#: (T5's stacks) describe it once per forward pass.
_DESCRIBED = "_attnscope_bias"
#: Query rows sampled at random for the Toeplitz check, and keys per sampled row.
_RANDOM_ROWS, _RANDOM_KEYS = 16, 16


def describe(position_bias: torch.Tensor, module: torch.nn.Module, lq: int, lk: int, recording) -> dict:
    """The `MaskSpec` facts (``bias``, ``bias_origin``; none for a zero bias) of `position_bias`."""
    known = getattr(position_bias, _DESCRIBED, None)
    if known is not None:
        return known
    if position_bias.dim() != 4 or tuple(position_bias.shape[-2:]) != (lq, lk):
        _fail(module, recording, f"has shape {tuple(position_bias.shape)}, not [*, heads, {lq}, {lk}]")
    facts = None
    for owner in _tables(module, recording):
        vector = _by_offset(owner, lq, lk, position_bias)
        if vector is not None and _matches(position_bias, vector, lq - 1):
            facts = {"bias": vector, "bias_origin": lq - 1}
            break
    if facts is None:
        if bool(position_bias.any()):
            _fail(
                module,
                recording,
                "is not the relative-position bucket bias of any attention module of this model (nor zero)",
            )
        facts = {}
    setattr(position_bias, _DESCRIBED, facts)
    return facts


def _tables(module: torch.nn.Module, recording) -> list[torch.nn.Module]:
    """Modules whose bucket table may have built the bias: the module's own, then the model's."""
    owners = [module] if _has_table(module) else []
    model = recording.model if recording is not None else None
    if model is not None:
        same_side = [
            m
            for m in model.modules()
            if m is not module
            and _has_table(m)
            and getattr(m, "is_decoder", None) == getattr(module, "is_decoder", None)
        ]
        owners += same_side
    return owners


def _has_table(m: torch.nn.Module) -> bool:
    return bool(getattr(m, "has_relative_attention_bias", False)) and hasattr(m, "compute_bias")


def _by_offset(owner: torch.nn.Module, lq: int, lk: int, like: torch.Tensor) -> torch.Tensor | None:
    """[H, Lq + Lk - 1]: the owner's bias for offsets k - q = -(Lq - 1) .. Lk - 1, from its own
    `compute_bias` on one query row placed at Lq - 1 over Lq + Lk - 1 keys."""
    try:
        with torch.no_grad():
            row = owner.compute_bias(1, lq + lk - 1, device=like.device, past_seen_tokens=lq - 1)
    except TypeError:  # a compute_bias without past_seen_tokens cannot place the row
        return None
    if row.shape[-3] != like.shape[1]:
        return None
    return row[0, :, 0, :].detach().to(like.dtype)


def _matches(position_bias: torch.Tensor, vector: torch.Tensor, origin: int) -> bool:
    """Whether `position_bias` equals the vector on every offset (its first row and column) and on
    a sample of other pairs, for every batch item it holds."""
    _, _, lq, lk = position_bias.shape
    gen = torch.Generator().manual_seed(lq * 7919 + lk)
    rows = torch.cat([torch.arange(lq), torch.zeros(lk, dtype=torch.long)])
    cols = torch.cat([torch.zeros(lq, dtype=torch.long), torch.arange(lk)])
    sample_q = torch.randint(0, lq, (_RANDOM_ROWS, 1), generator=gen).expand(-1, _RANDOM_KEYS)
    sample_k = torch.randint(0, lk, (_RANDOM_ROWS, _RANDOM_KEYS), generator=gen)
    rows = torch.cat([rows, sample_q.flatten()]).to(position_bias.device)
    cols = torch.cat([cols, sample_k.flatten()]).to(position_bias.device)
    expected = vector[:, cols - rows + origin]
    return all(torch.equal(item[:, rows, cols], expected) for item in position_bias)


def _fail(module: torch.nn.Module, recording, what: str) -> None:
    model = recording.model if recording is not None else None
    model_name = type(model).__name__ if model is not None else type(module).__name__
    raise MaskMismatch(
        f"{model_name}, layer {layer_name(module, model)}: the additive position bias {what}. "
        "attnscope cannot trace these logits exactly and refuses rather than show wrong attention."
    )
