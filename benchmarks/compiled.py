"""Every Triton kernel compiled ahead of time for a GPU architecture, on a machine without a GPU.

    python -m benchmarks.compiled              # sm_90 (H100/H200): all kernels x dtypes x head dims x masks
    python -m benchmarks.compiled --arch 80    # sm_80 (A100)
    python -m benchmarks.compiled --quick      # the heaviest variants only (what the tests run)
    python -m benchmarks.compiled --skip-interior   # the SKIP_INTERIOR variants (kernels/autotune.py)

Each launcher runs on CPU tensors exactly as the views call it, so block sizes, constexpr flags,
warps and pipeline stages are the production ones; the launch is replaced by Triton's own
compile-only path (``warmup``) against a stand-in driver that names the target. The cubin comes
from Triton's bundled ptxas, and its resources are read with the bundled cuobjdump: registers per
thread, stack and local memory per thread (where register spills go) and shared memory per
block (dynamic + static). A kernel that fails
to compile, or needs more shared memory than the architecture grants one block, fails the run.
These are compile-time facts about the kernels, not GPU measurements: nothing here runs them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from .common import RESULTS, environment, write

#: Shared memory one block may use (opt-in maximum), bytes, by compute capability.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: The masked variants' facts: every constexpr flag the views use on, and without key padding,
#: under which no tile is interior (the `--skip-interior` runs).
MASKED = "causal+window+softcap+padding"
MASKED_NO_PADDING = "causal+window+softcap"


class _TargetDriver:
    """The three questions Triton's JIT asks its driver before compiling; no GPU behind them."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self):
        return self.target


class _CompileOnly:
    """Stands in for a kernel: `kernel[grid](...)` compiles (warmup) and records, never launches."""

    def __init__(self, kernel, sink: list) -> None:
        self.kernel, self.sink = kernel, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append(self.kernel.run(*args, grid=grid, warmup=True, **kwargs))

        return launch


@contextmanager
def _compile_only(arch: int):
    """Patch every kernel family's kernel with `_CompileOnly`; yields the list of compiled kernels.

    Triton's active driver is replaced for the rest of the process (without a GPU there is no
    default one to go back to), so this runs in a process of its own: the command line's.
    """
    from triton.runtime.driver import driver

    from attnscope.kernels import digest, neuron, rowstats, tiles, topk

    kernels = [
        (rowstats, "_row_stats_kernel"),
        (digest, "_digest_kernel"),
        (tiles, "_probs_tile_kernel"),
        (topk, "_topk_kernel"),
        (neuron, "_neuron_kernel"),
    ]
    compiled: list = []
    saved = [getattr(module, name) for module, name in kernels]
    driver.set_active(_TargetDriver(arch))
    try:
        for module, name in kernels:
            setattr(module, name, _CompileOnly(getattr(module, name), compiled))
        yield compiled
    finally:
        for (module, name), kernel in zip(kernels, saved, strict=True):
            setattr(module, name, kernel)


def _launches(dtype: torch.dtype, d: int, masks: str | None, quick: bool):
    """(label, call) for every launcher variant at one dtype / head dim / mask (`MASKED` or
    `MASKED_NO_PADDING`; None: no mask)."""
    from attnscope.kernels import MaskSpec, digest, neuron, rowstats, tiles, topk

    length = 40  # lengths do not specialize the kernels (only their 16-divisibility does)
    q = torch.randn(8, length, d).to(dtype)
    k = torch.randn(2, length, d).to(dtype)
    spec = MaskSpec(scaling=d**-0.5)
    if masks is not None:
        padding = torch.ones(1, length, dtype=torch.bool) if masks == MASKED else None
        spec = MaskSpec(scaling=d**-0.5, causal=True, window=7, softcap=30.0, key_padding=padding)
    lse = torch.zeros(8, length)
    everything = dict(pooled_size=(16, 16), received=True, terms=True)
    calls = [
        ("row_stats", lambda: rowstats.row_stats_triton(q, k, spec, pack_gqa=False)),
        ("row_stats packed", lambda: rowstats.row_stats_triton(q, k, spec, pack_gqa=True)),
        ("digest", lambda: digest.digest_triton(q, k, spec, lse, pack_gqa=False, **everything)),
        ("digest packed", lambda: digest.digest_triton(q, k, spec, lse, pack_gqa=True, **everything)),
        ("tile", lambda: tiles.probs_tile_triton(q, k, spec, lse, 0, range(length), range(length))),
        ("top-16", lambda: topk.topk_triton(q, k, spec, lse, 0, 16, range(length))),
        ("neuron", lambda: neuron.neuron_triton(q, k, spec, lse, 0, length - 1, range(length))),
    ]
    if dtype != torch.float32:  # fp32 top-k past 16 is the tile kernel's (kernels/topk.py)
        calls.insert(-1, ("top-128", lambda: topk.topk_triton(q, k, spec, lse, 0, 128, range(length))))
    if quick:  # the packed variants share their unpacked twins' loops; the widest top-k only
        skip = {"row_stats packed", "digest packed"} | ({"top-16"} if dtype != torch.float32 else set())
        calls = [c for c in calls if c[0] not in skip]
    return calls


