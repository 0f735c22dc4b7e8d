"""`attnscope report`: the corpus report (in-process or `--ray`) and `--compare A B`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Register `report` on the CLI's subparsers (attnscope/cli.py)."""
    rp = subparsers.add_parser(
        "report",
        help="head statistics and classes over a corpus (report.json, heads.parquet, report.html), "
        "or --compare two reports",
        description="Trace every document of a corpus and report, per head, the statistics' mean, "
        "standard deviation and quantiles, its class and how consistent it is. With --compare A B, "
        "the per-head differences of two reports (exit 1 when a --fail-if rule holds).",
    )
    rp.add_argument(
        "--model", default=None, help="local model folder or cached Hub id (default: the bundled MiniLM)"
    )
    rp.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="PATH",
        help=".txt, .jsonl, .parquet files, folders of them, or a dataset saved with datasets' save_to_disk",
    )
    rp.add_argument(
        "--text-field", default="text", help="the text's field in .jsonl, .parquet, datasets (default text)"
    )
    rp.add_argument(
        "--txt-per",
        choices=["line", "file"],
        default="line",
        help="a .txt file holds one document per line (default) or is one document",
    )
    rp.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="skip longer documents as bad (default: the model's limit)",
    )
    rp.add_argument("--limit", type=int, default=None, help="only the first N documents")
    rp.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="documents per padded forward pass (default 1: pays on a GPU "
        "with short documents; >1 agrees with one-at-a-time to float rounding)",
    )
    rp.add_argument("--device", default=None, help="cpu, cuda, ... (in-process; default: cuda if available)")
    rp.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="trace on Ray Data: alone, a local "
        "Ray; 'auto' the cluster of `ray start`; ray://HOST:10001 a remote cluster (KubeRay's head service)",
    )
    rp.add_argument(
        "--ray-workers", type=int, default=None, help="actors (default: one per GPU, else per --threads CPUs)"
    )
    rp.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads in-process and per Ray CPU actor (default 1: documents are small work; "
        "one thread was 5x faster than two on a busy 2-core machine). Records are bit-identical across "
        "paths at the same count; other counts round float32 differently (about 1e-7)",
    )
    rp.add_argument(
        "--checkpoint-every",
        type=int,
        default=64,
        help="in-process: documents between checkpoints (default 64)",
    )
    rp.add_argument("--compare", nargs=2, default=None, metavar=("A", "B"), help="compare two report folders")
    rp.add_argument(
        "--fail-if",
        action="append",
        default=[],
        metavar="RULE",
        help="with --compare: exit 1 when RULE holds, "
        "e.g. 'induction drop > 0.2 on any head' (repeatable; see service/report/rules.py)",
    )
    rp.add_argument("--out", required=True, help="output folder (a second run into it resumes)")
    rp.set_defaults(func=run_report_command)
    return rp


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare

    if args.data:
        raise ValueError("--compare takes two report folders, not --data")
    result = compare(args.compare[0], args.compare[1], Path(args.out), args.fail_if)
    for name, entry in result["statistics"].items():
        top = entry["changed_most"][0]
        print(f"{name:>15}: most changed L{top['layer']}.H{top['head']} {top['a']:.4f} -> {top['b']:.4f}")
    holding = [r for r in result["rules"] if r["heads"]]
    for r in result["rules"]:
        print(
            f"rule {'HOLDS' if r['heads'] else 'ok'}: {r['rule']}"
            + (f" on {', '.join(r['heads'])}" if r["heads"] else "")
        )
    print(f"wrote {Path(args.out) / 'compare.json'} and compare.html")
    return 1 if holding else 0


def _run_here(args: argparse.Namespace, out: Path, settings):
    from attnscope.extract import Extractor

    from .run import run_in_process
    from .tracer import DocumentTracer, torch_threads

    with torch_threads(args.threads):
        extractor = Extractor.from_pretrained(args.model, device=args.device)
        tracer = DocumentTracer(extractor, args.max_tokens, args.batch_size)
        return run_in_process(out, settings, tracer, args.checkpoint_every)


def run_report_command(args: argparse.Namespace) -> int:
    try:
        return _report(args)
    except ImportError as exc:  # an optional dependency (Ray Data, datasets) that is not installed
        import sys

        print(f"attnscope: error: {exc}", file=sys.stderr)
        return 2


def _report(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args)
    if args.fail_if:
        raise ValueError("--fail-if needs --compare A B")
    if not args.data:
        raise ValueError("attnscope report needs --data PATH... (or --compare A B)")
    for flag in ("max_tokens", "limit", "batch_size", "ray_workers", "threads", "checkpoint_every"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    from attnscope.extract.default_model import display_name

    from .run import ReportSettings, claim, finish

    out = Path(args.out)
    settings = ReportSettings(
        model=args.model or "",
        data=list(args.data),
        text_field=args.text_field,
        txt_per=args.txt_per,
        max_tokens=args.max_tokens,
        limit=args.limit,
        batch_size=args.batch_size,
    )
    claim(out, settings)
    if args.ray is not None:
        from .ray_run import run_on_ray

        summary = run_on_ray(out, settings, args.ray or None, args.ray_workers, args.device, args.threads)
    else:
        summary = _run_here(args, out, settings)
    report = finish(out, display_name(args.model), summary)
    docs = report["documents"]
    print(
        f"traced {summary.traced} documents in {summary.seconds:.1f} s ({summary.documents_per_s:.2f} documents/s, "
        f"{summary.mode}; {summary.skipped} done before); report: {docs['traced']} traced, {docs['bad']} bad"
    )
    print(f"wrote {out / 'report.json'}, heads.parquet, report.html")
    return 0
