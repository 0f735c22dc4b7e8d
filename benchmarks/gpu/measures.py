"""The stages that measure on the GPU: kernels (benchmarks/kernels.py's passes against their
floor), e2e (benchmarks/e2e.py's measurement of whole models) and views (the cost of each view in
`VIEWS`), and the tests' stage that never ends. Each body runs in a child process of its own."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from .record import Record

# ---- kernels -------------------------------------------------------------------------------------
#: The kernel stage's (lengths, head dims, heads, dtype, device, warm-ups, repeats): the issue's
#: sizes on the GPU; in the dry run tiny ones through the interpreter (TRITON_INTERPRET=1, set by
#: the parent).
KERNEL_SIZES = {
    False: ([4096, 16384, 32768], [64, 128], 16, "bfloat16", "cuda", 2, 7),
    True: ([64, 96], [16, 64], 2, "float32", "cpu", 0, 1),
}


def kernels_stage(rec: Record, dry_run: bool) -> None:
    """benchmarks/kernels.py's run(), one (L, d) at a time, smallest first, each row kept at once."""
    import torch

    from .. import kernels

    lengths, dims, heads, dtype, device, warmup, repeats = KERNEL_SIZES[dry_run]
    rec.fact(
        lengths=lengths,
        dims=dims,
        heads=heads,
        dtype=dtype,
        floor="ratio_to_floor: benchmarks/kernels.py's max(2·pairs·d / 790e12, pairs / 3.9e12, bytes / 4.8e12) s;"
        " ratio_to_issue_floor: the issue's max(2·pairs·d / 790e12, pairs / 3.9e12) s (pairs of every head)",
    )
    families = list(kernels.FAMILIES)
    for length in lengths:
        for d in dims:
            rows = kernels.run(families, [length], [d], heads, getattr(torch, dtype), device, warmup, repeats)
            for row in rows:
                floor = issue_floor_seconds(row["family"], row["pass"], length, d, heads, row["causal"])
                row.update(issue_floor_ms=floor * 1e3, ratio_to_issue_floor=row["ms"] / (floor * 1e3))
                rec.row(row)
    rec.finish()


def issue_floor_seconds(family: str, name: str, length: int, d: int, heads: int, causal: bool) -> float:
    """The issue's floor of one pass: max(2·pairs·d / 790e12, pairs / 3.9e12) s over the pairs of all
    its heads, i.e. benchmarks/kernels.py's floor without its memory term (which binds only on the
    neuron view's single row). The pass's region is read off kernels.FAMILIES on meta tensors."""
    import torch

    from attnscope.kernels import MaskSpec

    from .. import kernels

    q = torch.empty(heads, length, d, device="meta")
    spec = MaskSpec(scaling=d**-0.5, causal=causal)
    (p,) = [p for p in kernels.FAMILIES[family](q, q, spec, None, causal) if p.name == name]
    pairs = p.heads * p.rows * p.cols
    return max(2 * pairs * d / kernels.PEAK_FLOPS, pairs / kernels.PEAK_EXP)


def kernels_headline(data: dict) -> str:
    rows = data.get("rows", [])
    if not rows:
        return "no pass timed"
    ratios = [r["ratio_to_issue_floor"] for r in rows]
    best = max(rows, key=lambda r: r["tflops"])
    return (
        f"{len(rows)} passes over {len({r['family'] for r in rows})} families; × the issue's floor "
        f"{min(ratios):.3g} to {max(ratios):.3g}; peak {best['tflops']:.3g} TFLOP/s "
        f"({best['pass']}, L {best['L']}, d {best['d']})"
    )


