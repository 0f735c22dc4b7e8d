"""Notebooks: the viewer inline (Jupyter, VS Code) and bertviz-compatible functions.

`show(trace)` embeds a standalone viewer of a Trace (no server); `show(text=..., server=URL)` shows
the live viewer of a running `attnscope serve` (zoom fetches tiles from it). `head_view`,
`model_view` and `neuron_view` take bertviz's own arguments with bertviz's meaning, so switching is
one import: `layer`, `heads`, `include_layers` and `include_heads` are the model's real layer and
head numbers, `html_action="return"` returns the IPython HTML object and `"view"` displays it.
`neuron_view` also answers as `neuron_view.show`, in bertviz's argument order (model, model_type,
tokenizer, sentence_a, ...), as well as attnscope's own (model, tokenizer, sentence_a, ...).

Embeds are view-only: the initial state they carry says so (`VIEW_ONLY`), and the embedded
viewer (web/embedded.js) then shows the views and their controls without the Run button, the text
boxes and the compare box. Where `include_layers` / `include_heads` chose a subset, the initial
state also carries the real numbers of the embedded layers and heads (`layerNumbers`,
`headNumbers`: entry i is the model's number of the embedded layer / head i).
"""

from __future__ import annotations

import html as html_module
import inspect

from .standalone import trace_standalone

#: What the initial state of every notebook embed carries: a view-only viewer (no Run, no inputs).
VIEW_ONLY = {"viewOnly": True}
DISPLAY_MODES = ("light", "dark")


def _prettify(tokens):
    if tokens is None:
        return None
    return [t.replace("Ġ", " ").replace("▁", " ").replace("</w>", "") for t in tokens]


def _html_object(markup: str):
    try:
        from IPython.display import HTML

        return HTML(markup)
    except ImportError:  # outside IPython: the markup itself
        return markup


def _frame(document: str, height: int) -> str:
    # An iframe keeps the viewer's styles, ids and modules apart from the notebook's own page.
    frame = (
        f'<iframe srcdoc="{html_module.escape(document, quote=True)}" style="width:100%;height:{height}px;'
        'border:1px solid #ddd" sandbox="allow-scripts allow-downloads"></iframe>'
    )
    return f'<div class="attnscope">{frame}</div>'


def _check_action(html_action) -> None:
    if html_action not in ("view", "return"):
        raise ValueError(f"html_action must be 'view' or 'return', got {html_action!r}")


def _theme(display_mode) -> str:
    if display_mode not in DISPLAY_MODES:
        raise ValueError(f"display_mode must be 'light' or 'dark', got {display_mode!r}")
    return display_mode


def _emit(markup: str, html_action: str):
    _check_action(html_action)
    obj = _html_object(markup)
    if html_action == "return":
        return obj
    from IPython.display import display

    display(obj)
    return None


def show(
    trace=None,
    *,
    text: str = "",
    server: str | None = None,
    view: str = "head",
    layer: int = 0,
    head: int = -1,
    model_name: str = "model",
    neuron_queries=None,
    height: int = 760,
    html_action: str = "view",
):
    """The viewer inline: of a Trace (standalone, view-only), or of `text` on a running server
    (`server` URL: the live viewer, which traces new texts itself)."""
    _check_action(html_action)
    state = {"view": view, "layer": layer, "head": head}
    if server is not None:
        from urllib.parse import urlencode

        if not text:
            raise ValueError("show(server=...) needs the text to trace")
        url = f"{server.rstrip('/')}/?{urlencode({'text': text, **state})}"
        frame = (
            f'<iframe src="{html_module.escape(url)}" style="width:100%;height:{height}px;border:0"></iframe>'
        )
        return _emit(f'<div class="attnscope">{frame}</div>', html_action)
    if trace is None:
        raise ValueError("pass a Trace, or text= and server=")
    document = trace_standalone(
        trace, model_name, text=text, neuron_queries=neuron_queries, initial_state={**VIEW_ONLY, **state}
    )
    return _emit(_frame(document, height), html_action)


