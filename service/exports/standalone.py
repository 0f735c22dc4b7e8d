"""One self-contained HTML file with the viewer and a trace's data inside: opens from file://, in
a notebook, or in an e-mail attachment, with no server and no network.

What is embedded (per kind of attention, binary base64 - never number lists):
* every head's full attention, float16 (2 bytes a value; the viewer shows probabilities, and
  float16 keeps 3 significant digits): the head view and the zoomable heatmap read it;
* the model view's pooled thumbnails and the head statistics, float32;
* neuron views (q, k, q×k, scores, probs) for the query tokens chosen at export time;
* the TraceInfo and a ServerInfo (the viewer's defaults, the head statistics) as proto3 JSON;
* the model's numbers of the layers held (`layerNumbers`, per kind), when a file holds a subset
  of them (bertviz's include_layers): the viewer labels layers with these, not 0, 1, ...
The viewer's own modules are embedded as text and loaded as blob-URL modules by `web/loader.js`,
so the file is the same code as the live viewer, with `web/embedded.js` answering its calls
instead of the server. Inputs are limited to ViewerDefaults.full_attention_tokens tokens per axis
(the head view's full-weight mode).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Iterable
from importlib import metadata, resources

import numpy as np

from ... import proto
from ...proto import NAME_OF_KIND
from .. import views
from ..limits import VIEWER, Limits, server_info

#: The viewer's modules, as the page imports them (loader.js rewrites their relative imports).
MODULES = (
    "colors.js",
    "canvas.js",
    "format.js",
    "legend.js",
    "export.js",
    "keys.js",
    "data.js",
    "state.js",
    "views/axes.js",
    "views/stats-table.js",
    "views/image.js",
    "views/head-data.js",
    "views/head-svg.js",
    "views/head-draw.js",
    "views/head.js",
    "views/heatmap.js",
    "views/model.js",
    "views/neuron.js",
    "views/diff.js",
    "embedded.js",
    "main.js",
)

#: fetch(views) -> {tensor name: array}: attnscope.service.view_table.compute over a Trace, or a Client.
Fetch = Callable[[list], dict[str, np.ndarray]]


def _tensor(array: np.ndarray, dtype: str) -> dict:
    values = np.ascontiguousarray(array, dtype="<f2" if dtype == "FLOAT16" else "<f4")
    return {
        "dtype": dtype,
        "shape": [str(n) for n in values.shape],
        "data": base64.b64encode(values.tobytes()).decode("ascii"),
    }


def _text(name: str) -> str:
    return resources.files("attnscope.web").joinpath(name).read_text(encoding="utf-8")


def _json(message) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(message)


def file_server_info(info) -> object:
    """The ServerInfo a standalone file answers with: the viewer's defaults and this trace's model."""
    try:
        version = metadata.version("attnscope")
    except metadata.PackageNotFoundError:  # a source tree used without installing it
        version = "unknown"
    default = info.kinds[0]
    model = proto.ModelInfo(
        name=info.model, is_default=True, num_layers=default.num_layers, num_heads=default.num_heads
    )
    return server_info(Limits(), [model], version)


def embedded_data(
    info,
    fetch: Fetch,
    neuron_queries: Iterable[int] | None = None,
    initial_state: dict | None = None,
    layer_numbers: Iterable[int] | None = None,
) -> dict:
    """The JSON the standalone viewer reads (see web/embedded.js for how each part is used).

    `layer_numbers`: the model's number of each layer held, when they are not 0, 1, ...
    """
    server = file_server_info(info)
    limit = VIEWER.full_attention_tokens
    data: dict = {
        "info": _json(info),
        "serverInfo": _json(server),
        "attention": {},
        "pooled": {},
        "headStats": {},
        "neuron": {},
        "neuronQueries": {},
        "initialState": initial_state or {},
    }
    if layer_numbers is not None:
        numbers = [int(n) for n in layer_numbers]
        for entry in info.kinds:
            if len(numbers) != entry.num_layers:
                raise ValueError(
                    f"layer_numbers names {len(numbers)} layers, the trace holds {entry.num_layers}"
                )
        data["layerNumbers"] = {NAME_OF_KIND[entry.kind]: numbers for entry in info.kinds}
    for entry in info.kinds:
        kind = NAME_OF_KIND[entry.kind]
        lq, lk = entry.query_len, entry.key_len
        if max(lq, lk) > limit:
            raise ValueError(
                f"a standalone HTML file holds inputs of up to {limit} tokens, this one has {max(lq, lk)}; "
                "export .npz or .safetensors, or use the live viewer (attnscope serve)"
            )
        layers, heads = entry.num_layers, entry.num_heads
        size = min(VIEWER.thumbnail_size, max(lq, lk))
        requested = [views.pooled(size, kind=kind, name="thumbs"), views.head_stats(kind=kind, name="stats")]
        requested += [
            views.tile(layer, head, kind=kind, name=f"attention/{layer}.{head}")
            for layer in range(layers)
            for head in range(heads)
        ]
        got = fetch(requested)
        if size < max(lq, lk):  # otherwise the thumbnails are the attention itself (blocks of one)
            data["pooled"][kind] = {"size": size, "tensor": _tensor(got["thumbs"], "FLOAT32")}
        data["headStats"][kind] = {
            s.name: _tensor(got[f"stats/{s.name}"], "FLOAT32") for s in server.head_stats
        }
        data["attention"][kind] = [
            [_tensor(got[f"attention/{layer}.{head}"], "FLOAT16") for head in range(heads)]
            for layer in range(layers)
        ]
        queries = list(range(lq)) if neuron_queries is None else [q for q in neuron_queries if 0 <= q < lq]
        if queries:
            requested = [
                views.neuron(layer, head, q, kind=kind, name=f"neuron/{layer}.{head}.{q}")
                for layer in range(layers)
                for head in range(heads)
                for q in queries
            ]
            got = fetch(requested)
            # k is the same for every query of a head: kept once (float16); q×k is rebuilt as q * k.
            keys, rows = {}, {}
            for v in requested:
                n = v.neuron
                name = v.name
                keys.setdefault(f"{n.layer}/{n.head}", _tensor(got[f"{name}/k"], "FLOAT16"))
                rows[f"{n.layer}/{n.head}/{n.query}"] = {
                    part: _tensor(got[f"{name}/{part}"], "FLOAT32") for part in ("q", "scores", "probs")
                }
            data["neuron"][kind] = {"keys": keys, "rows": rows}
        data["neuronQueries"][kind] = queries
    return data


def _inline(text: str, what: str) -> str:
    # A "</script" inside an inline script would end it early; JSON escapes "/" as "\/" instead.
    if "</script" in text.lower():
        raise ValueError(f"{what} contains '</script' and cannot be inlined")
    return text


def standalone_html(data: dict, title: str = "attnscope") -> str:
    """The viewer page with `data` and the viewer's modules inlined; no external reference."""
    page = _text("index.html")
    modules = {name: _text(name) for name in MODULES}
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    sources = json.dumps(modules).replace("</", "<\\/")
    scripts = (
        f'<script id="attnscope-data" type="application/json">{payload}</script>\n'
        f'<script id="attnscope-modules" type="application/json">{sources}</script>\n'
        f"<script>\n{_inline(_text('loader.js'), 'web/loader.js')}</script>"
    )
    css = _inline(_text("style.css"), "web/style.css")
    page = page.replace('<link rel="stylesheet" href="style.css">', f"<style>\n{css}</style>")
    page = page.replace('<script type="module" src="main.js"></script>', scripts)
    return page.replace("<title>attnscope</title>", f"<title>{html.escape(title)}</title>")


def trace_fetch(trace) -> Fetch:
    """Views computed locally from a Trace, exactly as the server computes them (no limits)."""
    from ..view_table import compute

    def fetch(requested: list) -> dict[str, np.ndarray]:
        return dict(compute(trace, requested))

    return fetch


def trace_standalone(
    trace,
    model_name: str = "model",
    text: str = "",
    pair: str = "",
    neuron_queries: Iterable[int] | None = None,
    initial_state: dict | None = None,
    layer_numbers: Iterable[int] | None = None,
) -> str:
    """Standalone HTML of a Trace (no server involved).

    `layer_numbers`: the model's layer numbers of the trace's layers (default: the trace's
    `layer_numbers` attribute if it has one, else 0, 1, ...).
    """
    from ..core import trace_info

    info = trace_info(trace, model_name)
    state = {
        "text": text or " ".join(trace.tokens),
        "pair": pair,
        "model": model_name,
        **(initial_state or {}),
    }
    if layer_numbers is None:
        layer_numbers = getattr(trace, "layer_numbers", None)
    data = embedded_data(info, trace_fetch(trace), neuron_queries, state, layer_numbers)
    return standalone_html(data, title=f"attnscope: {state['text'][:60]}")