# ---- tune ----------------------------------------------------------------------------------------
#: The tune stage's sizes, as KERNEL_SIZES: one length past the issue's 16k mark on the GPU.
TUNE_SIZES = {
    False: ([16384], [64, 128], 16, "bfloat16", "cuda", 2, 5),
    True: ([40], [16], 1, "float32", "cpu", 0, 1),
}
#: Launch-shape variants timed one after another (kernels/autotune.py): the compile-report
#: defaults, the defaults with SKIP_INTERIOR on, and each kernel's space autotuned per shape.
TUNE_VARIANTS = {
    "default": {},
    "skip_interior": {"ATTNSCOPE_SKIP_INTERIOR": "1"},  # kernels/autotune.py's SKIP_INTERIOR_ENV
    "autotuned": {"ATTNSCOPE_AUTOTUNE": "1"},  # and AUTOTUNE_ENV (torch-free here, in the parent)
}


def tune_stage(rec: Record, dry_run: bool) -> None:
    """Every kernel family at each variant of `TUNE_VARIANTS`, rows kept as they come; the shapes
    autotuning chose become the fact "autotune". Not in the default run (issue 18 step 4: run it
    after the proof, `--stages tune`, and change the defaults where it wins)."""
    import torch

    from attnscope.kernels import autotune

    from .. import kernels

    lengths, dims, heads, dtype, device, warmup, repeats = TUNE_SIZES[dry_run]
    rec.fact(lengths=lengths, dims=dims, heads=heads, dtype=dtype, variants=list(TUNE_VARIANTS))
    saved = {name: os.environ.get(name) for name in (autotune.SKIP_INTERIOR_ENV, autotune.AUTOTUNE_ENV)}
    try:
        for variant, env in TUNE_VARIANTS.items():
            for name in saved:
                os.environ.pop(name, None)
            os.environ.update(env)
            families = list(kernels.FAMILIES)
            for row in kernels.run(
                families, lengths, dims, heads, getattr(torch, dtype), device, warmup, repeats
            ):
                rec.row({"variant": variant, **row})
            rec.fact(autotune=autotune.chosen_configs())
    finally:  # the environment as the stage found it
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
    rec.finish()


def _pass_key(row: dict) -> tuple:
    return row["family"], row["pass"], row["L"], row["d"], row["causal"]


def tune_headline(data: dict) -> str:
    """Each variant's time against the default's, the geometric mean over the passes both ran."""
    rows = data.get("rows", [])
    default = {_pass_key(r): r["ms"] for r in rows if r["variant"] == "default"}
    parts = []
    for variant in TUNE_VARIANTS:
        ratios = [
            r["ms"] / default[_pass_key(r)]
            for r in rows
            if r["variant"] == variant and _pass_key(r) in default
        ]
        if variant != "default" and ratios:
            mean = math.exp(sum(map(math.log, ratios)) / len(ratios))
            parts.append(f"{variant} {mean:.3g}× the default's time ({min(ratios):.3g} to {max(ratios):.3g})")
    return "; ".join(parts) or "no variant timed against the default"


# ---- e2e -----------------------------------------------------------------------------------------
def e2e_plan(dry_run: bool) -> list[dict]:
    """GPT-2-small shapes to 32k, then Llama-3-8B shapes to 128k, mostly cheapest first so that a cut
    stage loses the largest, except that Llama's 128k (the issue's headline) comes before its 32k.
    One timed run past 8k: each is seconds, and the stage has minutes."""
    if dry_run:
        return [{"model": "gpt2-tiny", "length": 72, "repeats": 1, "dtype": "float32"}]
    sizes = [("gpt2-small", n) for n in (2048, 8192, 32768)]
    sizes += [("llama3-8b", n) for n in (8192, 131072, 32768)]
    return [
        {"model": m, "length": n, "repeats": 3 if n <= 8192 else 1, "dtype": "bfloat16"} for m, n in sizes
    ]


def _out_of_memory(row: dict) -> bool:
    return row["status"] == "out of memory" or "out of memory" in row["status"].lower()


