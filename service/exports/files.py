"""Files of a trace's views: .npz and .safetensors (the standalone .html has its own writer).

Schema of .npz and .safetensors (tensor names are the view names each export request gives):
* ``head_stats/<statistic>`` float32 [layers, heads] for every statistic the service lists
  (GetServerInfo's head_stats: entropy, previous_token, ...);
* ``pooled`` float32 [layers, heads, sq, sk]: probability mass per block (kernels/pooled.py);
* ``tile/<layer>.<head>`` float32 [Lq, Lk]: exact attention of the heads asked for with `tiles`;
* with encoder-decoder models every name is prefixed by its kind: ``cross/pooled``, ...;
* metadata: ``tokens`` (the default kind's query tokens) and ``target_tokens`` (the decoder's, for
  encoder-decoder traces), ``model``, ``text``, ``pair``, ``kinds``, and the default kind's
  ``num_layers``, ``num_heads``, ``seq_len``, ``sentence_b_start`` (-1 without a pair),
  ``schema`` ("attnscope.export/1"). In .npz, ``tokens`` and ``target_tokens`` are string arrays
  and the rest sits in ``metadata`` (a JSON string); in .safetensors, all of it is in the header's
  string metadata (JSON-encoded values).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ...kernels.facts import DEFAULT_POOLED_SIZE
from ...proto import NAME_OF_KIND
from .. import views

SCHEMA = "attnscope.export/1"
FORMATS = (".npz", ".safetensors", ".html")


def export_views(info, pooled_size: int = DEFAULT_POOLED_SIZE, tiles: Iterable[tuple[int, int]] = ()) -> list:
    """The views an export holds: stats and pooled maps of every kind, plus the tiles asked for."""
    requested = []
    tiles = list(tiles)
    for entry in info.kinds:
        kind = NAME_OF_KIND[entry.kind]
        prefix = f"{kind}/" if len(info.kinds) > 1 else ""
        requested += [
            views.head_stats(kind=kind, name=f"{prefix}head_stats"),
            views.pooled(pooled_size, kind=kind, name=f"{prefix}pooled"),
        ]
        requested += [
            views.tile(layer, head, kind=kind, name=f"{prefix}tile/{layer}.{head}") for layer, head in tiles
        ]
    return requested


def metadata(info, text: str, pair: str) -> dict:
    """The file's description of the trace, read from TraceInfo's per-kind entries."""
    kinds = {NAME_OF_KIND[entry.kind]: entry for entry in info.kinds}
    default = info.kinds[0]
    # The decoder's text of an encoder-decoder trace (its cross attention reads the encoder's).
    target = list(kinds["decoder"].query_tokens) if "cross" in kinds and "decoder" in kinds else []
    return {
        "schema": SCHEMA,
        "model": info.model,
        "text": text,
        "pair": pair,
        "kinds": list(kinds),
        "num_layers": default.num_layers,
        "num_heads": default.num_heads,
        "seq_len": default.query_len,
        "sentence_b_start": default.sentence_b_start,
        "tokens": list(default.query_tokens),
        "target_tokens": target,
    }


def write(path: str | Path, info, tensors: dict[str, np.ndarray], text: str = "", pair: str = "") -> Path:
    """Write `tensors` and the trace's description to .npz or .safetensors (chosen by suffix)."""
    path = Path(path)
    meta = metadata(info, text, pair)
    if path.suffix == ".npz":
        extra = {"tokens": np.array(meta.pop("tokens")), "target_tokens": np.array(meta.pop("target_tokens"))}
        np.savez_compressed(path, metadata=np.array(json.dumps(meta)), **extra, **tensors)
    elif path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(
            {k: np.ascontiguousarray(v) for k, v in tensors.items()},
            str(path),
            metadata={k: json.dumps(v) for k, v in meta.items()},
        )
    else:
        raise ValueError(
            f"export to .npz or .safetensors here (.html has its own writer), got {path.suffix!r}"
        )
    return path


def load(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, tensors) of a file `write` made."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as z:
            meta = json.loads(str(z["metadata"]))
            meta["tokens"] = [str(t) for t in z["tokens"]]
            meta["target_tokens"] = [str(t) for t in z["target_tokens"]]
            tensors = {k: z[k] for k in z.files if k not in ("metadata", "tokens", "target_tokens")}
    elif path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    else:
        raise ValueError(f"not an attnscope export: {path}")
    if meta.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not an attnscope export (schema {meta.get('schema')!r})")
    return meta, tensors


def export_file(
    path: str | Path,
    info,
    fetch: Callable[[list], dict[str, np.ndarray]],
    text: str = "",
    pair: str = "",
    pooled_size: int = DEFAULT_POOLED_SIZE,
    tiles: Iterable[tuple[int, int]] = (),
    neuron_queries: Iterable[int] | None = None,
) -> Path:
    """Write one export of any format; `fetch(views)` computes views (locally or through a Client)."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise ValueError(f"the output must end in one of {', '.join(FORMATS)}, got {path.name!r}")
    if path.suffix == ".html":
        from .standalone import embedded_data, standalone_html

        state = {"text": text, "pair": pair, "model": info.model}
        data = embedded_data(info, fetch, neuron_queries, state)
        path.write_text(standalone_html(data, title=f"attnscope: {text[:60]}"), encoding="utf-8")
        return path
    return write(path, info, fetch(export_views(info, pooled_size, tiles)), text, pair)
