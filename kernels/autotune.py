"""Launch shapes of the Triton kernels: the compile-report defaults and, with
``ATTNSCOPE_AUTOTUNE=1``, a small filtered space timed once per (kernel, shape) (issue 18).

A launch shape (`Config`) is ``(block_m, block_n, options)``: the tile of query rows and keys a
program takes, and the options passed to the launch as constexprs (``num_warps``,
``num_stages``, and for the kernels that mask tiles, ``SKIP_INTERIOR``: `triton_common.tile_logits2`
skips the visibility test on tiles every pair of which is visible, as FlashAttention's EVEN_M /
EVEN_N do). Every shape in a space gives the same values; only the speed differs. Until GPU
timings say otherwise the defaults stand: they are what the compiler reports for sm_90 without
spills (`python -m benchmarks.compiled`), and SKIP_INTERIOR is off unless
``ATTNSCOPE_SKIP_INTERIOR=1``.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from .triton_common import block_d

#: (block_m, block_n, launch options).
Config = tuple[int, int, dict]
T = TypeVar("T")

#: ``ATTNSCOPE_AUTOTUNE=1``: time each kernel's space once per shape and keep the fastest.
AUTOTUNE_ENV = "ATTNSCOPE_AUTOTUNE"
#: ``ATTNSCOPE_SKIP_INTERIOR=1``: the default shapes skip the mask on interior tiles.
SKIP_INTERIOR_ENV = "ATTNSCOPE_SKIP_INTERIOR"
#: ``ATTNSCOPE_AUTOTUNE_CACHE=<file.json>``: choices kept across processes (per GPU and Triton
#: version), so a server started again does not time its shapes again.
CACHE_ENV = "ATTNSCOPE_AUTOTUNE_CACHE"
#: Boolean launch options tried both ways on the fastest shape of a space, one after another
#: (coordinate descent: the space stays as small as the shapes alone).
TOGGLES = ("SKIP_INTERIOR",)
#: Shared memory a program may use on sm_90 (228 KiB per SM, two programs resident) in bytes.
SHARED_LIMIT = 144 * 1024
#: (kernel, shape key) -> the launch shape chosen; `chosen_configs` reads it.
_TUNED: dict[tuple[str, tuple], Config] = {}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def autotune_on() -> bool:
    return _flag(AUTOTUNE_ENV)


def skip_interior_default() -> bool:
    return _flag(SKIP_INTERIOR_ENV)


def loop_config(
    head_dim: int, dtype: torch.dtype, block_m: int | None = None, block_n: int | None = None
) -> Config:
    """The default launch shape of the kernels that loop over key blocks (row statistics, the
    digest) and of the probability tiles; a block size passed in (the tests' small tiles) wins.

    * fp16/bf16: 64 × 64 blocks on tensor cores; two pipeline stages from d = 256 (512-byte K
      rows) so shared memory stays within `SHARED_LIMIT`; 8 warps from d = 128 so the Q tile
      stays in registers.
    * fp32 (IEEE products on Triton's FMA path, which holds whole Q and K tiles in registers):
      64 × 64 blocks spill (5 KB of stack per thread at d = 128); 32 × 32 blocks up to d = 64 and
      16 × 32 beyond compile without spills in every kernel (rows, digest, tiles).
    """
    width = block_d(head_dim)
    row_bytes = width * dtype.itemsize
    if dtype == torch.float32:
        default_m, default_n = (32 if width <= 64 else 16), 32
    else:
        default_m, default_n = 64, 64
    launch = {
        "num_stages": 2 if row_bytes >= 512 else 3,
        "num_warps": 8 if width >= 128 else 4,
        "SKIP_INTERIOR": skip_interior_default(),
    }
    return block_m or default_m, block_n or default_n, launch


def digest_config(
    head_dim: int, dtype: torch.dtype, block_m: int | None = None, block_n: int | None = None
) -> Config:
    """`loop_config` with 32-key blocks in fp16/bf16 for the digest: its pooled, received and
    head-statistic sums beside the logits tile spill registers at 64 × 64 on sm_90 (24-160 bytes a
    thread unpacked, up to 408 GQA-packed, Triton 3.9) and fit at 64 × 32 (153-238 registers) in
    every variant of `python -m benchmarks.compiled`."""
    m, n, launch = loop_config(head_dim, dtype, block_m, block_n)
    if dtype != torch.float32 and block_n is None:
        n = 32
    return m, n, launch


def loop_space(head_dim: int, dtype: torch.dtype) -> list[Config]:
    """The autotune space of the looping kernels, `loop_config`'s default first.

    Filtered by the compile report's limits (`loop_config`): fp32 tiles at most 32 query rows up
    to d = 64 and 16 beyond; K tiles in shared memory (stages × block_n × row bytes, Q beside
    them) within `SHARED_LIMIT`; 8 warps only for 64-row tiles and up. SKIP_INTERIOR is a
    toggle (`TOGGLES`), tried on the fastest shape."""
    default = loop_config(head_dim, dtype)
    width = block_d(head_dim)
    row_bytes = width * dtype.itemsize
    if dtype == torch.float32:
        tiles = [(m, n) for m in (16, 32) for n in (16, 32, 64) if m <= (32 if width <= 64 else 16)]
    else:
        tiles = [(m, n) for m in (32, 64, 128) for n in (32, 64) if m * width <= 128 * 128]
    space = [default]
    for m, n in tiles:
        for warps in (4, 8):
            for stages in (2, 3):
                fits = stages * n * row_bytes + m * row_bytes <= SHARED_LIMIT
                if fits and (warps == 4 or m >= 64):
                    options = {**default[2], "num_stages": stages, "num_warps": warps}
                    if (m, n, options) not in space:
                        space.append((m, n, options))
    return space


def tuned_launch(
    kernel: str,
    shape: tuple,
    default: Config,
    space: Callable[[], list[Config]],
    run: Callable[[int, int, dict], T],
    fixed: bool = False,
) -> T:
    """`run(block_m, block_n, options)` at the launch shape to use: `default` when `fixed` (the
    caller passed block sizes: the tests' small tiles) or without ATTNSCOPE_AUTOTUNE; with it, the
    fastest shape of `space()` for this (kernel, shape), then each of `TOGGLES` flipped on it,
    timed once per process (shapes that fail to build are skipped) and cached."""
    if fixed or not autotune_on():
        return run(*default)
    key = (kernel, shape)
    if key not in _TUNED:
        kept = _cache_file()
        entry = _cache_key(kernel, shape)
        stored = _read_cache(kept).get(entry) if kept else None
        _TUNED[key] = tuple(stored) if stored else _fastest(kernel, space(), run)
        if kept and not stored:
            _write_cache(kept, entry, _TUNED[key])
    return run(*_TUNED[key])


def _cache_file() -> Path | None:
    path = os.environ.get(CACHE_ENV, "").strip()
    return Path(path).expanduser() if path else None


def _cache_key(kernel: str, shape: tuple) -> str:
    """The kernel, the input shape, and what decides the winner besides: the GPU and Triton."""
    import triton

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (interpreter)"
    return json.dumps([kernel, [str(part) for part in shape], gpu, triton.__version__])


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # a damaged file is timed again, not trusted
        warnings.warn(f"ignoring the autotune cache {path}: {exc}", stacklevel=3)
        return {}


def _write_cache(path: Path, entry: str, config: Config) -> None:
    """Add one choice, written atomically (another process may read the file meanwhile)."""
    kept = _read_cache(path)
    kept[entry] = list(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def tuned_loop_launch(
    kernel: str,
    shape: tuple,
    head_dim: int,
    dtype: torch.dtype,
    block_m: int | None,
    block_n: int | None,
    run: Callable[[int, int, dict], T],
    config: Callable[..., Config] = loop_config,
) -> T:
    """`tuned_launch` for the kernels that loop over key blocks: `config`'s default (block sizes
    passed in win and fix the shape) or the fastest of it and `loop_space`."""
    default = config(head_dim, dtype, block_m, block_n)
    fixed = block_m is not None or block_n is not None

    def space() -> list[Config]:
        return [default, *(c for c in loop_space(head_dim, dtype) if c != default)]

    return tuned_launch(kernel, shape, default, space, run, fixed)


def _fastest(kernel: str, space: list[Config], run: Callable[[int, int, dict], object]) -> Config:
    timed = [(seconds, config) for config in space if (seconds := _time(run, config)) is not None]
    if not timed:
        raise RuntimeError(f"no launch shape of {kernel} builds: {space}")
    best_seconds, best = min(timed, key=lambda pair: pair[0])
    for toggle in TOGGLES:
        if toggle in best[2]:
            flipped = (best[0], best[1], {**best[2], toggle: not best[2][toggle]})
            seconds = _time(run, flipped)
            if seconds is not None and seconds < best_seconds:
                best_seconds, best = seconds, flipped
    return best


def _time(run: Callable[[int, int, dict], object], config: Config) -> float | None:
    """Seconds of one run at `config` after a run that compiles it (triton.testing's median on a
    GPU); None where the shape does not build (registers, shared memory)."""
    try:
        run(*config)
        if torch.cuda.is_available():
            from triton.testing import do_bench

            return do_bench(lambda: run(*config), warmup=5, rep=20) / 1e3
        started = time.perf_counter()
        run(*config)
        return time.perf_counter() - started
    except Exception:  # a shape this GPU cannot build
        return None


def chosen_configs() -> list[dict]:
    """The launch shapes autotuning chose in this process, one entry per (kernel, shape)."""
    return [
        {"kernel": kernel, "shape": list(shape), "block_m": m, "block_n": n, **options}
        for (kernel, shape), (m, n, options) in _TUNED.items()
    ]
