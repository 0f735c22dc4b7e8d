"""Documents in, records out: the one function both run paths trace with (the in-process loop
calls it directly, each Ray Data actor holds one `DocumentTracer`).

A document is bad, and gets a record with an `error` instead of statistics, when it is empty
(white space only), longer than `max_tokens` or the model's position table, or the model refuses
it (a ValueError, e.g. no tokens); any other exception is a bug and propagates.

`batch_size` > 1 traces documents of similar length together in one padded forward pass
(`Extractor.trace_batch`), which pays on a GPU; padding changes float rounding a little, so the
documents' statistics then agree with one-at-a-time traces to about 1e-6, not bit for bit. The
default (1) traces each document alone: identical records whichever path or worker traces it, as
long as the device and torch's CPU thread count are the same (matrix products split over another
number of threads round float32 differently: MiniLM's per-head means moved by up to 2e-7 between
one and two threads), which is why `--threads` sets both paths alike.
"""

from __future__ import annotations

import contextlib

from attnscope.extract.inputs import encode
from attnscope.kernels.facts import HEAD_STAT_NAMES

from .records import bad_record


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's CPU thread count set to `n` inside, restored after (a calling process keeps its own)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _flat(trace) -> tuple[dict, list[str], int, int]:
    stats = trace.head_stats()
    classes = trace.head_classes()
    layers, heads = stats[HEAD_STAT_NAMES[0]].shape
    flat = {name: stats[name].double().flatten().tolist() for name in HEAD_STAT_NAMES}
    names = [classes[(layer, head)] for layer in range(layers) for head in range(heads)]
    return flat, names, layers, heads


class DocumentTracer:
    """Traces documents with one Extractor; `__call__(rows) -> records`."""

    def __init__(self, extractor, max_tokens: int | None = None, batch_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.extractor = extractor
        limits = [n for n in (max_tokens, extractor.max_positions) if n is not None]
        self.max_tokens = min(limits) if limits else None
        self._limit_name = (
            "--max-tokens"
            if max_tokens is not None and max_tokens == self.max_tokens
            else "the model's positions"
        )
        self.batch_size = batch_size

    def _check(self, row: dict) -> tuple[int, str | None]:
        """(token count, why the document is bad or None)."""
        if row.get("error"):
            return 0, row["error"]
        text = row.get("text")
        if text is None or not text.strip():
            return 0, "empty"
        try:
            n = len(encode(self.extractor.tokenizer, text).ids)
        except ValueError as exc:
            return 0, str(exc)
        if self.max_tokens is not None and n > self.max_tokens:
            return n, f"too long: {n} tokens, over {self.max_tokens} ({self._limit_name})"
        return n, None

    def _record(self, row: dict, n_tokens: int, trace) -> dict:
        flat, names, layers, heads = _flat(trace)
        return {
            "doc_id": row["doc_id"],
            "source": row["source"],
            "index": int(row["index"]),
            "n_tokens": n_tokens,
            "layers": layers,
            "heads": heads,
            "error": None,
            **flat,
            "classes": names,
        }

    def __call__(self, rows: list[dict]) -> list[dict]:
        """One record per row (dicts with doc_id, source, index, text, error), in the rows' order."""
        out: list[dict | None] = [None] * len(rows)
        good = []
        for i, row in enumerate(rows):
            n, error = self._check(row)
            if error is not None:
                out[i] = bad_record(row["doc_id"], row["source"], int(row["index"]), error, n)
            else:
                good.append((n, i))
        good.sort()  # similar lengths together: little padding
        for start in range(0, len(good), self.batch_size):
            chunk = good[start : start + self.batch_size]
            texts = [rows[i]["text"] for _, i in chunk]
            if len(chunk) == 1:
                traces = [self.extractor.trace(texts[0])]
            else:
                traces = self.extractor.trace_batch(texts)
            for (n, i), trace in zip(chunk, traces, strict=True):
                out[i] = self._record(rows[i], n, trace)
        return out
