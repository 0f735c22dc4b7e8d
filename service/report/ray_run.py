"""The trace step on Ray Data: files read by Ray Data's `read_binary_files` (a saved `datasets`
dataset through `from_huggingface`), split into documents by the in-process path's own
`corpus.split_file` (so ids match), traced by `map_batches` over an actor pool (one Extractor per
actor; on a cluster with GPUs one GPU per actor, assigned by Ray), and written by Ray Data's
`write_parquet` into OUT/parts, where the in-process path's last step (`run.finish`) reads them.

Documents are materialised (text only) before the actor pool starts: the readers then have the
cluster's CPUs to themselves, and a pool holding every CPU cannot starve them.

`--ray` alone starts a local Ray (this machine's CPUs and GPUs); `--ray auto` joins the cluster
this machine belongs to (`ray start`), `--ray ray://HOST:10001` a remote one through Ray Client
(e.g. a KubeRay RayCluster's head service). The corpus paths and the model path must be readable
by the workers (a shared file system); attnscope must be installed in the workers' environment.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from . import records as rec
from .corpus import dataset_source, document_id, load_dataset_dir, split_file
from .run import ReportSettings, RunSummary

_INDEX = "__attnscope_index"


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ImportError("--ray needs Ray Data: pip install 'attnscope[report]' (or 'ray[data]')") from exc
    return ray


def _doc_row(rank: int, source: str, index: int, text: str | None, error: str | None) -> dict:
    # "" rather than None: every block then has the same string columns (no null-typed blocks).
    return {
        "rank": rank,  # the source's place in reading order (find_sources): what --limit counts in
        "doc_id": document_id(source, index),
        "source": source,
        "index": index,
        "text": text or "",
        "error": error or "",
    }


def _doc_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("rank", pa.int64()),
            ("doc_id", pa.string()),
            ("source", pa.string()),
            ("index", pa.int64()),
            ("text", pa.string()),
            ("error", pa.string()),
        ]
    )


class _SplitFiles:
    """flat_map: one row of read_binary_files (bytes, path) -> its documents."""

    def __init__(self, formats: dict[str, str], text_field: str, txt_per: str) -> None:
        self.formats, self.text_field, self.txt_per = formats, text_field, txt_per
        self.ranks = {path: rank for rank, path in enumerate(formats)}

    def __call__(self, row: dict) -> list[dict]:
        path = row["path"]
        source = path if path in self.formats else os.path.abspath(os.sep + path.lstrip(os.sep))
        docs = split_file(source, self.formats[source], row["bytes"], self.text_field, self.txt_per)
        return [_doc_row(self.ranks[source], d.source, d.index, d.text, d.error) for d in docs]


class _DatasetRows:
    """map_batches: rows of a saved dataset's split (with their row numbers) -> documents."""

    def __init__(self, rank: int, source: str, text_field: str) -> None:
        self.rank, self.source, self.text_field = rank, source, text_field

    def __call__(self, batch):
        import pyarrow as pa

        from .corpus import field_text

        rows = [
            _doc_row(self.rank, self.source, int(index), *field_text(value, self.text_field))
            for index, value in zip(
                batch[_INDEX].to_pylist(), batch[self.text_field].to_pylist(), strict=True
            )
        ]
        return pa.Table.from_pylist(rows, schema=_doc_schema())  # typed even when a batch is empty


class _Skip:
    """map_batches: drop the documents whose records OUT already holds (resuming)."""

    def __init__(self, done: set[str]) -> None:
        self.done = sorted(done)

    def __call__(self, batch):
        import pyarrow as pa
        import pyarrow.compute as pc

        return batch.filter(pc.invert(pc.is_in(batch["doc_id"], value_set=pa.array(self.done, pa.string()))))


class TraceActor:
    """One Extractor per Ray actor; map_batches calls it on batches of document rows."""

    def __init__(
        self, model: str, device: str | None, max_tokens: int | None, batch_size: int, threads: int
    ) -> None:
        import torch

        from attnscope.extract import Extractor

        from .tracer import DocumentTracer

        torch.set_num_threads(threads)  # as many as the actor asked Ray for; see tracer.py on rounding
        extractor = Extractor.from_pretrained(model or None, device=device)
        self.tracer = DocumentTracer(extractor, max_tokens, batch_size)

    def __call__(self, batch):
        return rec.to_table(self.tracer(batch.to_pylist()))


