"""Which implementation computes the views: Triton kernels on CUDA, the chunked torch backend
elsewhere (and for float64 traces). ``ATTNSCOPE_BACKEND=torch|triton`` forces one (the tests run the Triton path on the
CPU under ``TRITON_INTERPRET=1``). Every function here takes Q [Hq, Lq, D], K [Hkv, Lk, D], a
`MaskSpec` and, past row statistics, the row log-sum-exp; results stay on Q's device. The views of
one head take its index; the digest takes the query heads to compute (`select_heads`).
"""

from __future__ import annotations

import os
import warnings

import torch

from . import digest as digest_pass
from . import neuron, rowstats, tiles, topk
from .interrupt import checkpoint
from .masking import MaskSpec
from .triton_common import HAS_TRITON

BACKENDS = ("torch", "triton")


def backend_name(device: torch.device) -> str:
    forced = os.environ.get("ATTNSCOPE_BACKEND", "").strip().lower()
    if forced and forced not in BACKENDS:
        raise ValueError(f"ATTNSCOPE_BACKEND must be one of {BACKENDS}, got {forced!r}")
    if forced == "triton" or (not forced and device.type == "cuda" and HAS_TRITON):
        if not HAS_TRITON:
            raise ValueError("ATTNSCOPE_BACKEND=triton but triton is not installed")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"the triton backend needs a CUDA device or TRITON_INTERPRET=1; tensors are on {device}"
            )
        return "triton"
    return "torch"


def _triton(q: torch.Tensor) -> bool:
    # The kernels accumulate in float32; a float64 trace (used to check models exactly) keeps
    # its float64 accuracy on the torch backend.
    return q.dtype != torch.float64 and backend_name(q.device) == "triton"


_broken: str | None = None  # why the Triton path failed to compile here, once it has


def _is_build_failure(exc: Exception) -> bool:
    """Whether Triton failed to build a kernel for this GPU (rather than to run it): a front-end
    compile error (a Triton version the kernel was not written for), an MLIR pass failure
    (Triton raises a bare RuntimeError for those), too little shared memory or registers, ptxas."""
    from triton.compiler.errors import CompilationError
    from triton.runtime import errors

    named = (getattr(errors, name, None) for name in ("OutOfResources", "PTXASError"))
    kinds = (CompilationError, *(e for e in named if isinstance(e, type)))
    return isinstance(exc, kinds) or (type(exc) is RuntimeError and "PassManager::run failed" in str(exc))


def _run(q: torch.Tensor, spec: MaskSpec, triton_fn, torch_fn):
    """Triton where it applies; if a kernel cannot be built on this machine (`_is_build_failure`),
    warn once and use the torch backend from then on, unless ATTNSCOPE_BACKEND=triton asked for
    Triton explicitly. What the kernels do not take yet (`MaskSpec.torch_only`) runs on the torch
    twin. Failures while running (out of memory, bad input) propagate."""
    global _broken
    checkpoint()  # before every launch: an abandoned call stops here (kernels/interrupt.py)
    missing = spec.torch_only()
    if missing and _triton(q):
        if os.environ.get("ATTNSCOPE_BACKEND", "").strip().lower() == "triton":
            raise ValueError(
                f"ATTNSCOPE_BACKEND=triton, but the Triton kernels do not take {' or '.join(missing)} "
                "yet; use ATTNSCOPE_BACKEND=torch"
            )
        return torch_fn()
    if _broken is None and _triton(q):
        try:
            return triton_fn()
        except Exception as exc:
            if (
                not _is_build_failure(exc)
                or os.environ.get("ATTNSCOPE_BACKEND", "").strip().lower() == "triton"
            ):
                raise
            _broken = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            warnings.warn(
                f"attnscope's Triton kernels failed to compile ({_broken}); using the torch backend",
                RuntimeWarning,
                stacklevel=3,
            )
    return torch_fn()


def row_stats(q: torch.Tensor, k: torch.Tensor, spec: MaskSpec) -> tuple[torch.Tensor, torch.Tensor]:
    return _run(
        q, spec, lambda: rowstats.row_stats_triton(q, k, spec), lambda: rowstats.row_stats_torch(q, k, spec)
    )


def probs_tile(q, k, spec: MaskSpec, lse, head: int, queries: range, keys: range) -> torch.Tensor:
    args = (q, k, spec, lse, head, queries, keys)
    return _run(q, spec, lambda: tiles.probs_tile_triton(*args), lambda: tiles.probs_tile_torch(*args))


