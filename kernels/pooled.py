"""Pooled maps and received attention: what they mean, and the block layout they share.

Pooled map at output size ``(sq, sk)``: query positions are cut into ``sq`` contiguous blocks
and keys into ``sk``; block ``j`` of a length-``L`` axis holds positions
``[floor(j·L/s), floor((j+1)·L/s))``, so blocks differ in size by at most one when ``s`` does
not divide ``L``. Cell ``[i, j]`` is the mean, over the query rows of block ``i``, of the
probability mass those rows give to key block ``j``: a pooled row sums to one (less with sinks,
zero for empty rows), whatever the block sizes, so maps at every zoom level read the same way.

Received attention is the column sum ``Σ_q P[q, k]``: how much attention each key receives.

Both are computed in one pass over P by `digest` (with the head statistics' row terms); the
torch reduction into blocks is `add_blocks` then `finish_blocks`, here once for every caller
(the digest's torch twin, the dense eager trace); the Triton digest pools on the chip and
finishes with `finish_blocks`.
"""

from __future__ import annotations

import torch

# The pooled size when none is asked for, kept in the torch-free `facts` for light clients.
from .facts import DEFAULT_POOLED_SIZE as DEFAULT_POOLED_SIZE


def block_of(length: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Block index [length] of every position when `length` positions are cut into `size` blocks."""
    if not 1 <= size <= length:
        raise ValueError(f"block count must be in [1, {length}], got {size}")
    i = torch.arange(length, device=device, dtype=torch.int64)
    return ((i + 1) * size - 1) // length


def block_sizes(length: int, size: int) -> torch.Tensor:
    """Number of positions [size] in each block of `block_of`."""
    j = torch.arange(size + 1, dtype=torch.int64)
    edges = (j * length) // size
    return edges[1:] - edges[:-1]


def add_blocks(
    acc: torch.Tensor,  # [H, sq, sk] block sums so far (float64 in the torch backends)
    p: torch.Tensor,  # [H, c, n] probabilities of c query rows and n key columns
    query_blocks: torch.Tensor,  # [c] int64 block index of each row (`block_of`)
    key_blocks: torch.Tensor,  # [n] int64 block index of each column
) -> torch.Tensor:
    """Add the mass of `p` to the blocks its rows and columns fall in, in place; returns `acc`.

    Columns are summed per key block in p's dtype, then rows per query block in acc's dtype.
    """
    by_key = torch.zeros(p.shape[0], p.shape[1], acc.shape[2], dtype=p.dtype, device=p.device)
    by_key.index_add_(2, key_blocks, p)
    return acc.index_add_(1, query_blocks, by_key.to(acc.dtype))


def key_block_sums(e: torch.Tensor, k0: int, length: int, size: int) -> tuple[int, torch.Tensor]:
    """(j0, sums [H, c, nb]): the sums of e [H, c, n] (keys k0 .. k0 + n - 1 of a `length`-key axis
    cut into `size` blocks by `block_of`) over each key block those keys touch, j0 the first.

    No scatter where the layout allows: each key its own block (size = length) is e itself; blocks
    of one size (size divides length) are a reshape and a sum, with at most a partial block at
    either end of the chunk; other layouts take `index_add_`."""
    h, c, n = e.shape
    k1 = k0 + n
    first, last = ((k0 + 1) * size - 1) // length, (k1 * size - 1) // length
    if size == length:
        return k0, e
    if length % size == 0:
        b = length // size
        edge0 = min(k1, -(-k0 // b) * b)  # the first block edge at or after k0
        edge1 = max(edge0, (k1 // b) * b)  # the last block edge at or before k1
        parts = []
        if edge0 > k0:
            parts.append(e[..., : edge0 - k0].sum(-1, keepdim=True))
        if edge1 > edge0:
            whole = e[..., edge0 - k0 : edge1 - k0].unflatten(-1, ((edge1 - edge0) // b, b))
            # A product with ones: twice as fast as .sum(-1) over so short an axis (one core).
            parts.append(torch.matmul(whole, torch.ones(b, dtype=e.dtype, device=e.device)))
        if k1 > edge1:
            parts.append(e[..., edge1 - k0 :].sum(-1, keepdim=True))
        return first, parts[0] if len(parts) == 1 else torch.cat(parts, -1)
    sums = torch.zeros(h, c, last - first + 1, dtype=e.dtype, device=e.device)
    return first, sums.index_add_(2, block_of(length, size, e.device)[k0:k1] - first, e)


def finish_blocks(acc: torch.Tensor, length_q: int, size_q: int) -> torch.Tensor:
    """The pooled map [H, sq, sk] float32: block sums `acc` divided by the rows per query block."""
    rows = block_sizes(length_q, size_q).to(device=acc.device, dtype=acc.dtype)
    return (acc / rows[None, :, None]).to(torch.float32)