def _resources(cubin: bytes) -> dict:
    """Registers, stack, local and static shared bytes of the cubin's kernel, from cuobjdump."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        report = subprocess.run(
            [str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    found = dict(re.findall(r"\b(REG|LOCAL|SHARED|STACK):(\d+)", report))
    return {key.lower(): int(value) for key, value in found.items()}


def variants(quick: bool) -> list[tuple[str, int, bool]]:
    if quick:  # the widest rows in each dtype, every mask flag on
        return [("fp32", 256, True), ("bf16", 256, True), ("fp16", 64, True)]
    return [(dt, d, masked) for dt in DTYPES for d in (64, 80, 128, 256) for masked in (False, True)]


def run(arch: int, quick: bool) -> list[dict]:
    """One row per compiled launcher variant; with ATTNSCOPE_SKIP_INTERIOR=1 the SKIP_INTERIOR
    shapes, masked without key padding."""
    from attnscope.kernels import autotune

    skip_interior = autotune.skip_interior_default()
    masks = MASKED_NO_PADDING if skip_interior else MASKED
    limit = SHARED_LIMIT.get(arch)
    rows = []
    for dtype_name, d, masked in variants(quick):
        for label, call in _launches(DTYPES[dtype_name], d, masks if masked else None, quick):
            with _compile_only(arch) as compiled:
                call()
            (kernel,) = compiled
            res = _resources(kernel.asm["cubin"])
            shared = kernel.metadata.shared + res.get("shared", 0)
            row = {
                "kernel": label,
                "dtype": dtype_name,
                "d": d,
                "masks": masks if masked else "none",
                "skip_interior": skip_interior,
                "arch": f"sm_{arch}",
                "num_warps": kernel.metadata.num_warps,
                "num_stages": kernel.metadata.num_stages,
                "registers": res.get("reg"),
                "stack_bytes": res.get("stack"),
                "local_bytes": res.get("local"),
                "shared_bytes": shared,
                "shared_limit": limit,
            }
            print(row, flush=True)
            if limit is not None and shared > limit:
                raise RuntimeError(
                    f"{label} ({dtype_name}, d={d}) needs {shared} B of shared memory > {limit}"
                )
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    parser.add_argument("--quick", action="store_true", help="only the heaviest variants")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for compiled-sm<arch>.{json,md}")
    parser.add_argument(
        "--skip-interior",
        action="store_true",
        help="the launch shapes with SKIP_INTERIOR on (ATTNSCOPE_SKIP_INTERIOR=1); masks without key "
        "padding, which leaves no tile interior",
    )
    args = parser.parse_args(argv)
    if args.skip_interior:
        os.environ["ATTNSCOPE_SKIP_INTERIOR"] = "1"
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter replaces the kernels this compiles")
    rows = run(args.arch, args.quick)
    columns = [
        ("kernel", "kernel"),
        ("dtype", "dtype"),
        ("d", "d"),
        ("masks", "masks"),
        ("num_warps", "warps"),
        ("num_stages", "stages"),
        ("registers", "registers"),
        ("stack_bytes", "stack B"),
        ("local_bytes", "local B"),
        ("shared_bytes", "shared B"),
        ("shared_limit", "limit B"),
    ]
    name = f"compiled-sm{args.arch}" + ("-skip-interior" if rows and rows[0]["skip_interior"] else "")
    name += "-quick" if args.quick else ""
    write(name, environment(), rows, args.out, __doc__, columns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
