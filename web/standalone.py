"""One self-contained HTML file with the viewer and a trace's data inside: opens from file://, in
a notebook, or in an e-mail attachment, with no server and no network.

What is embedded (per kind of attention, binary base64 - never number lists):
* every head's full attention, float16 (2 bytes a value; the viewer shows probabilities, and
  float16 keeps 3 significant digits): the head view and the zoomable heatmap read it;
* the model view's pooled thumbnails and the head statistics, float32;
* neuron views (q, k, q×k, scores, probs) for the query tokens chosen at export time.
The viewer's own modules are embedded as text and loaded as blob-URL modules, so the file is the
same code as the live viewer, with `web/embedded.js` answering its calls instead of the server.
Inputs are limited to FULL_LIMIT tokens per side (the head view's full-weight mode).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Iterable
from importlib import resources

import numpy as np

from ..kernels import HEAD_STAT_NAMES

FULL_LIMIT = 256  # web/views/head.js FULL_LIMIT
THUMB = 64  # web/views/model.js THUMB
MODULES = (
    "colors.js",
    "data.js",
    "state.js",
    "views/head.js",
    "views/model.js",
    "views/neuron.js",
    "embedded.js",
    "main.js",
)

#: fetch(views) -> {tensor name: array}: attnscope.service.views.compute over a Trace, or a Client.
Fetch = Callable[[list], dict[str, np.ndarray]]


def _tensor(array: np.ndarray, dtype: str) -> dict:
    values = np.ascontiguousarray(array, dtype="<f2" if dtype == "FLOAT16" else "<f4")
    return {
        "dtype": dtype,
        "shape": [str(n) for n in values.shape],
        "bytes": values.nbytes,
        "data": base64.b64encode(values.tobytes()).decode("ascii"),
    }


def _text(name: str) -> str:
    return resources.files("attnscope.web").joinpath(name).read_text(encoding="utf-8")


def info_json(info) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(info)


def embedded_data(
    info,
    fetch: Fetch,
    model: dict,
    neuron_queries: Iterable[int] | None = None,
    initial_state: dict | None = None,
) -> dict:
    """The JSON the standalone viewer reads (see web/embedded.js for how each part is used)."""
    from ..service import views

    data: dict = {
        "info": info_json(info),
        "model": model,
        "attention": {},
        "pooled": {},
        "headStats": {},
        "neuron": {},
        "initialState": initial_state or {},
    }
    tokens, target = list(info.tokens), list(info.target_tokens)
    for kind in info.kinds:
        lq = len(target) if kind != "encoder" and target else len(tokens)
        lk = len(tokens) if kind == "cross" else lq
        if max(lq, lk) > FULL_LIMIT:
            raise ValueError(
                f"a standalone HTML file holds inputs of up to {FULL_LIMIT} tokens, this one has {max(lq, lk)}; "
                "export .npz or .safetensors, or use the live viewer (attnscope serve)"
            )
        layers, heads = info.num_layers, info.num_heads
        size = min(THUMB, max(lq, lk))
        requested = [views.pooled(size, kind=kind), views.head_stats(kind=kind)]
        requested += [views.tile(layer, head, kind=kind) for layer in range(layers) for head in range(heads)]
        got = fetch(requested)
        if size < max(lq, lk):  # otherwise the thumbnails are the attention itself (blocks of one)
            data["pooled"][kind] = {"size": size, "tensor": _tensor(got["pooled"], "FLOAT32")}
        data["headStats"][kind] = {n: _tensor(got[f"head_stats/{n}"], "FLOAT32") for n in HEAD_STAT_NAMES}
        data["attention"][kind] = [
            [_tensor(got[f"tile/{2 + layer * heads + head}"], "FLOAT16") for head in range(heads)]
            for layer in range(layers)
        ]
        queries = list(range(lq)) if neuron_queries is None else [q for q in neuron_queries if 0 <= q < lq]
        if queries:
            requested = [
                views.neuron(layer, head, q, kind=kind)
                for layer in range(layers)
                for head in range(heads)
                for q in queries
            ]
            got = fetch(requested)
            # k is the same for every query of a head: kept once (float16); q×k is rebuilt as q * k.
            keys, rows = {}, {}
            for i, v in enumerate(requested):
                n = v.neuron
                keys.setdefault(f"{n.layer}/{n.head}", _tensor(got[f"neuron/{i}/k"], "FLOAT16"))
                rows[f"{n.layer}/{n.head}/{n.query}"] = {
                    part: _tensor(got[f"neuron/{i}/{part}"], "FLOAT32") for part in ("q", "scores", "probs")
                }
            data["neuron"][kind] = {"keys": keys, "rows": rows}
        data["neuronQueries"] = queries
    return data


def standalone_html(data: dict, title: str = "attnscope") -> str:
    """The viewer page with `data` and the viewer's modules inlined; no external reference."""
    page = _text("index.html")
    modules = {name: _text(name) for name in MODULES}
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    sources = json.dumps(modules).replace("</", "<\\/")
    loader = f"""<script id="attnscope-data" type="application/json">{payload}</script>
<script id="attnscope-modules" type="application/json">{sources}</script>
<script>
// Load the embedded ES modules as blob URLs, dependencies first (file:// forbids module files).
(() => {{
  const sources = JSON.parse(document.getElementById("attnscope-modules").textContent);
  const urls = {{}};
  const resolve = (from, spec) => {{
    const parts = from.split("/").slice(0, -1);
    for (const p of spec.split("/")) {{ if (p === "..") parts.pop(); else if (p !== ".") parts.push(p); }}
    return parts.join("/");
  }};
  const load = (name) => {{
    if (urls[name]) return urls[name];
    const code = sources[name].replace(/(from\\s+|import\\s+)"(\\.\\.?\\/[^"]+)"/g,
      (m, lead, spec) => `${{lead}}"${{load(resolve(name, spec))}}"`);
    urls[name] = URL.createObjectURL(new Blob([code], {{ type: "text/javascript" }}));
    return urls[name];
  }};
  import(load("embedded.js")).then(() => import(load("main.js"))).catch((err) => {{
    const box = document.getElementById("error");
    box.textContent = `the embedded viewer failed to start: ${{err}}`;
    box.hidden = false;
  }});
}})();
</script>"""
    css = _text("style.css")
    page = page.replace('<link rel="stylesheet" href="style.css">', f"<style>\n{css}</style>")
    page = page.replace('<script type="module" src="main.js"></script>', loader)
    return page.replace("<title>attnscope</title>", f"<title>{html.escape(title)}</title>")


def model_entry(name: str, info) -> dict:
    return {"name": name, "isDefault": True, "numLayers": info.num_layers, "numHeads": info.num_heads}


def trace_fetch(trace) -> Fetch:
    """Views computed locally from a Trace, exactly as the server computes them."""
    from ..service import views

    def fetch(requested: list) -> dict[str, np.ndarray]:
        return dict(views.compute(trace, requested, max_pooled=1 << 30, max_elements=1 << 40))

    return fetch


def trace_standalone(
    trace,
    model_name: str = "model",
    text: str = "",
    pair: str = "",
    neuron_queries: Iterable[int] | None = None,
    initial_state: dict | None = None,
) -> str:
    """Standalone HTML of a Trace (no server involved)."""
    from ..service.core import trace_info

    info = trace_info(trace, model_name)
    state = {
        "text": text or " ".join(trace.tokens),
        "pair": pair,
        "model": model_name,
        **(initial_state or {}),
    }
    data = embedded_data(info, trace_fetch(trace), model_entry(model_name, info), neuron_queries, state)
    return standalone_html(data, title=f"attnscope: {state['text'][:60]}")
