"""One record per traced document, as both run paths write it into ``OUT/parts/`` (parquet), and
reading those parts back: what resuming skips and what the aggregates are computed from.

A record holds the document's id, source and index, its token count, and either an `error`
(a bad document) or, per head statistic, the [layers × heads] values flattened row-major as
float64 (the float32 of `Trace.head_stats`, widened exactly), and the head classes likewise.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

from attnscope.kernels.facts import HEAD_STAT_NAMES

PARTS = "parts"


def schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("doc_id", pa.string()),
            ("source", pa.string()),
            ("index", pa.int64()),
            ("n_tokens", pa.int64()),
            ("layers", pa.int64()),
            ("heads", pa.int64()),
            ("error", pa.string()),
            *[(name, pa.list_(pa.float64())) for name in HEAD_STAT_NAMES],
            ("classes", pa.list_(pa.string())),
        ]
    )


def bad_record(doc_id: str, source: str, index: int, error: str, n_tokens: int = 0) -> dict:
    return {
        "doc_id": doc_id,
        "source": source,
        "index": index,
        "n_tokens": n_tokens,
        "layers": 0,
        "heads": 0,
        "error": error,
        **{name: None for name in HEAD_STAT_NAMES},
        "classes": None,
    }


def to_table(records: list[dict]):
    import pyarrow as pa

    return pa.Table.from_pylist(records, schema=schema())


def write_part(out: Path, records: list[dict], prefix: str) -> Path | None:
    """Write `records` as one new part file, atomically (a crash leaves no half-written part)."""
    if not records:
        return None
    import pyarrow.parquet as pq

    folder = out / PARTS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{prefix}-{uuid.uuid4().hex[:12]}.parquet"
    temp = folder / f".{final.name}.tmp"
    pq.write_table(to_table(records), temp)
    os.replace(temp, final)
    return final


def read_parts(out: Path):
    """Every record written so far into OUT/parts (a document written twice, by two interrupted
    runs, counts once), sorted by (source, index)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folder = out / PARTS
    files = (
        sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith(".")) if folder.is_dir() else []
    )
    if not files:
        return to_table([])
    tables = []
    for p in files:
        try:
            tables.append(pq.read_table(p, schema=schema()))
        except (pa.ArrowInvalid, OSError) as exc:  # a writer killed mid-file: its documents are traced again
            print(f"attnscope report: ignoring unreadable part {p}: {exc}", file=sys.stderr)
    if not tables:
        return to_table([])
    table = pa.concat_tables(tables)
    order = pc.sort_indices(table, [("source", "ascending"), ("index", "ascending"), ("doc_id", "ascending")])
    table = table.take(order)
    ids = table.column("doc_id").to_pylist()
    keep = [i for i in range(len(ids)) if i == 0 or ids[i] != ids[i - 1]]
    return table.take(pa.array(keep, type=pa.int64())) if len(keep) != len(ids) else table


def done_ids(out: Path) -> set[str]:
    return set(read_parts(out).column("doc_id").to_pylist())
