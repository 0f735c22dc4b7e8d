"""End-to-end benchmark: attnscope's digest against eager attention and the model's own forward.

    python -m benchmarks              # full run: CUDA if present (GPT-2-small and Llama-3-8B shapes,
                                      # L = 512 ... 128k), else CPU (MiniLM, 4- and 2-layer GPT-2,
                                      # L <= 8k)
    python -m benchmarks --quick      # a few small sizes on the CPU: checks the whole pipeline

Per (model, length), each in its own process (so host peaks do not leak between runs):
* attnscope: trace (forward with capture) + row statistics + pooled maps at 256 + head statistics
  + received attention (on the torch backend one pass per layer gives all four), then one
  512 × 512 exact tile and one neuron view;
* eager: transformers' eager attention with output_attentions=True (the L×L tensors every other
  viewer needs); past what fits it is recorded as out of memory (or skipped on the CPU when its
  attentions alone would not fit in memory, since the kernel would kill the process);
* sdpa: the model's own forward with attn_implementation="sdpa" (and FlashAttention 2 when the
  flash_attn package is installed), the cost of simply running the model.
Reported: median wall time after a warm-up (CUDA events on the GPU), peak device memory, peak host
memory (VmHWM), bytes brought to the host, and attnscope / sdpa and attnscope / eager ratios;
attnscope/sdpa_paired is the median ratio of attnscope's runs to the model's own sdpa forward run
in turn in attnscope's process (the figure that holds on a shared machine whose load drifts).
Models have random weights built from configs (nothing is downloaded); MiniLM is the bundled one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from .common import RESULTS, environment, median_seconds, paired_seconds, proc_status, write

CUDA = torch.cuda.is_available()


def _config(name: str):
    import transformers as tf

    if name == "gpt2-small":  # 12 layers × 12 heads, d 64
        return tf.GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=131072, vocab_size=50257)
    if name == "gpt2-2layer":  # issue 18's GPT-2-shaped model: 2 layers × 12 heads, d 64, width 768
        return tf.GPT2Config(n_layer=2, n_head=12, n_embd=768, n_positions=8192, vocab_size=50257)
    if name == "gpt2-4layer":
        return tf.GPT2Config(n_layer=4, n_head=12, n_embd=768, n_positions=8192, vocab_size=50257)
    if name == "gpt2-tiny":  # --quick
        return tf.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=1024, vocab_size=1000)
    if name == "llama3-8b":  # 32 layers, 32 query heads, 8 key heads, d 128
        return tf.LlamaConfig(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=131072,
            rope_theta=500000.0,
        )
    raise ValueError(f"unknown model {name!r}")


def _model(name: str, attn: str, device: str, dtype: torch.dtype):
    import transformers as tf

    if name == "minilm":
        from attnscope.extract import default_model_path

        return (
            tf.AutoModel.from_pretrained(str(default_model_path()), attn_implementation=attn, dtype=dtype)
            .to(device)
            .eval()
        )
    torch.manual_seed(0)
    with torch.device(device):
        return tf.AutoModel.from_config(_config(name), attn_implementation=attn, dtype=dtype).eval()


def _vocab(model) -> int:
    return model.config.get_text_config().vocab_size


def _host_peak_reset() -> int:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return proc_status("VmRSS")


def run_one(spec: dict) -> dict:
    """One measurement (runs in a child process): spec = {model, method, length, repeats, dtype}."""
    device = "cuda" if CUDA else "cpu"
    dtype = getattr(torch, spec["dtype"])
    method, length = spec["method"], spec["length"]
    attn = {"attnscope": "sdpa", "eager": "eager", "sdpa": "sdpa", "flash": "flash_attention_2"}[method]
    model = _model(spec["model"], attn, device, dtype)
    ids = torch.randint(0, _vocab(model), (1, length), generator=torch.Generator().manual_seed(0)).to(device)
    out: dict = {}
    if method == "attnscope":
        from attnscope import Extractor

        ex = Extractor(model)

        def work():
            tr = ex.trace(input_ids=ids)
            pooled = tr.pooled(256)
            stats = tr.head_stats()
            received = tr.received()
            tile = tr.attention(tr.num_layers - 1, 0, slice(length - 512, length), slice(0, 512))
            neuron = tr.neuron(tr.num_layers - 1, 0, length - 1)
            out["host_bytes"] = int(
                pooled.nbytes
                + sum(v.nbytes for v in stats.values())
                + received.nbytes
                + tile.nbytes
                + sum(t.nbytes for t in neuron)
            )
            out["qk_bytes"] = sum(
                lqk.q.nbytes + lqk.k.nbytes for lqk in (tr.layer_qk(i) for i in range(tr.num_layers))
            )
    elif method == "eager":

        def work():
            with torch.no_grad():
                result = model(ids, output_attentions=True, use_cache=False)
            attentions = [a.cpu() for a in result.attentions]  # a viewer needs them on the host
            out["host_bytes"] = int(sum(a.nbytes for a in attentions))
    else:

        def work():
            with torch.no_grad():
                model(ids, use_cache=False)
            out["host_bytes"] = 0

    if CUDA:
        torch.cuda.synchronize()
        base_device = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    base_host = _host_peak_reset()
    try:
        if method == "attnscope":  # beside the model's own forward, in turn (after the trace, sdpa again)

            def forward():
                with torch.no_grad():
                    model(ids, use_cache=False)

            seconds, out["paired_sdpa_seconds"], out["paired_ratio"] = paired_seconds(
                work, forward, warmup=1, repeats=spec["repeats"]
            )
        else:
            seconds = median_seconds(work, warmup=1, repeats=spec["repeats"])
    except torch.cuda.OutOfMemoryError:
        return {**spec, "status": "out of memory"}
    result = {
        **spec,
        "status": "ok",
        "seconds": seconds,
        "peak_host_bytes": proc_status("VmHWM") - base_host,
        **out,
    }
    if CUDA:
        result["peak_device_bytes"] = torch.cuda.max_memory_allocated() - base_device
    return result


def _eager_fits_host(model: str, length: int) -> bool:
    """Whether eager's attentions (held twice: on the device side and the host copy) fit in RAM."""
    if CUDA:
        return True
    config = {"minilm": (6, 12)}.get(model) or (lambda c: (c.num_hidden_layers, c.num_attention_heads))(
        _config(model)
    )
    need = 2 * config[0] * config[1] * length * length * 4
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return need < 0.5 * available


