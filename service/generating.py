"""A request's Generation: checked against the model and the limits, then run with progress.

The model generates on a thread of its own while the call's generator (on the model's worker)
yields a Progress item after each new token, so a client sees generation advance; the call's
deadline, or the call ending (the generator closed), stops generation at the next token.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

from .. import proto
from ..extract import Extractor, InputTooLong, Trace
from ..extract.generation import can_generate
from .errors import InvalidArgument, ResourceExhausted, shorten
from .limits import Limits

#: How often the waiting generator wakes to check the call (seconds) when no token came.
_POLL_S = 0.25


def options(spec, model: str, ex: Extractor, limits: Limits) -> dict:
    """`Extractor.trace_generation`'s options from a Generation message, every field checked."""
    if not can_generate(ex.model) or ex.tokenizer is None:
        raise InvalidArgument(
            f"model {shorten(model)} cannot generate (it needs a decoder with a language-modelling "
            "head and a tokenizer; see ModelInfo.can_generate)"
        )
    n = spec.max_new_tokens
    if not 1 <= n <= limits.max_new_tokens:
        raise InvalidArgument(
            f"generation.max_new_tokens must be in [1, {limits.max_new_tokens}] (this server's limit), got {n}"
        )
    out: dict = {"do_sample": spec.do_sample, "seed": spec.seed if spec.HasField("seed") else 0}
    if spec.HasField("temperature"):
        if not spec.temperature > 0:
            raise InvalidArgument(f"generation.temperature must be > 0, got {spec.temperature}")
        out["temperature"] = spec.temperature
    if spec.HasField("top_k"):
        if spec.top_k < 0:
            raise InvalidArgument(f"generation.top_k must be >= 0 (0 = no limit), got {spec.top_k}")
        out["top_k"] = spec.top_k or None
    if spec.HasField("top_p"):
        if not 0 < spec.top_p <= 1:
            raise InvalidArgument(f"generation.top_p must be in (0, 1], got {spec.top_p}")
        out["top_p"] = spec.top_p
    return out


def run(
    ex: Extractor, text: str, spec, model: str, limits: Limits, deadline: float | None
) -> Iterator[tuple[str, object]]:
    """Yields ("progress", Progress) while `ex` generates a continuation of `text`; returns the
    generation trace (use as ``trace = yield from run(...)``)."""
    opts = options(spec, model, ex, limits)
    total = spec.max_new_tokens
    tokens: queue.Queue = queue.Queue()
    stop = threading.Event()
    result: dict = {}

    def should_stop() -> bool:
        return stop.is_set() or (deadline is not None and time.monotonic() > deadline)

    def work() -> None:
        try:
            result["trace"] = ex.trace_generation(
                text,
                total,
                deadline=deadline,
                max_tokens=limits.max_tokens,
                report=tokens.put,
                should_stop=should_stop,
                **opts,
            )
        except BaseException as exc:  # handed to the call's thread, raised there
            result["error"] = exc
        finally:
            tokens.put(None)

    worker = threading.Thread(target=work, name="attnscope-generate", daemon=True)
    worker.start()
    try:
        yield "progress", proto.Progress(stage="generate", done=0, total=total)
        while True:
            try:
                done = tokens.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if done is None:
                break
            yield "progress", proto.Progress(stage="generate", done=done, total=total)
    finally:  # the call ended early (closed, cancelled): stop at the next token and wait
        stop.set()
        worker.join()
    if "error" in result:
        error = result["error"]
        if isinstance(error, InputTooLong):
            raise ResourceExhausted(
                f"the prompt plus {total} new tokens is {error.tokens:,} tokens; this server accepts at "
                f"most {error.limit:,}"
            ) from None
        raise error
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError("deadline exceeded while generating")
    trace: Trace = result["trace"]
    return trace