def _documents(ray, settings: ReportSettings):
    from .corpus import find_sources

    sources = find_sources(settings.data)
    pieces = []
    files = {s.path: s.format for s in sources if s.format != "dataset"}
    if files:
        read = ray.data.read_binary_files(list(files), include_paths=True)
        pieces.append(read.flat_map(_SplitFiles(files, settings.text_field, settings.txt_per)))
    rank = len(files)  # the datasets' splits come after the files, in reading order
    for s in sources:
        if s.format != "dataset":
            continue
        for split, ds in load_dataset_dir(s.path).items():
            if settings.text_field not in ds.column_names:
                raise ValueError(
                    f"{s.path} has no column {settings.text_field!r} (columns: {ds.column_names})"
                )
            ds = ds.select_columns([settings.text_field]).add_column(_INDEX, list(range(len(ds))))
            rows = ray.data.from_huggingface(ds)
            pieces.append(
                rows.map_batches(
                    _DatasetRows(rank, dataset_source(s.path, split), settings.text_field),
                    batch_format="pyarrow",
                )
            )
            rank += 1
    return pieces[0] if len(pieces) == 1 else pieces[0].union(*pieces[1:])


class _First:
    """map_batches: keep the documents before the cut, {rank: documents kept of that source}."""

    def __init__(self, cut: dict[int, int]) -> None:
        self.cut = cut

    def __call__(self, batch):
        import pyarrow as pa

        keep = [
            index < self.cut.get(rank, 0)
            for rank, index in zip(batch["rank"].to_pylist(), batch["index"].to_pylist(), strict=True)
        ]
        return batch.filter(pa.array(keep, pa.bool_()))


def _limit(docs, limit: int):
    """The first `limit` documents in reading order (sources by rank, then index), as the
    in-process path takes them. Not Dataset.limit: a union streams its inputs interleaved."""
    import pyarrow.compute as pc

    counts: dict[int, int] = {}
    for batch in docs.select_columns(["rank"]).iter_batches(batch_format="pyarrow", batch_size=65536):
        for entry in pc.value_counts(batch["rank"]).to_pylist():  # a few bytes per document, no shuffle
            counts[entry["values"]] = counts.get(entry["values"], 0) + entry["counts"]
    cut, left = {}, limit
    for rank in sorted(counts):
        cut[rank] = min(left, counts[rank])
        left -= cut[rank]
    return docs.map_batches(_First(cut), batch_format="pyarrow")


def _pool(ray, device: str | None, workers: int | None, threads: int) -> tuple[int, dict, str | None]:
    """(actors, their resource request, the device each loads its model on)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and device != "cpu":
        return workers or gpus, {"num_gpus": 1}, "cuda"  # Ray sets each actor's CUDA_VISIBLE_DEVICES
    actors = workers or max(1, int(resources.get("CPU", 1)) // threads)
    return actors, {"num_cpus": threads}, "cpu"


def run_on_ray(
    out: Path,
    settings: ReportSettings,
    address: str | None,
    workers: int | None = None,
    device: str | None = None,
    threads: int = 1,
) -> RunSummary:
    """Trace OUT's missing documents on Ray (`address` None: a local Ray, unless one is running in
    this process already), writing their records into OUT/parts. CPU actors ask for `threads`
    CPUs each and run torch on as many threads."""
    ray = import_ray()
    started_ray = False
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
        started_ray = True
    try:
        started = time.perf_counter()
        docs = _documents(ray, settings).materialize()
        if settings.limit is not None:
            docs = _limit(docs, settings.limit).materialize()
        total = docs.count()
        done = rec.done_ids(out)
        if done:
            docs = docs.map_batches(_Skip(done), batch_format="pyarrow").materialize()
        todo = docs.count()
        actors, request, actor_device = _pool(ray, device, workers, threads)
        if todo:
            traced = docs.map_batches(
                TraceActor,
                fn_constructor_kwargs={
                    "model": settings.model,
                    "device": actor_device,
                    "max_tokens": settings.max_tokens,
                    "batch_size": settings.batch_size,
                    "threads": threads,
                },
                batch_size=max(settings.batch_size, 8),
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=actors),
                **request,
            )
            # Writing asks for no CPU: the actors may hold them all, and parts must land as the
            # run goes (what resuming after an interruption keeps), not after the last actor.
            traced.write_parquet(
                str(out / rec.PARTS / f"ray-{uuid.uuid4().hex[:12]}"), ray_remote_args={"num_cpus": 0}
            )
        return RunSummary("ray", total, total - todo, todo, time.perf_counter() - started, workers=actors)
    finally:
        if started_ray:
            ray.shutdown()