def measure(spec: dict, timeout: int) -> dict:
    if spec["method"] == "eager" and not _eager_fits_host(spec["model"], spec["length"]):
        return {**spec, "status": "skipped: attentions would not fit in host memory"}
    proc = subprocess.run(
        [sys.executable, "-m", f"{__package__}.e2e", "--one", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[1],
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {**spec, "status": f"failed: {tail[0][:200]}"}
    return json.loads(lines[-1])


def plan(quick: bool) -> tuple[list[dict], str]:
    if quick:
        return [
            {"model": m, "length": n, "repeats": 1, "dtype": "float32"}
            for m, n in (("minilm", 64), ("gpt2-tiny", 384))
        ], "e2e-quick"
    if CUDA:
        lengths = [512, 2048, 8192, 32768, 131072]
        runs = [
            {"model": m, "length": n, "repeats": 3, "dtype": "bfloat16"}
            for m in ("gpt2-small", "llama3-8b")
            for n in lengths
        ]
        return runs, "e2e-cuda"
    runs = [{"model": "minilm", "length": n, "repeats": 3, "dtype": "float32"} for n in (128, 512)]
    runs += [
        {"model": "gpt2-4layer", "length": n, "repeats": 3, "dtype": "float32"} for n in (512, 2048, 8192)
    ]
    runs += [{"model": "gpt2-2layer", "length": n, "repeats": 5, "dtype": "float32"} for n in (2048, 8192)]
    return runs, "e2e-cpu"


def ratios(rows: list[dict]) -> list[dict]:
    table = []
    key = lambda r: (r["model"], r["length"])  # noqa: E731
    by = {}
    for r in rows:
        by.setdefault(key(r), {})[r["method"]] = r
    for (model, length), methods in by.items():
        ours = methods.get("attnscope", {})
        row = {"model": model, "L": length}
        for method in ("attnscope", "sdpa", "eager", "flash"):
            m = methods.get(method)
            if m is None:
                continue
            row[f"{method}_s"] = m["seconds"] if m["status"] == "ok" else m["status"]
            row[f"{method}_host_MiB"] = m.get("peak_host_bytes", 0) / 2**20 if m["status"] == "ok" else "-"
            if "peak_device_bytes" in m:
                row[f"{method}_device_MiB"] = m["peak_device_bytes"] / 2**20
        if ours.get("status") == "ok":
            row["to_host_MiB"] = ours["host_bytes"] / 2**20
            if "paired_ratio" in ours:  # same process, in turn: the figure to trust on a busy machine
                row["attnscope/sdpa_paired"] = ours["paired_ratio"]
            for other in ("sdpa", "eager"):
                m = methods.get(other)
                if m and m["status"] == "ok":
                    row[f"attnscope/{other}_time"] = ours["seconds"] / m["seconds"]
                    mem = "peak_device_bytes" if CUDA else "peak_host_bytes"
                    if m.get(mem):
                        row[f"attnscope/{other}_mem"] = ours[mem] / max(1, m[mem])
        table.append(row)
    return table


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mem = "peak_device_bytes" if CUDA else "peak_host_bytes"
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 7), squeeze=False)
    for col, model in enumerate(models):
        for method, style in (("attnscope", "o-"), ("sdpa", "s--"), ("eager", "x:"), ("flash", "d-.")):
            pts = sorted(
                (r["length"], r)
                for r in rows
                if r["model"] == model and r["method"] == method and r["status"] == "ok"
            )
            if not pts:
                continue
            xs = [p[0] for p in pts]
            axes[0][col].plot(xs, [p[1]["seconds"] for p in pts], style, label=method)
            axes[1][col].plot(xs, [max(1, p[1].get(mem, 0)) / 2**20 for p in pts], style, label=method)
        for row, label in ((0, "median time (s)"), (1, f"peak {'device' if CUDA else 'host'} memory (MiB)")):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tokens")
            ax.set_ylabel(label)
            ax.set_title(model)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small CPU sizes: a smoke run of the whole pipeline"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per measurement")
    parser.add_argument(
        "--from-raw",
        type=Path,
        default=None,
        help="rebuild the table and plots from a previous run's *-raw.json, measuring nothing",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))), flush=True)
        return 0
    if args.from_raw:
        report(json.loads(args.from_raw.read_text()), args.from_raw.name.removesuffix("-raw.json"), args.out)
        return 0
    runs, name = plan(args.quick)
    methods = ["attnscope", "sdpa", "eager"]
    try:
        import flash_attn  # noqa: F401

        methods.append("flash") if CUDA else None
    except ImportError:
        pass
    rows = []
    for run in runs:
        for method in methods:
            rows.append(measure({**run, "method": method}, args.timeout))
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}-raw.json").write_text(json.dumps(rows, indent=2) + "\n")
    report(rows, name, args.out)
    return 0


def report(rows: list[dict], name: str, out: Path) -> None:
    """The markdown table, its JSON and the plots of one run's raw rows."""
    table = ratios(rows)
    rest = sorted({k for r in table for k in r} - {"model", "L"})
    columns = ["model", "L", *rest]
    write(name, environment(), table, out, __doc__, [(k, k) for k in columns])
    print(f"wrote {plot(rows, out / f'{name}.png')}")


if __name__ == "__main__":
    raise SystemExit(main())