def _numbers(chosen, count: int, what: str) -> list[int] | None:
    """bertviz's include_layers / include_heads as the model's numbers (None: all of them)."""
    if chosen is None:
        return None
    chosen = [chosen] if isinstance(chosen, int) else list(chosen)
    if not chosen:
        raise ValueError(f"{what} is empty; pass None for all {count}")
    for n in chosen:
        if isinstance(n, bool) or not isinstance(n, int) or not -count <= n < count:
            raise ValueError(f"{what} holds {n!r}; the attention has {count} (0..{count - 1})")
    return [n % count for n in chosen]


def _dense_view(view: str, html_action: str, state: dict, prettify_tokens: bool, **bertviz_args):
    from ...extract.dense import DenseTrace

    _check_action(html_action)
    pairs = ("encoder_attention", "decoder_attention", "cross_attention", "encoder_tokens", "decoder_tokens")
    if bertviz_args["attention"] is not None and any(bertviz_args[k] is not None for k in pairs):
        raise ValueError(
            "with `attention` (a self-attention model) pass none of the encoder-decoder arguments "
            f"({', '.join(pairs)})"
        )
    first = next((bertviz_args[k] for k in ("attention", *pairs[:3]) if bertviz_args[k] is not None), None)
    if first is None:
        raise ValueError("pass attention, or encoder_attention / decoder_attention / cross_attention")
    layers = _numbers(bertviz_args["include_layers"], len(first), "include_layers")
    heads = bertviz_args.get("include_heads")
    if heads is not None:
        heads = _numbers(heads, int(first[0].shape[-3]), "include_heads")
    layer = state.pop("layer", None)
    if layer is not None:  # bertviz: the model's number of the layer shown first
        if layers is not None and layer not in layers:
            raise ValueError(f"layer {layer} is not in include_layers {layers}")
        state["layer"] = layers.index(layer) if layers is not None else layer
    if layers is not None:
        state["layerNumbers"] = layers
    if heads is not None:
        state["headNumbers"] = heads
    if prettify_tokens:
        for key in ("tokens", "encoder_tokens", "decoder_tokens"):
            bertviz_args[key] = _prettify(bertviz_args[key])
    trace = DenseTrace.from_bertviz(**bertviz_args)
    document = trace_standalone(
        trace,
        "attention",
        neuron_queries=[],
        initial_state={**VIEW_ONLY, "view": view, **state},
        layer_numbers=layers,  # the viewer labels layers with these (embedded data's layerNumbers)
    )
    return _emit(_frame(document, 760), html_action)


def head_view(attention=None, tokens=None, sentence_b_start=None, prettify_tokens=True, layer=None, heads=None,
              encoder_attention=None, decoder_attention=None, cross_attention=None, encoder_tokens=None,
              decoder_tokens=None, include_layers=None, html_action="view"):  # fmt: skip
    """bertviz.head_view's arguments; draws attnscope's head view from the given attention tensors.
    `layer` (the layer shown first) and `heads` (the heads selected first) are the model's
    numbers; `layer` must be one of `include_layers` when that is given."""
    state = {"layer": layer, "heads": ",".join(str(int(h)) for h in heads) if heads else ""}
    return _dense_view("head", html_action, state, prettify_tokens, attention=attention, tokens=tokens,
                       sentence_b_start=sentence_b_start, encoder_attention=encoder_attention,
                       decoder_attention=decoder_attention, cross_attention=cross_attention,
                       encoder_tokens=encoder_tokens, decoder_tokens=decoder_tokens,
                       include_layers=include_layers)  # fmt: skip


def model_view(attention=None, tokens=None, sentence_b_start=None, prettify_tokens=True, display_mode="dark",
               encoder_attention=None, decoder_attention=None, cross_attention=None, encoder_tokens=None,
               decoder_tokens=None, include_layers=None, include_heads=None, html_action="view"):  # fmt: skip
    """bertviz.model_view's arguments; draws attnscope's model view (sortable by head statistics)."""
    state = {"theme": _theme(display_mode)}
    return _dense_view("model", html_action, state, prettify_tokens, attention=attention, tokens=tokens,
                       sentence_b_start=sentence_b_start, encoder_attention=encoder_attention,
                       decoder_attention=decoder_attention, cross_attention=cross_attention,
                       encoder_tokens=encoder_tokens, decoder_tokens=decoder_tokens,
                       include_layers=include_layers, include_heads=include_heads)  # fmt: skip


