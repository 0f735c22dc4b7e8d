"""Never silently wrong: each attention call's `MaskSpec` checked against transformers' own mask.

The 2-D mask attnscope's mask function returns carries a `MaskSource`: the ``mask_function``
transformers handed the mask interface (chunked attention, packed sequences, prefix / image-token
overlays all live there, not in the call's keyword arguments). Each attention call checks the
`MaskSpec` built from its keyword arguments against that function on the index pairs that decide
(diagonal and neighbours, window, chunk, segment and group edges, padding edges, first and last
positions, a bounded random sample of the rest, per batch item).

Where the plain description is not exact, the facts transformers' mask adds are looked for, in
this order, and taken on only once the completed description is verified:

* chunked attention, from the config's ``attention_chunk_size`` (Llama 4);
* packed sequences and bidirectional groups, read from the mask function itself with one probe
  per position: a causal query that cannot see the key just before it starts a new segment (the
  packed-sequence mask, several documents in one row); a query that sees the key just after it
  shares a bidirectional group with it (a prefix-LM's prefix, an image's tokens: an
  ``or_mask_function`` or ``block_sequence_ids`` overlay). Groups are runs of consecutive
  positions; anything else (a custom overlay) fails the verification.

When no description is exact, `MaskMismatch` names the model, the layer and the first pair that
differs, before the call returns. Each distinct mask is checked once per forward pass against each
distinct (causal, window) description, not once per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from ..kernels.masking import MaskSpec
from .mismatch import MaskMismatch, layer_name

#: Attribute of the 2-D mask tensor that carries its `MaskSource` to the attention calls.
_SOURCE_ATTR = "_attnscope_mask_source"
#: Bounds of the check: query rows sampled at random, keys sampled at random per row.
_RANDOM_ROWS, _RANDOM_KEYS = 16, 12
#: At most this many multiples of a window or chunk size are visited as edges per batch item.
_EDGE_MULTIPLES = 6
#: At most this many changes of segment or group id are visited as edges per batch item.
_EDGE_IDS = 64


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
        arguments do not carry (module docstring), once the completed description is verified;
        the first `MaskMismatch` (that of the plain description) when none is exact."""
        lq = query.shape[2]
        key = (spec.causal, spec.window, lq, lk)
        if key in self.resolved:
            return replace(spec, **self.resolved[key])
        first: MaskMismatch | None = None
        for facts in self._candidates(spec, lq, lk):
            try:
                self.verify(replace(spec, **facts), module, lq, lk, recording)
            except MaskMismatch as mismatch:
                first = first or mismatch
                continue
            self.resolved[key] = facts
            return replace(spec, **facts)
        raise first

    def _candidates(self, spec: MaskSpec, lq: int, lk: int):
        """Descriptions to try, plainest first (generated lazily: a probe runs only when needed).

        A module may call itself non-causal and still get a causal mask (PaliGemma's language
        model, whose prefix is bidirectional): the mask decides, so causal is tried too."""
        yield {}
        self_attention = lq == lk and self.q_offset == self.kv_offset
        bases = [{}] if spec.causal else ([{"causal": True}] if self_attention else [])
        if not spec.causal and bases:
            yield bases[0]
        chunk = getattr(self.config, "attention_chunk_size", None)
        if isinstance(chunk, int) and chunk >= 1 and bases:
            bases.append(bases[0] | {"chunk": chunk, "chunk_start": self._left_padding()})
            yield bases[-1]
        if not self_attention:
            return  # segments and groups describe causal self-attention without a cache
        for base in bases:
            derived = self._probe(replace(spec, **base), lq)
            if derived:
                yield base | derived

    def _probe(self, spec: MaskSpec, n: int) -> dict:
        """Packed-sequence segments and bidirectional groups read off the mask function (module
        docstring): {"segments": [B, n], "groups": [B, n]}, each only where the probes find one."""
        if n < 2:
            return {}
        device = self.device
        i = torch.arange(1, n, device=device)
        segments, groups = [], []
        for b in range(self.batch_size):
            batch = torch.full_like(i, b)
            sees_previous = _evaluate(self.mask_function, batch, i + self.q_offset, i - 1 + self.kv_offset)
            expected = spec.allowed_pairs(i, i - 1, batch=b)
            starts = expected & ~sees_previous  # the key before a causal query is gone: a new segment
            segments.append(
                torch.cat([torch.zeros(1, dtype=torch.long, device=device), starts.long().cumsum(0)])
            )
            before = i - 1
            joined = _evaluate(self.mask_function, batch, before + self.q_offset, i + self.kv_offset)
            # positions joined to their successor form runs; each run is one group (ids from 1)
            link = torch.cat([joined, torch.zeros(1, dtype=torch.bool, device=device)])
            member = link | torch.cat([torch.zeros(1, dtype=torch.bool, device=device), joined])
            new_run = member & ~torch.cat([torch.zeros(1, dtype=torch.bool, device=device), joined])
            groups.append(
                torch.where(member, new_run.long().cumsum(0), torch.zeros_like(new_run, dtype=torch.long))
            )
        facts = {}
        if any(bool(s[-1] > 0) for s in segments):
            facts["segments"] = torch.stack(segments)
        if any(bool(g.any()) for g in groups):
            facts["groups"] = torch.stack(groups)
        return facts

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
        edges += self._id_edges(spec, b)
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
        if lq == lk:  # the edges of each row's own group and segment
            for ids, reach in ((spec.groups, "_group_reach"), (spec.segments, "_segment_reach")):
                if ids is not None:
                    lo, hi = (t[b].cpu()[q] for t in getattr(spec, reach))
                    cols.append(torch.stack([lo - 1, lo, hi - 1, hi], dim=1))
        cols.append(torch.randint(0, lk, (len(q), _RANDOM_KEYS), generator=gen))
        k = torch.cat(cols, dim=1)
        q = q[:, None].expand_as(k)
        keep = (k >= 0) & (k < lk)
        return q[keep], k[keep]

    @staticmethod
    def _id_edges(spec: MaskSpec, b: int) -> list[int]:
        """Positions around the first _EDGE_IDS changes of segment or group id (either side)."""
        edges: list[int] = []
        for ids in (spec.segments, spec.groups):
            if ids is None:
                continue
            change = (ids[b].diff() != 0).nonzero().flatten() + 1
            if len(change) > _EDGE_IDS:
                change = change[torch.linspace(0, len(change) - 1, _EDGE_IDS).long()]
            for e in change.tolist():
                edges += [e - 1, e, e + 1]
        return edges

    def verify(self, spec: MaskSpec, module: torch.nn.Module, lq: int, lk: int, recording) -> None:
        """Raise `MaskMismatch` unless `spec` equals transformers' mask on the pairs that decide."""
        key = (spec.causal, spec.window, spec.chunk, spec.segments is None, spec.groups is None, lq, lk)
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
        if spec.segments is not None:
            assumed += f", {int(spec.segments.max()) + 1} packed sequences"
        if spec.groups is not None:
            assumed += ", bidirectional groups"
        if self.key_padding is not None:
            assumed += ", key padding"
        raise MaskMismatch(
            f"{model_name}, layer {layer}: the attention mask differs in {kind}. attnscope assumes "
            f"a {assumed} mask; {where}. attnscope cannot trace this mask exactly and refuses "
            "rather than show wrong attention."
        )
