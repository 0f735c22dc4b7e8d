"""A corpus as documents with stable ids: which files `--data` names, and how each file's bytes
split into documents.

Both run paths use `split_file` on a file's bytes (the in-process loop reads them itself, the Ray
path through Ray Data's `read_binary_files`), so a document gets the same id either way: the
file's absolute path and the document's line or row number in it (`path:index`). Documents are
ordered by (source, index), never by arrival, so resuming and Ray's scheduling change nothing.

Formats: ``.txt`` (one document per line, or per file with ``txt_per="file"``), ``.jsonl`` (one
JSON object per line, its `text_field` the document), ``.parquet`` (its `text_field` column),
and a Hugging Face `datasets` dataset saved to disk (a folder with ``dataset_info.json`` or
``dataset_dict.json``, read with `datasets.load_from_disk`). A document that cannot be read
(undecodable bytes, a line that is not JSON, no such field) becomes a `Document` with an `error`:
reported, never fatal.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FILE_FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
#: Files whose presence marks a folder as a `datasets` dataset saved with `save_to_disk`.
DATASET_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


@dataclass(frozen=True)
class Source:
    """One input of the corpus: a file of a known format, or a saved `datasets` dataset."""

    path: str  # absolute
    format: str  # "txt" | "jsonl" | "parquet" | "dataset"


@dataclass(frozen=True)
class Document:
    """One document: its text, or why it has none (`error`)."""

    source: str
    index: int  # line (txt per line, jsonl), row (parquet, dataset), 0 (txt per file)
    text: str | None
    error: str | None = None

    @property
    def doc_id(self) -> str:
        return document_id(self.source, self.index)


def document_id(source: str, index: int) -> str:
    return f"{source}:{index}"


def _is_dataset_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in DATASET_MARKERS)


def find_sources(paths: list[str]) -> list[Source]:
    """The sources `--data` names: its files in the order given (a folder, not a saved dataset,
    adds its files of known formats sorted by path), then its saved datasets. Raises
    FileNotFoundError / ValueError naming the path."""
    found: list[Source] = []
    for given in paths:
        path = Path(given).resolve()
        if path.is_dir():
            if _is_dataset_dir(path):
                found.append(Source(str(path), "dataset"))
                continue
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_FORMATS)
            if not files:
                raise ValueError(f"{given} holds no .txt, .jsonl or .parquet file and is not a saved dataset")
            found += [Source(str(p), FILE_FORMATS[p.suffix.lower()]) for p in files]
        elif path.is_file():
            fmt = FILE_FORMATS.get(path.suffix.lower())
            if fmt is None:
                raise ValueError(
                    f"{given}: expected a .txt, .jsonl or .parquet file, or a saved dataset folder"
                )
            found.append(Source(str(path), fmt))
        else:
            raise FileNotFoundError(f"--data {given}: no such file or folder")
    seen, unique = set(), []
    for s in found:  # a file named twice (directly and through its folder) is read once
        if s.path not in seen:
            seen.add(s.path)
            unique.append(s)
    # Files, then saved datasets (each in the order given): the order Ray Data's union reads them
    # in too, so --limit picks the same documents on both paths.
    return [s for s in unique if s.format != "dataset"] + [s for s in unique if s.format == "dataset"]


def _decode(data: bytes) -> tuple[str | None, str | None]:
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"undecodable: not UTF-8 (byte {exc.start})"


def field_text(value, text_field: str) -> tuple[str | None, str | None]:
    if value is None:
        return None, f"no '{text_field}' field"
    if not isinstance(value, str):
        return None, f"'{text_field}' is a {type(value).__name__}, not a string"
    return value, None


def split_file(source: str, fmt: str, data: bytes, text_field: str, txt_per: str) -> Iterator[Document]:
    """The documents of one file's bytes, in file order."""
    if fmt == "txt" and txt_per == "file":
        text, error = _decode(data)
        yield Document(source, 0, text, error)
    elif fmt in ("txt", "jsonl"):
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":  # the final newline ends the last line; it starts none
            lines.pop()
        for i, raw in enumerate(lines):
            text, error = _decode(raw.removesuffix(b"\r"))
            if fmt == "jsonl" and error is None:
                if not text.strip():
                    text = ""  # a blank line: an empty document
                else:
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError as exc:
                        text, error = None, f"not JSON: {exc.msg} (column {exc.colno})"
                    else:
                        value = record.get(text_field) if isinstance(record, dict) else None
                        text, error = field_text(value, text_field)
            yield Document(source, i, text, error)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        if text_field not in table.column_names:
            raise ValueError(f"{source} has no column {text_field!r} (columns: {table.column_names})")
        for i, value in enumerate(table.column(text_field).to_pylist()):
            yield Document(source, i, *field_text(value, text_field))
    else:
        raise ValueError(f"cannot split {fmt!r} files")


def load_dataset_dir(path: str):
    """A saved `datasets` dataset, as {split name or "": Dataset}."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            "reading a saved Hugging Face dataset needs the `datasets` package: "
            "pip install 'attnscope[report]'"
        ) from exc
    loaded = datasets.load_from_disk(path)
    if isinstance(loaded, datasets.DatasetDict):
        return dict(sorted(loaded.items()))
    return {"": loaded}


def dataset_source(path: str, split: str) -> str:
    """The source name of one split of a saved dataset (the folder itself when it has no splits)."""
    return os.path.join(path, split) if split else path


def dataset_documents(path: str, text_field: str) -> Iterator[Document]:
    for split, ds in load_dataset_dir(path).items():
        if text_field not in ds.column_names:
            raise ValueError(f"{path} has no column {text_field!r} (columns: {ds.column_names})")
        source = dataset_source(path, split)
        for i, value in enumerate(ds[text_field]):
            yield Document(source, i, *field_text(value, text_field))


def read_documents(sources: list[Source], text_field: str, txt_per: str) -> Iterator[Document]:
    """Every document of `sources` in order (the in-process path's reader)."""
    for s in sources:
        if s.format == "dataset":
            yield from dataset_documents(s.path, text_field)
        else:
            yield from split_file(s.path, s.format, Path(s.path).read_bytes(), text_field, txt_per)
