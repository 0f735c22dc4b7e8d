"""The service's core: models, limits, kept traces and views, knowing nothing of gRPC.

Model and kernel work runs where the servicer puts it (the model's worker thread). The
streaming calls (`extract`, `get_views`) are generators: the first steps trace and plan (every
limit is checked before any view is computed), then they yield the trace's description, the
manifest of tensor names, and each view's tensors as soon as that view is computed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from .. import proto
from ..extract import Extractor, InputTooLong, Trace
from ..extract.default_model import display_name, is_path
from ..extract.extractor import EagerTooLong
from ..extract.generation import can_generate
from ..kernels.interrupt import checkpoint
from . import generating, view_table
from .cache import TraceCache
from .errors import InvalidArgument, NotFound, ResourceExhausted, shorten
from .images import decode_image, patch_grid
from .limits import Limits, server_info
from .views import default_views

#: What the streaming calls yield: ("progress", Progress) while a generation runs, ("info",
#: TraceInfo), ("manifest", ViewManifest), then one ("tensors", [(name, array), ...]) per view.
Item = tuple[str, object]


@dataclass
class Collected:
    """A whole stream of the core, gathered in-process (benchmarks, tests)."""

    info: object
    manifest: object
    tensors: dict[str, np.ndarray]
    progress: list | None = None


def collect(items: Iterator[Item]) -> Collected:
    parts: dict[str, object] = {"tensors": {}}
    for what, value in items:
        if what == "tensors":
            parts["tensors"].update(value)
        elif what == "progress":
            parts.setdefault("progress", []).append(value)
        else:
            parts[what] = value
    return Collected(parts["info"], parts["manifest"], parts["tensors"], parts.get("progress"))


def _holds_the_pair(trace: Trace, kind: str) -> bool:
    """Whether both axes of `kind` are the input text's tokens (where sentence B's start applies):
    not cross attention, and not a decoder that reads a target of its own."""
    if trace.sentence_b_start is None or kind == "cross":
        return False
    source = trace.query_tokens("encoder") if "encoder" in trace.kinds else trace.query_tokens(kind)
    return trace.query_tokens(kind) == source == trace.key_tokens(kind)


def kind_info(trace: Trace, kind: str):
    """The wire's description of one kind of attention a trace holds."""
    layers, heads, lq, lk = trace.shape(kind)
    b_start = trace.sentence_b_start
    query_tokens = trace.query_tokens(kind)
    grid = patch_grid(query_tokens) if query_tokens == trace.key_tokens(kind) else None
    return proto.KindInfo(
        kind=proto.KIND_OF_NAME[kind],
        num_layers=layers,
        num_heads=heads,
        num_key_heads=trace.num_key_heads(kind),
        head_dim=trace.head_dim(kind),
        query_tokens=trace.query_tokens(kind),
        key_tokens=trace.key_tokens(kind),
        query_len=lq,
        key_len=lk,
        sentence_b_start=b_start if _holds_the_pair(trace, kind) else -1,
        patch_grid=grid,
        sentences=[]
        if grid is not None
        else [proto.Range(start=a, stop=b) for a, b in trace.sentence_spans(kind)],
    )


def trace_info(trace: Trace, model: str, trace_id: str = "", excluded_keys=()):
    """TraceInfo: the trace's id, its model, every kind it holds (the default first), and the keys
    a request's Renormalize left out of its views."""
    kinds = [trace.default_kind] + [k for k in trace.kinds if k != trace.default_kind]
    return proto.TraceInfo(
        trace_id=trace_id,
        model=model,
        kinds=[kind_info(trace, k) for k in kinds],
        method=trace.method,
        excluded_keys=list(excluded_keys),
        prompt_len=trace.prompt_len or 0,
        generated_ids=trace.generated.ids if trace.generated is not None else [],
        generated_text=trace.generated.text if trace.generated is not None else "",
        device_memory=[
            proto.DeviceMemory(device=device, trace_bytes=n)
            for device, n in sorted(trace.bytes_by_device().items())
        ],
    )


