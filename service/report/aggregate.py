"""From the per-document records to the report: per head and statistic the mean, standard
deviation and quantiles over documents; each head's most frequent class and how consistent it is;
the documents where each head is most and least itself; and the long `heads` table.

Everything is computed from records sorted by (source, index) (`records.read_parts`), in float64,
so the report does not depend on the order documents were traced in, nor on which path or worker
traced them.

A head is "itself" through the statistic of its most frequent class: the pattern's own statistic
for previous-token, induction, duplicate-token, first-token and self heads (`PATTERN_THRESHOLDS`),
entropy for diffuse heads (high: most diffuse), mean_distance for local heads (low: most local);
a mixed head has no pattern, and its entropy (low: most focused) stands in.
"""

from __future__ import annotations

import numpy as np

from attnscope.extract.analysis import HEAD_CLASSES, PATTERN_THRESHOLDS
from attnscope.kernels.facts import HEAD_STAT_NAMES

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Documents listed at each end of a head's signature statistic.
EXTREMES = 3
#: class -> (its statistic, whether a high value means "more of that class").
SIGNATURE = {
    **{label: (stat, True) for label, (stat, _) in PATTERN_THRESHOLDS.items()},
    "diffuse": ("entropy", True),
    "local": ("mean_distance", False),
    "mixed": ("entropy", False),
}


def _split(records):
    """(good records, bad records) as python lists of column values."""
    errors = records.column("error").to_pylist()
    good = [i for i, e in enumerate(errors) if e is None]
    bad = [i for i, e in enumerate(errors) if e is not None]
    import pyarrow as pa

    return records.take(pa.array(good, type=pa.int64())), records.take(pa.array(bad, type=pa.int64()))


def _cube(good, name: str, layers: int, heads: int) -> np.ndarray:
    """float64 [documents, layers, heads] of one statistic (or the classes, as objects)."""
    column = good.column(name).combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(good), layers, heads)


def _shape(good) -> tuple[int, int]:
    layers = set(good.column("layers").to_pylist())
    heads = set(good.column("heads").to_pylist())
    if len(layers) != 1 or len(heads) != 1:
        raise ValueError(f"records of several model shapes (layers {sorted(layers)}, heads {sorted(heads)})")
    return layers.pop(), heads.pop()


def _grid(array: np.ndarray) -> list:
    return [[float(v) for v in row] for row in array]


def _statistics(cubes: dict[str, np.ndarray]) -> dict:
    out = {}
    for name, x in cubes.items():
        n = x.shape[0]
        entry = {
            "mean": _grid(x.mean(0)),
            "std": _grid(x.std(0, ddof=1) if n > 1 else np.zeros(x.shape[1:])),
            "quantiles": {f"{q:g}": _grid(np.quantile(x, q, axis=0)) for q in QUANTILES},
            "per_layer_mean": [float(v) for v in x.mean(axis=(0, 2))],
        }
        out[name] = entry
    return out


def _classes(classes: np.ndarray) -> dict:
    n, layers, heads = classes.shape
    counts = {label: (classes == label).sum(0) for label in HEAD_CLASSES}
    stacked = np.stack([counts[label] for label in HEAD_CLASSES])  # [classes, layers, heads]
    modal_index = stacked.argmax(0)  # ties: the first in HEAD_CLASSES order
    modal = [[HEAD_CLASSES[modal_index[layer, head]] for head in range(heads)] for layer in range(layers)]
    consistency = stacked.max(0) / n
    totals = {label: sum(row.count(label) for row in modal) for label in HEAD_CLASSES}
    return {
        "modal": modal,
        "consistency": _grid(consistency),
        "counts": {label: [[int(v) for v in row] for row in counts[label]] for label in HEAD_CLASSES},
        "heads_per_class": totals,
    }


def _ends(values: np.ndarray, ids: list[str], high_first: bool) -> list[dict]:
    """The EXTREMES documents at one end of `values` (ties: the earlier document first)."""
    order = np.argsort(-values if high_first else values, kind="stable")[:EXTREMES]
    return [{"doc_id": ids[i], "value": float(values[i])} for i in order]


def _extremes(cubes: dict[str, np.ndarray], modal: list[list[str]], ids: list[str]) -> list:
    out = []
    for layer, row in enumerate(modal):
        out_row = []
        for head, label in enumerate(row):
            stat, high_is_more = SIGNATURE[label]
            values = cubes[stat][:, layer, head]
            out_row.append(
                {
                    "statistic": stat,
                    "most": _ends(values, ids, high_is_more),
                    "least": _ends(values, ids, not high_is_more),
                }
            )
        out.append(out_row)
    return out


def build_report(records, model: str) -> dict:
    """The report.json content of `records` (a table of `records.schema()`, sorted)."""
    good, bad = _split(records)
    report: dict = {
        "model": model,
        "statistics": list(HEAD_STAT_NAMES),
        "quantiles": list(QUANTILES),
        "documents": {"total": len(records), "traced": len(good), "bad": len(bad)},
        "tokens": int(sum(good.column("n_tokens").to_pylist())),
        "bad_documents": [
            {"doc_id": d, "reason": e}
            for d, e in zip(bad.column("doc_id").to_pylist(), bad.column("error").to_pylist(), strict=True)
        ],
    }
    if len(good) == 0:
        report.update(layers=0, heads=0, head_statistics={}, classes=None, extremes=[])
        return report
    layers, heads = _shape(good)
    cubes = {name: _cube(good, name, layers, heads) for name in HEAD_STAT_NAMES}
    classes = _classes(_cube(good, "classes", layers, heads))
    report.update(
        layers=layers,
        heads=heads,
        head_statistics=_statistics(cubes),
        classes=classes,
        extremes=_extremes(cubes, classes["modal"], good.column("doc_id").to_pylist()),
    )
    return report


def heads_table(records):
    """One row per document × layer × head: doc_id, source, index, n_tokens, layer, head, every
    statistic, class (good documents only, in (source, index, layer, head) order)."""
    import pyarrow as pa

    good, _ = _split(records)
    n = len(good)
    layers, heads = _shape(good) if n else (0, 0)
    per = layers * heads
    repeat = lambda name: np.repeat(good.column(name).to_numpy(zero_copy_only=False), per)  # noqa: E731
    columns = {
        "doc_id": repeat("doc_id"),
        "source": repeat("source"),
        "index": repeat("index").astype(np.int64),
        "n_tokens": repeat("n_tokens").astype(np.int64),
        "layer": np.tile(np.repeat(np.arange(layers, dtype=np.int64), heads), n),
        "head": np.tile(np.tile(np.arange(heads, dtype=np.int64), layers), n),
    }
    for name in HEAD_STAT_NAMES:
        columns[name] = (
            good.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        )
    columns["class"] = good.column("classes").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    schema = pa.schema(
        [
            ("doc_id", pa.string()),
            ("source", pa.string()),
            ("index", pa.int64()),
            ("n_tokens", pa.int64()),
            ("layer", pa.int64()),
            ("head", pa.int64()),
            *[(name, pa.float64()) for name in HEAD_STAT_NAMES],
            ("class", pa.string()),
        ]
    )
    return pa.table({name: pa.array(columns[name], type=schema.field(name).type) for name in schema.names})