def e2e_stage(rec: Record, dry_run: bool) -> None:
    """benchmarks/e2e.py's measure() per (model, length, method), each in its own process. Eager
    runs until it first runs out of memory on a model; its longer lengths are then not run."""
    from .. import e2e

    raw: list[dict] = []
    ran_out: dict[str, int] = {}
    for run in e2e_plan(dry_run):
        for method in ("attnscope", "sdpa", "eager"):
            spec = {**run, "method": method}
            if method == "eager" and run["length"] >= ran_out.get(run["model"], float("inf")):
                row = {**spec, "status": f"not run: eager ran out of memory at L={ran_out[run['model']]}"}
            elif rec.left() < 10:
                row = {**spec, "status": "not run: stage budget spent"}
            else:
                try:
                    row = e2e.measure(spec, timeout=int(rec.left() - 5))
                except subprocess.TimeoutExpired:
                    row = {**spec, "status": "timeout: stage budget spent"}
                if method == "eager" and _out_of_memory(row):
                    ran_out[run["model"]] = run["length"]
            print(json.dumps(row), flush=True)
            raw.append(row)
            rec.data["raw"] = raw
            rec.data["rows"] = e2e.ratios(raw)
            rec.save()
    done = all(r["status"] == "ok" or "out of memory" in r["status"] for r in raw)
    rec.finish("ok" if done else "incomplete")


def e2e_headline(data: dict) -> str:
    raw = data.get("raw", [])
    ok = sum(r["status"] == "ok" for r in raw)
    ran_out = [
        f"{r['model']} L {r['length']}"
        for r in raw
        if not r["status"].startswith("not run") and _out_of_memory(r)
    ]
    after = sum(r["status"].startswith("not run: eager ran out") for r in raw)
    text = f"{ok} of {len(raw)} measured"
    text += f"; eager out of memory from {', '.join(ran_out)} (longer not run)" if ran_out else ""
    other = len(raw) - ok - len(ran_out) - after
    text += f"; {other} timed out, failed or not run" if other else ""
    largest = {}
    for r in raw:
        if r["status"] == "ok":
            key = r["model"], r["method"]
            largest[key] = max(largest.get(key, r), r, key=lambda r: r["length"])
    for model in dict.fromkeys(r["model"] for r in raw):
        ours = largest.get((model, "attnscope"))
        if ours:
            text += f"; {model} at L {ours['length']}: attnscope {ours['seconds']:.3g} s"
    return text


# ---- views (issues 5-7) --------------------------------------------------------------------------
@dataclass
class View:
    """A view whose cost the run reports: `measure(dry_run)` returns its row's figures (seconds,
    bytes, ...); None while the view is not built."""

    issue: int
    name: str
    measure: Callable[[bool], dict] | None = None


@functools.cache
def _analysis_rows(dry_run: bool) -> dict[str, dict]:
    """benchmarks.analysis on one GPT-2-shaped layer (16k tokens; 40 in the dry run), by pass."""
    from ..analysis import measure

    device = "cpu" if dry_run else "cuda"
    rows = measure(40 if dry_run else 16384, device, repeats=1 if dry_run else 3)
    return {r["pass"]: r for r in rows}


def _analysis(pass_name: str) -> Callable[[bool], dict]:
    def run(dry_run: bool) -> dict:
        row = _analysis_rows(dry_run)[pass_name]
        return {k: row[k] for k in ("length", "seconds", "vs_terms", "backend")}

    return run


def _generation(dry_run: bool) -> dict:
    """benchmarks.generation at one prompt length: GPT-2 small generating 32 tokens after a 4k
    prompt, alone and traced (+ retrieval scores, + the passages read); a tiny model in the dry run."""
    from ..generation import _model, measure

    device, length = ("cpu", 40) if dry_run else ("cuda", 4096)
    rows = {r["step"]: r for r in measure(length, _model(dry_run, device, length), repeats=1)}
    alone = rows["generate (model alone)"]["seconds"]
    return {
        "length": length,
        "generate_s": alone,
        "traced_s": rows["generate + trace"]["seconds"],
        "read_s": rows["+ retrieval + passages read"]["seconds"],
        "vs_generate": rows["+ retrieval + passages read"]["vs_generate"],
    }


