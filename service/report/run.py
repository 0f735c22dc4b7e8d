"""A report run: its settings (kept in OUT/parts/settings.json, so a second run resumes only the
same run), the in-process tracing loop with its progress line and checkpoints, and the last step
both paths share, records -> report.json, heads.parquet, report.html.

Resuming: every `checkpoint_every` documents (and on Ctrl-C) the records so far are written as a
new part file; a second run of the same command skips the documents whose records exist. A run
killed outright loses at most the records since its last checkpoint.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import records as rec
from .corpus import Document, find_sources, read_documents

SETTINGS = "settings.json"


@dataclass(frozen=True)
class ReportSettings:
    """What decides a run's records; a resumed run must have the same."""

    model: str  # as given, or "" for the bundled model
    data: list[str] = field(default_factory=list)  # as given
    text_field: str = "text"
    txt_per: str = "line"
    max_tokens: int | None = None
    limit: int | None = None
    batch_size: int = 1


@dataclass
class RunSummary:
    """How a run went (run.json; not part of report.json, which must not depend on how it ran)."""

    mode: str
    documents: int  # selected by --data and --limit
    skipped: int  # already in OUT from an earlier run
    traced: int  # this run
    seconds: float
    workers: int = 1

    @property
    def documents_per_s(self) -> float:
        return self.traced / self.seconds if self.seconds > 0 else 0.0


def claim(out: Path, settings: ReportSettings) -> None:
    """Make OUT hold this run: new, or an earlier run of the same settings (resumed)."""
    folder = out / rec.PARTS
    path = folder / SETTINGS
    mine = asdict(settings)
    if path.is_file():
        theirs = json.loads(path.read_text())
        if theirs != mine:
            differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            raise ValueError(
                f"{out} holds a report run with other settings ({', '.join(differ)} differ); "
                "resume it with the same command, or write to another --out"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine, indent=1) + "\n")


def select_documents(settings: ReportSettings) -> list[Document]:
    docs = read_documents(find_sources(settings.data), settings.text_field, settings.txt_per)
    selected = []
    for doc in docs:
        if settings.limit is not None and len(selected) >= settings.limit:
            break
        selected.append(doc)
    return selected


def _row(doc: Document) -> dict:
    return {
        "doc_id": doc.doc_id,
        "source": doc.source,
        "index": doc.index,
        "text": doc.text,
        "error": doc.error,
    }


def progress_bar(total: int, done: int):
    """The progress line on stderr: documents done / total, documents per second, ETA."""
    from tqdm import tqdm

    return tqdm(
        total=total, initial=done, unit="doc", desc="attnscope report", file=sys.stderr, dynamic_ncols=True
    )


def run_in_process(
    out: Path,
    settings: ReportSettings,
    tracer: Callable[[list[dict]], list[dict]],
    checkpoint_every: int = 64,
    on_records: Callable[[list[dict]], None] | None = None,
) -> RunSummary:
    """Trace the documents OUT has no records for yet, one batch at a time, writing a part every
    `checkpoint_every` documents and whatever is pending when interrupted. `on_records` sees each
    batch's records after they are counted (tests interrupt a run from it)."""
    started = time.perf_counter()
    docs = select_documents(settings)
    done = rec.done_ids(out)
    todo = [d for d in docs if d.doc_id not in done]
    pending: list[dict] = []
    bar = progress_bar(len(docs), len(docs) - len(todo))
    traced = 0
    try:
        for start in range(0, len(todo), settings.batch_size):
            chunk = todo[start : start + settings.batch_size]
            records = tracer([_row(d) for d in chunk])
            pending += records
            traced += len(records)
            bar.update(len(records))
            if len(pending) >= checkpoint_every:
                rec.write_part(out, pending, "local")
                pending = []
            if on_records is not None:
                on_records(records)
    finally:
        rec.write_part(out, pending, "local")  # also on Ctrl-C: what was traced is kept
        bar.close()
    return RunSummary("in-process", len(docs), len(docs) - len(todo), traced, time.perf_counter() - started)


def finish(out: Path, model: str, summary: RunSummary) -> dict:
    """Write report.json, heads.parquet, report.html and run.json from OUT's records."""
    import pyarrow.parquet as pq

    from .aggregate import build_report, heads_table
    from .html import report_page

    records = rec.read_parts(out)
    report = build_report(records, model)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    pq.write_table(heads_table(records), out / "heads.parquet")
    (out / "report.html").write_text(report_page(report), encoding="utf-8")
    run = {**asdict(summary), "documents_per_s": summary.documents_per_s}
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    return report