# The two argument orders neuron_view answers to (signatures only; never called).
def _bertviz_order(model, model_type, tokenizer, sentence_a, sentence_b=None, display_mode="dark", layer=None,
                   head=None, html_action="view"): ...  # fmt: skip
def _attnscope_order(model, tokenizer, sentence_a, sentence_b=None, layer=0, head=0, display_mode="light",
                     html_action="view"): ...  # fmt: skip


_ORDERS = {"bertviz": inspect.signature(_bertviz_order), "attnscope": inspect.signature(_attnscope_order)}
_USAGE = (
    "neuron_view takes bertviz's arguments, neuron_view(model, model_type, tokenizer, sentence_a, "
    "sentence_b=None, display_mode='dark', layer=None, head=None, html_action='view'), or attnscope's, "
    "neuron_view(model, tokenizer, sentence_a, sentence_b=None, layer=0, head=0, display_mode='light', "
    "html_action='view')"
)


def _is_tokenizer(obj) -> bool:
    return obj is not None and not isinstance(obj, (str, bytes)) and callable(obj)


def _neuron_arguments(args: tuple, kwargs: dict) -> dict:
    """neuron_view's arguments by name, in whichever of the two orders they came; TypeError else."""
    bound, problems = None, []
    for order, signature in _ORDERS.items():
        try:
            candidate = signature.bind(*args, **kwargs)
        except TypeError as exc:
            problems.append(f"as {order}'s: {exc}")
            continue
        candidate.apply_defaults()
        got = candidate.arguments
        wrong = [
            what
            for what, ok in (
                ("model_type should be a string such as 'bert'", isinstance(got.get("model_type", ""), str)),
                ("tokenizer should be a tokenizer", _is_tokenizer(got["tokenizer"])),
                ("sentence_a should be a string", isinstance(got["sentence_a"], str)),
                ("sentence_b should be a string or None", got["sentence_b"] is None or isinstance(got["sentence_b"], str)),
            )
            if not ok
        ]  # fmt: skip
        if wrong:
            problems.append(f"as {order}'s: {'; '.join(wrong)}")
        elif bound is None:
            bound = got
    if bound is None:
        raise TypeError(f"{_USAGE}; these arguments fit neither ({' / '.join(problems)})")
    return dict(bound)


def neuron_view(*args, **kwargs):
    """bertviz's neuron view for any model attnscope can trace: q, k, q×k, q·k and softmax per
    query. Takes bertviz's `neuron_view.show(model, model_type, tokenizer, sentence_a, sentence_b=None,
    display_mode='dark', layer=None, head=None, html_action='view')` (model_type is accepted and not
    needed: attnscope reads causality from the model) or attnscope's `(model, tokenizer, sentence_a,
    sentence_b=None, layer=0, head=0, display_mode='light', html_action='view')`."""
    got = _neuron_arguments(args, kwargs)
    _check_action(got["html_action"])
    theme = _theme(got["display_mode"])
    from ...extract import Extractor

    ex = Extractor(got["model"], got["tokenizer"])
    trace = ex.trace(got["sentence_a"], pair=got["sentence_b"])
    layer, head = got["layer"] or 0, got["head"] or 0
    for what, value, count in (("layer", layer, trace.num_layers), ("head", head, trace.num_heads)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
            raise ValueError(f"{what} must be 0..{count - 1}, got {value!r}")
    state = {**VIEW_ONLY, "view": "neuron", "layer": layer, "head": head, "query": 0, "theme": theme}
    document = trace_standalone(
        trace, ex.name, text=got["sentence_a"], pair=got["sentence_b"] or "", initial_state=state
    )
    return _emit(_frame(document, 760), got["html_action"])


#: bertviz's spelling: `from bertviz import neuron_view; neuron_view.show(model, model_type, ...)`.
neuron_view.show = neuron_view