def _device_split(dry_run: bool) -> dict:
    """A model spread over devices (issue 7): its trace against the same model on one device.
    With two GPUs or more, a 4-layer GPT-2 split by device_map="balanced" over them (each layer's
    Q/K and views on its own GPU); with one GPU, or in the dry run, layers offloaded to CPU/disk."""
    import tempfile

    import torch
    import transformers as tf

    from attnscope import Extractor

    gpus = 0 if dry_run else torch.cuda.device_count()
    config = tf.GPT2Config(
        n_layer=4, n_head=4, n_embd=64 if dry_run else 256, n_positions=4096, vocab_size=1000
    )
    torch.manual_seed(0)
    length = 40 if dry_run else 2048
    ids = torch.randint(0, 1000, (1, length))
    with tempfile.TemporaryDirectory() as folder:
        tf.GPT2LMHeadModel(config).save_pretrained(folder)
        one = Extractor.from_pretrained(folder, device="cpu" if gpus == 0 else "cuda:0", dtype=torch.float32)
        if gpus >= 2:
            split = Extractor.from_pretrained(folder, device_map="balanced", dtype=torch.float32)
        else:
            layout = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu",
                      "transformer.h.1": "cpu", "transformer.h.2": "disk", "transformer.h.3": "disk",
                      "transformer.ln_f": "cpu", "lm_head": "cpu"}  # fmt: skip
            split = Extractor.from_pretrained(folder, device_map=layout, offload_folder=folder + "/off")
        ref, got = one.trace(input_ids=ids), split.trace(input_ids=ids)
        diff = max(
            float(
                (got.attention(layer, 0, slice(0, 256)) - ref.attention(layer, 0, slice(0, 256))).abs().max()
            )
            for layer in range(ref.num_layers)
        )
        stats = max(float((got.head_stats()[n] - v).abs().max()) for n, v in ref.head_stats().items())
    return {
        "gpus": gpus,
        "split": "balanced over GPUs" if gpus >= 2 else "CPU + disk offload",
        "devices": got.bytes_by_device(),
        "max_abs_diff_attention": diff,
        "max_abs_diff_head_stats": stats,
    }


#: Issue 5 of 8 (issue 15, head analysis): its passes, timed by benchmarks.analysis; issue 6 of 8
#: (issue 16, generation traces): tracing a generation against generating; issue 7 of 8 (issue 17):
#: a model spread over devices against the same model on one.
VIEWS = [
    View(5, "duplicate-token and induction terms", _analysis("terms + token ids (duplicate, induction)")),
    View(5, "rollout step (one query, one layer)", _analysis("rollout step (one query)")),
    View(5, "span sums (32 uneven spans)", _analysis("span sums (32 uneven spans)")),
    View(6, "generation traced (32 new tokens, + retrieval + passages)", _generation),
    View(7, "device-map split vs one device", _device_split),
]


def views_stage(rec: Record, dry_run: bool) -> None:
    for view in VIEWS:
        row = {"issue": view.issue, "view": view.name}
        if view.measure is None:
            rec.row({**row, "status": "not built yet"})
        else:
            rec.row({**row, "status": "ok", **view.measure(dry_run)})
    rec.finish()


def views_headline(data: dict) -> str:
    rows = data.get("rows", [])
    missing = [f"issue {r['issue']}" for r in rows if r["status"] == "not built yet"]
    built = len(rows) - len(missing)
    return f"{built} measured; not built yet: {', '.join(missing) or 'none'}"


# ---- hang (tests only) ---------------------------------------------------------------------------
def hang_stage(rec: Record, dry_run: bool) -> None:
    """Writes one row, then never ends: tests/test_benchmarks_gpu.py checks that it is cut."""
    rec.row({"step": "started", "pid": os.getpid()})
    while True:
        time.sleep(0.2)
