"""The service's core: models, limits, kept traces and views, knowing nothing of gRPC.

Every public method runs model or kernel work and is meant for the model's worker thread; the
servicer (server.py) only parses requests, calls these, and streams the results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import proto
from ..extract import Extractor, Trace
from ..extract.extractor import InputTooLong
from . import views as view_module
from .cache import TraceCache
from .errors import InvalidArgument, NotFound, ResourceExhausted


@dataclass(frozen=True)
class Limits:
    """What one call may ask for; past these a call gets RESOURCE_EXHAUSTED or INVALID_ARGUMENT."""

    max_text_chars: int = 200_000
    max_tokens: int = 16_384
    max_pooled_size: int = 2048
    max_result_values: int = 64 * 2**20  # 256 MiB of float32 per call
    trace_cache_bytes: int = 2 * 2**30
    trace_ttl_s: float = 600.0


@dataclass
class ExtractResult:
    info: object  # proto.TraceInfo
    tensors: list[tuple[str, np.ndarray]]


def trace_info(trace: Trace, model: str, trace_id: str = "") -> object:
    kinds = trace.kinds
    return proto.TraceInfo(
        trace_id=trace_id,
        model=model,
        tokens=trace.tokens,
        num_layers=trace.num_layers,
        num_heads=trace.num_heads,
        seq_len=trace.seq_len,
        kinds=list(kinds),
        sentence_b_start=-1 if trace.sentence_b_start is None else trace.sentence_b_start,
        target_tokens=trace.query_tokens("decoder") if "cross" in kinds else [],
    )


class AttentionCore:
    def __init__(
        self,
        models: dict[str, Extractor],
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not models:
            raise ValueError("the service needs at least one model")
        self.models = dict(models)
        self.default_model = next(iter(self.models))
        self.limits = limits or Limits()
        self.traces = TraceCache(self.limits.trace_cache_bytes, self.limits.trace_ttl_s, clock)

    # ---- requests ----------------------------------------------------------------------------
    def _model(self, name: str) -> tuple[str, Extractor]:
        name = name or self.default_model
        if name not in self.models:
            raise NotFound(f"model {name!r} is not served here; available: {', '.join(self.models)}")
        return name, self.models[name]

    def _trace(
        self, model: str, text: str, pair: str, target: str, deadline: float | None
    ) -> tuple[str, Trace]:
        name, ex = self._model(model)
        if not text:
            raise InvalidArgument("text is empty: send the input to trace")
        chars = len(text) + len(pair) + len(target)
        if chars > self.limits.max_text_chars:
            raise ResourceExhausted(
                f"text is {chars:,} characters; this server accepts at most {self.limits.max_text_chars:,}"
            )
        kwargs = {"target": target} if target else {}
        try:
            trace = ex.trace(
                text, pair=pair or None, deadline=deadline, max_tokens=self.limits.max_tokens, **kwargs
            )
        except InputTooLong as exc:
            raise ResourceExhausted(
                f"text is {exc.tokens:,} tokens; this server accepts at most {exc.limit:,}"
            ) from None
        return name, trace

    def _views(self, trace: Trace, views: list, deadline: float | None) -> list[tuple[str, np.ndarray]]:
        def check_deadline() -> None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("deadline exceeded while computing views")

        return list(
            view_module.compute(
                trace,
                views or view_module.default_views(),
                self.limits.max_pooled_size,
                self.limits.max_result_values,
                check_deadline,
            )
        )

    def extract(self, request, deadline: float | None = None) -> ExtractResult:
        name, trace = self._trace(request.model, request.text, request.text_pair, request.target, deadline)
        tensors = self._views(trace, list(request.views), deadline)
        trace_id = self.traces.put(trace, name) if request.keep_trace else ""
        return ExtractResult(trace_info(trace, name, trace_id), tensors)

    def create_trace(self, request, deadline: float | None = None):
        name, trace = self._trace(request.model, request.text, request.text_pair, request.target, deadline)
        trace.head_stats()  # row statistics now, so later views only pay for themselves
        return trace_info(trace, name, self.traces.put(trace, name))

    def get_views(self, request, deadline: float | None = None) -> ExtractResult:
        if not request.trace_id:
            raise InvalidArgument("trace_id is empty: pass the id CreateTrace returned")
        trace, name = self.traces.get(request.trace_id)
        return ExtractResult(
            trace_info(trace, name, request.trace_id), self._views(trace, list(request.views), deadline)
        )

    def delete_trace(self, request) -> object:
        return proto.DeleteTraceResponse(deleted=self.traces.delete(request.trace_id))

    def list_models(self) -> object:
        models = []
        for name, ex in self.models.items():
            param = next(ex.model.parameters())
            config = ex.model.config
            models.append(
                proto.ModelInfo(
                    name=name,
                    is_default=name == self.default_model,
                    num_layers=int(
                        getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 0
                    ),
                    num_heads=int(
                        getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 0
                    ),
                    max_tokens=min(ex.max_positions or self.limits.max_tokens, self.limits.max_tokens),
                    device=str(param.device),
                    dtype=str(param.dtype).removeprefix("torch."),
                )
            )
        return proto.ListModelsResponse(models=models)

    def warm_up(self) -> None:
        """One tiny trace per model, so the first real call does not pay for lazy initialization."""
        for ex in self.models.values():
            if ex.tokenizer is not None:
                ex.trace("attnscope warm-up").head_stats()