def select_heads(
    q: torch.Tensor, k: torch.Tensor, spec: MaskSpec, lse: torch.Tensor, heads: list[int] | None
) -> tuple[torch.Tensor, torch.Tensor, MaskSpec, torch.Tensor]:
    """(q, k, spec, lse) of the query heads `heads` alone, in that order (None: all heads), so that
    a pass over them costs those heads only.

    Query heads, their row log-sum-exp and their sink logits are taken out; so are the key heads
    they read. Where `heads` is made of whole groups of query heads sharing a key head (each run
    of `group` entries one group), the chosen key heads stay shared; otherwise each chosen query
    head gets its key head of its own (group 1). A contiguous run of heads is a view, not a copy.
    """
    hq, hkv = q.shape[0], k.shape[0]
    if heads is None or list(heads) == list(range(hq)):
        return q, k, spec, lse
    heads = list(heads)
    if not heads or any(not 0 <= h < hq for h in heads):
        raise ValueError(f"query heads must be a non-empty list of ints in [0, {hq}), got {heads}")
    group = hq // hkv
    runs = [heads[i : i + group] for i in range(0, len(heads), group)]
    whole = len(heads) % group == 0 and all(
        len(set(run)) == group and len({h // group for h in run}) == 1 for run in runs
    )
    kv = [run[0] // group for run in runs] if whole else [h // group for h in heads]
    return _take(q, heads), _take(k, kv), spec.for_heads(heads), _take(lse, heads)


def _take(t: torch.Tensor, index: list[int]) -> torch.Tensor:
    """t[index] along dim 0: a view where `index` is a contiguous ascending run."""
    if index == list(range(index[0], index[0] + len(index))):
        return t[index[0] : index[0] + len(index)]
    return t[torch.tensor(index, device=t.device)]


def _on_device(device: torch.device, token_ids, row_weights, blocks):
    """The digest's per-position inputs on `device` (no copy where they already are)."""
    if token_ids is not None:
        token_ids = tuple(t.to(device) for t in token_ids)
    if row_weights is not None:
        row_weights = row_weights.to(device)
    if blocks is not None:
        blocks = (blocks[0].to(device), blocks[1].to(device), *blocks[2:])
    return token_ids, row_weights, blocks


def digest(
    q,
    k,
    spec: MaskSpec,
    lse: torch.Tensor | None,
    pooled_size: tuple[int, int] | None = None,
    received: bool = False,
    terms: bool = False,
    heads: list[int] | None = None,
    *,
    token_ids: tuple[torch.Tensor, torch.Tensor] | None = None,
    row_weights: torch.Tensor | None = None,
    blocks: tuple[torch.Tensor, torch.Tensor, int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """One pass over P for any of "pooled", "received" and head-statistic "terms", and of
    "token_terms" (`token_ids` = (q_ids [Lq], k_ids [Lk]) int64, with terms=True),
    "weighted_received" (`row_weights`) and "span_sums" (`blocks` = (q_block [Lq], k_block [Lk],
    n_q_blocks, n_k_blocks), id -1 = no block); kernels/digest.py. Over the query heads `heads`
    only (None: all); results have one row per entry of `heads`.

    `row_weights` [len(heads), Lq] holds one row per selected head, in the order of `heads` (all
    Hq heads when `heads` is None); a full [Hq, Lq] for every query head of the layer is also
    taken when `heads` has another length, and its rows of `heads` are used.

    ``lse=None`` (every head): the row statistics too, "lse" and "entropy" [Hq, Lq]; the torch
    twin takes them from the same evaluation of each chunk's logits, the Triton path runs its
    row-statistics kernel first.

    The token ids, row weights and blocks are moved to Q's device first: under a device map
    each layer's Q/K live where that layer ran, and its pass runs there.
    """
    token_ids, row_weights, blocks = _on_device(q.device, token_ids, row_weights, blocks)
    if lse is None:  # the row statistics from the same pass (the torch twin) or just before it
        if heads is not None:
            raise ValueError("row statistics (lse=None) come with every query head: heads must be None")
        args = (pooled_size, received, terms)
        extras = {"token_ids": token_ids, "row_weights": row_weights, "blocks": blocks}

        def triton_fn() -> dict[str, torch.Tensor]:
            lse2, ent = rowstats.row_stats_triton(q, k, spec)
            return {
                **digest_pass.digest_triton(q, k, spec, lse2, *args, **extras),
                "lse": lse2,
                "entropy": ent,
            }

        return _run(q, spec, triton_fn, lambda: digest_pass.digest_torch(q, k, spec, None, *args, **extras))
    if row_weights is not None and heads is not None:
        heads = list(heads)
        if row_weights.shape[0] != len(heads) and row_weights.shape[0] == q.shape[0]:
            row_weights = _take(row_weights, heads)
    q, k, spec, lse = select_heads(q, k, spec, lse, heads)
    args = (q, k, spec, lse, pooled_size, received, terms)
    extras = {"token_ids": token_ids, "row_weights": row_weights, "blocks": blocks}
    return _run(
        q,
        spec,
        lambda: digest_pass.digest_triton(*args, **extras),
        lambda: digest_pass.digest_torch(*args, **extras),
    )


def top_k(q, k, spec: MaskSpec, lse, head: int, count: int, queries: range):
    args = (q, k, spec, lse, head, count, queries)
    return _run(q, spec, lambda: topk.topk_triton(*args), lambda: topk.topk_torch(*args))


def neuron_view(q, k, spec: MaskSpec, lse, head: int, query: int, keys: range) -> neuron.NeuronView:
    args = (q, k, spec, lse, head, query, keys)
    return _run(q, spec, lambda: neuron.neuron_triton(*args), lambda: neuron.neuron_torch(*args))
