"""The attention output of one captured call, computed as the model's `sdpa` path would.

The fast cases go straight to `torch.nn.functional.scaled_dot_product_attention` exactly as
transformers' `sdpa_attention_forward` calls it (``is_causal`` without a mask; a key-padding mask
broadcast as ``[B, 1, 1, Lk]``). What SDPA cannot express without an L×L mask (causal attention
with padding, sliding windows, chunks) or at all (soft-capping, sinks) runs in query chunks whose mask
covers only ``chunk × keys-in-reach``, so no L×L tensor is ever allocated. Rows with no visible
key (padded queries) give zeros, as FlashAttention's varlen path does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels import scores
from ..kernels.masking import MaskSpec


def _repeat_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    if group == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, group, n, d).reshape(b, h * group, n, d)


def _chunk_mask(spec: MaskSpec, batch: int, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
    """Bool [B, 1, cq, ck] visibility for one chunk (small: chunk × keys-in-reach)."""
    rows = []
    for b in range(batch):
        block = spec.allowed(q_idx, k_idx, batch=b)
        rows.append(
            torch.ones(len(q_idx), len(k_idx), dtype=torch.bool, device=q_idx.device)
            if block is None
            else block
        )
    return torch.stack(rows)[:, None]


def _manual_softmax_attention(q, k, v, spec: MaskSpec, visible: torch.Tensor, q_idx, k_idx) -> torch.Tensor:
    """Eager-style attention for soft-capped, biased or sink logits (softmax in float32 or better)."""
    dt = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    heads = torch.arange(q.shape[1], device=q.device)
    s = spec.logits(torch.matmul(q.to(dt), k.to(dt).transpose(-1, -2)), heads, q_idx, k_idx)
    s = s.masked_fill(~visible, float("-inf"))
    if spec.sinks is not None:
        sink = spec.sinks.to(device=s.device, dtype=dt)[None, :, None, None].expand(
            s.shape[0], -1, s.shape[2], 1
        )
        s = torch.cat([s, sink], dim=-1)
    p = torch.softmax(s, dim=-1)
    if spec.sinks is not None:
        p = p[..., :-1]
    p = torch.nan_to_num(p, nan=0.0)
    return torch.matmul(p.to(v.dtype), v)


def attention_output(
    query: torch.Tensor,  # [B, Hq, Lq, D]
    key: torch.Tensor,  # [B, Hkv, Lk, D]
    value: torch.Tensor,  # [B, Hkv, Lk, Dv]
    spec: MaskSpec,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Attention output [B, Lq, Hq, Dv], laid out as transformers' attention functions return it."""
    b, hq, lq, _ = query.shape
    lk = key.shape[2]
    group = hq // key.shape[1]
    plain_logits = spec.softcap is None and spec.sinks is None and spec.bias is None
    # facts that need a mask SDPA cannot take without an L×L tensor
    structured = any(getattr(spec, name) is not None for name in ("window", "chunk", "segments", "groups"))
    if plain_logits and not structured and spec.key_padding is None:
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            dropout_p=dropout,
            scale=spec.scaling,
            is_causal=spec.causal and lq > 1,
            enable_gqa=group > 1,
        )
        return out.transpose(1, 2).contiguous()
    key, value = _repeat_kv(key, group), _repeat_kv(value, group)
    if plain_logits and not structured and not spec.causal:
        mask = spec.key_padding.to(query.device)[:, None, None, :]
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout, scale=spec.scaling
        )
        return out.transpose(1, 2).contiguous()
    out = torch.zeros(b, hq, lq, value.shape[-1], dtype=query.dtype, device=query.device)
    keys_in_reach = lk if spec.window is None else min(lk, 2 * spec.window)
    step = scores.rows_per_chunk(b * hq, keys_in_reach, scores.SCORE_BUDGET // 4)
    for q0 in range(0, lq, step):
        q1 = min(lq, q0 + step)
        k0, k1 = spec.key_range(q0, q1, lk)
        if k1 == k0:
            continue
        q_idx, k_idx = torch.arange(q0, q1, device=query.device), torch.arange(k0, k1, device=query.device)
        visible = _chunk_mask(spec, b, q_idx, k_idx)
        qc, kc, vc = query[:, :, q0:q1], key[:, :, k0:k1], value[:, :, k0:k1]
        if plain_logits:
            chunk = F.scaled_dot_product_attention(
                qc, kc, vc, attn_mask=visible, dropout_p=dropout, scale=spec.scaling
            )
        else:
            chunk = _manual_softmax_attention(qc, kc, vc, spec, visible, q_idx, k_idx)
        # SDPA turns a row with no visible key into NaN; such rows are defined as zeros.
        out[:, :, q0:q1] = torch.where(visible.any(-1, keepdim=True), chunk, torch.zeros_like(chunk))
    return out.transpose(1, 2).contiguous()