def _deadline_check(deadline: float | None) -> Callable[[], None]:
    def check() -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError("deadline exceeded while computing views")

    return check


class AttentionCore:
    def __init__(
        self,
        models: dict[str, Extractor],
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not models:
            raise ValueError("the service needs at least one model")
        # The keys are the names ModelInfo and TraceInfo show; one given as a filesystem path is
        # shown by its Hub id / folder name instead (never a site-packages path) and still
        # answers requests that name the path.
        self.models: dict[str, Extractor] = {}
        self._aliases: dict[str, str] = {}
        for given, ex in models.items():
            name = display_name(given) if is_path(str(given)) else given
            if name in self.models:
                raise ValueError(f"two models are both named {name!r}; give them names of their own")
            self.models[name] = ex
            if name != given:
                self._aliases[str(given)] = name
        self.default_model = next(iter(self.models))
        self.limits = limits or Limits()
        self.traces = TraceCache(self.limits.trace_cache_bytes, self.limits.trace_ttl_s, clock)

    # ---- requests ----------------------------------------------------------------------------
    def model_name(self, name: str) -> str:
        """The served model a request's `model` field names ("" = the default)."""
        name = self._aliases.get(name, name) or self.default_model
        if name not in self.models:
            raise NotFound(f"model {shorten(name)} is not served here; available: {', '.join(self.models)}")
        return name

    def trace_owner(self, trace_id: str) -> str:
        """The model whose trace `trace_id` is (no model work: the servicer picks the worker by it)."""
        if not trace_id:
            raise InvalidArgument("trace_id is empty: pass the id CreateTrace returned")
        return self.traces.get(trace_id)[1]

    def _trace(self, request, deadline: float | None) -> Iterator[Item]:
        """Trace the request's input; yields progress while a generation runs and returns (model
        name, trace): ``name, trace = yield from self._trace(...)``."""
        name = self.model_name(request.model)
        generation = request.generation if request.HasField("generation") else None
        if request.image:
            if generation is not None:
                raise InvalidArgument("generation continues a text: send text, not image")
            return name, self._trace_image(name, request, deadline)
        if not takes_text(self.models[name]):
            has = "takes images, not text: send `image`"
            if self.models[name].processor is None:
                has = "has no tokenizer: it cannot read text"
            raise InvalidArgument(f"model {shorten(name)} {has}")
        text, pair, target = request.text, request.text_pair, request.target
        if not text.strip():
            raise InvalidArgument("text is empty or only whitespace: send the input to trace")
        chars = len(text) + len(pair) + len(target)
        if chars > self.limits.max_text_chars:
            raise ResourceExhausted(
                f"text is {chars:,} characters; this server accepts at most {self.limits.max_text_chars:,}"
            )
        if generation is not None:
            if pair or target:
                raise InvalidArgument("generation continues `text` alone: leave text_pair and target empty")
            trace = yield from generating.run(
                self.models[name], text, generation, name, self.limits, deadline
            )
            return name, trace
        kwargs = {"target": target} if target else {}
        return name, self._run(
            "text",
            lambda: self.models[name].trace(
                text, pair=pair or None, deadline=deadline, max_tokens=self.limits.max_tokens, **kwargs
            ),
        )

    def _trace_image(self, name: str, request, deadline: float | None) -> Trace:
        ex = self.models[name]
        if ex.processor is None:
            raise InvalidArgument(
                f"model {shorten(name)} takes no images (it has no image processor); send text, "
                "or pick a model whose ModelInfo.takes_images is true"
            )
        given = [f for f in ("text", "text_pair", "target") if getattr(request, f)]
        if given:
            raise InvalidArgument(f"send either image or text, not both: {', '.join(given)} set with image")
        image = decode_image(request.image, self.limits)
        return self._run(
            "image", lambda: ex.trace(image=image, deadline=deadline, max_tokens=self.limits.max_tokens)
        )

    @staticmethod
    def _run(what: str, trace: Callable[[], Trace]) -> Trace:
        """`trace()`, with the input-size refusals as RESOURCE_EXHAUSTED."""
        try:
            return trace()
        except EagerTooLong as exc:
            raise ResourceExhausted(str(exc)) from None
        except InputTooLong as exc:
            raise ResourceExhausted(
                f"{what} is {exc.tokens:,} tokens; this server accepts at most {exc.limit:,}"
            ) from None

    def _plan(self, trace: Trace, request) -> tuple[list, object]:
        """(the planned views, the request's Renormalize or None): every limit checked, no work."""
        renorm = request.renormalize if request.HasField("renormalize") else None
        work = view_table.renormalize_work(trace, renorm)
        return view_table.plan(trace, list(request.views) or default_views(), self.limits, work), renorm

    def _views(self, trace: Trace, info, planned: list, deadline: float | None) -> Iterator[Item]:
        check = _deadline_check(deadline)
        yield "info", info
        yield "manifest", view_table.manifest(planned)
        for view in planned:
            check()
            yield "tensors", view_table.run_view(trace, view, self.limits)

    def extract(self, request, deadline: float | None = None) -> Iterator[Item]:
        name, trace = yield from self._trace(request, deadline)
        planned, renorm = self._plan(trace, request)  # a request refused here keeps no trace
        trace_id = self.traces.put(trace, name) if request.keep_trace else ""
        try:
            view_trace, excluded = view_table.renormalize(trace, renorm)
            info = trace_info(trace, name, trace_id, excluded)
            yield from self._views(view_trace, info, planned, deadline)
        except BaseException:  # a call that fails (or is abandoned) keeps no trace
            if trace_id:
                self.traces.delete(trace_id)
            raise

    def create_trace(self, request, deadline: float | None = None):
        steps = self._trace(request, deadline)
        try:
            while True:
                next(steps)  # a unary call: progress has nowhere to go
        except StopIteration as done:
            name, trace = done.value
        trace.head_stats()  # row statistics now, so later views only pay for themselves
        checkpoint()  # a call abandoned by now (deadline, client gone) keeps no trace
        return trace_info(trace, name, self.traces.put(trace, name))

    def get_views(self, request, deadline: float | None = None) -> Iterator[Item]:
        self.trace_owner(request.trace_id)
        trace, name = self.traces.get(request.trace_id)
        planned, renorm = self._plan(trace, request)
        view_trace, excluded = view_table.renormalize(trace, renorm)
        info = trace_info(trace, name, request.trace_id, excluded)
        yield from self._views(view_trace, info, planned, deadline)

    # ---- cheap calls: no model work, answered on the event loop ------------------------------
    def delete_trace(self, request):
        return proto.DeleteTraceResponse(deleted=self.traces.delete(request.trace_id))

    def list_models(self):
        return proto.ListModelsResponse(models=[self._model_info(name) for name in self.models])

    def server_info(self):
        try:
            version = metadata.version("attnscope")
        except metadata.PackageNotFoundError:  # a source tree used without installing it
            version = "unknown"
        return server_info(self.limits, self.list_models().models, version)

    def _model_info(self, name: str):
        ex = self.models[name]
        param = next(ex.model.parameters())
        config = ex.model.config
        return proto.ModelInfo(
            name=name,
            is_default=name == self.default_model,
            num_layers=int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 0),
            num_heads=int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 0),
            max_tokens=min(ex.max_positions or self.limits.max_tokens, self.limits.max_tokens),
            device=str(param.device),
            dtype=str(param.dtype).removeprefix("torch."),
            takes_images=ex.processor is not None,
            takes_text=takes_text(ex),
            can_generate=takes_text(ex) and can_generate(ex.model),
        )

    def warm_up(self) -> None:
        """One tiny trace per model, so the first real call does not pay for lazy initialization."""
        for ex in self.models.values():
            if takes_text(ex):
                ex.trace("attnscope warm-up").head_stats()
            elif ex.processor is not None:
                from PIL import Image

                ex.trace(image=Image.new("RGB", (32, 32), (127, 127, 127))).head_stats()


def takes_text(ex: Extractor) -> bool:
    """Whether `ex` has a tokenizer (its tokenizer slot holds more than an image processor)."""
    return ex.tokenizer is not None and ex.tokenizer is not ex.processor
