"""Notebooks: the viewer inline (Jupyter, VS Code) and bertviz-compatible functions.

`show(trace)` embeds a standalone viewer of a Trace (no server); `show(text=..., server=URL)` shows
the live viewer of a running `attnscope serve` (zoom fetches tiles from it). `head_view`,
`model_view` and `neuron_view` take bertviz's own arguments, so switching is one import.
"""

from __future__ import annotations

import html as html_module

from .standalone import trace_standalone


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


def _emit(markup: str, html_action: str):
    if html_action not in ("view", "return"):
        raise ValueError(f"html_action must be 'view' or 'return', got {html_action!r}")
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
    """The viewer inline: of a Trace (standalone), or of `text` on a running server (`server` URL)."""
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
        trace, model_name, text=text, neuron_queries=neuron_queries, initial_state=state
    )
    return _emit(_frame(document, height), html_action)


def _dense_view(view: str, html_action: str, state: dict, prettify_tokens: bool, **bertviz_args):
    from ...extract.dense import DenseTrace

    if prettify_tokens:
        for key in ("tokens", "encoder_tokens", "decoder_tokens"):
            bertviz_args[key] = _prettify(bertviz_args[key])
    trace = DenseTrace.from_bertviz(**bertviz_args)
    document = trace_standalone(trace, "attention", neuron_queries=[], initial_state={"view": view, **state})
    return _emit(_frame(document, 760), html_action)


def head_view(attention=None, tokens=None, sentence_b_start=None, prettify_tokens=True, layer=None, heads=None,
              encoder_attention=None, decoder_attention=None, cross_attention=None, encoder_tokens=None,
              decoder_tokens=None, include_layers=None, html_action="view"):  # fmt: skip
    """bertviz.head_view's arguments; draws attnscope's head view from the given attention tensors."""
    state = {"layer": layer or 0, "heads": ",".join(str(h) for h in heads) if heads else ""}
    return _dense_view("head", html_action, state, prettify_tokens, attention=attention, tokens=tokens,
                       sentence_b_start=sentence_b_start, encoder_attention=encoder_attention,
                       decoder_attention=decoder_attention, cross_attention=cross_attention,
                       encoder_tokens=encoder_tokens, decoder_tokens=decoder_tokens,
                       include_layers=include_layers)  # fmt: skip


def model_view(attention=None, tokens=None, sentence_b_start=None, prettify_tokens=True, display_mode="dark",
               encoder_attention=None, decoder_attention=None, cross_attention=None, encoder_tokens=None,
               decoder_tokens=None, include_layers=None, include_heads=None, html_action="view"):  # fmt: skip
    """bertviz.model_view's arguments; draws attnscope's model view (sortable by head statistics)."""
    state = {"theme": "dark" if display_mode == "dark" else "light"}
    return _dense_view("model", html_action, state, prettify_tokens, attention=attention, tokens=tokens,
                       sentence_b_start=sentence_b_start, encoder_attention=encoder_attention,
                       decoder_attention=decoder_attention, cross_attention=cross_attention,
                       encoder_tokens=encoder_tokens, decoder_tokens=decoder_tokens,
                       include_layers=include_layers, include_heads=include_heads)  # fmt: skip


def neuron_view(
    model, tokenizer, sentence_a, sentence_b=None, layer=0, head=0, display_mode="light", html_action="view"
):
    """bertviz's neuron view for any model attnscope can trace: q, k, q×k, q·k and softmax per query."""
    from ...extract import Extractor

    trace = Extractor(model, tokenizer).trace(sentence_a, pair=sentence_b)
    state = {
        "view": "neuron",
        "layer": layer,
        "head": head,
        "query": 0,
        "theme": "dark" if display_mode == "dark" else "light",
    }
    name = getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
    document = trace_standalone(trace, name, text=sentence_a, pair=sentence_b or "", initial_state=state)
    return _emit(_frame(document, 760), html_action)
