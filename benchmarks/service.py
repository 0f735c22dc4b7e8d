"""Service benchmark: what serialization and transport add to the compute of a 38 MB pooled result.

    python -m benchmarks.service [--repeats 15] [--out benchmarks/results]

The bundled all-MiniLM-L6-v2 (6 layers × 12 heads) traces a 398-token text and returns pooled
maps at 363 × 363: 6·12·363²·4 bytes = 37.9 MB. Measured, each as a median of `repeats` runs:
* compute: `AttentionCore.extract` in-process (tokenize, forward with capture, views), no gRPC;
* serialize: splitting the arrays into Tensor pieces and encoding the messages;
* end to end: `Client.extract` against a real server on a loopback port (compute included).
Overhead = (end to end - compute) / compute.
Streaming: GetViews of a kept trace with one pooled view per (layer, head) group of 12 views:
the time to the first Tensor message against the time of the whole call (views stream as each
is computed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from attnscope import Client, Extractor, proto, views
from attnscope.service import AttentionCore
from attnscope.service.background import BackgroundServer
from attnscope.service.core import collect
from attnscope.service.stubs import channel, stubs
from attnscope.service.tensors import assemble, tensor_pieces

from .common import RESULTS, environment, write

TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 44)  # 396 words -> 398 tokens
POOLED = 363


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _streaming(address: str, trace_id: str, repeats: int) -> tuple[float, float]:
    """Median (time to the first Tensor message, time of the whole call) of a 12-view GetViews."""
    requested = [views.pooled(POOLED, layers=[layer], heads=list(range(h, h + 6)), name=f"p{layer}.{h}")
                 for layer in range(6) for h in (0, 6)]  # fmt: skip
    chan = channel(address)
    call = stubs(chan)["GetViews"].call
    firsts, wholes = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        first = None
        for message in call(proto.GetViewsRequest(trace_id=trace_id, views=requested), timeout=600):
            if first is None and message.WhichOneof("piece") == "tensor":
                first = time.perf_counter() - started
        wholes.append(time.perf_counter() - started)
        firsts.append(first)
    chan.close()
    return statistics.median(firsts), statistics.median(wholes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    core = AttentionCore({"minilm": Extractor.from_pretrained()})
    request = proto.ExtractRequest(text=TEXT, views=[views.pooled(POOLED)])
    result = collect(core.extract(request))
    nbytes = sum(a.nbytes for a in result.tensors.values())

    def serialize():
        return sum(
            p.ByteSize()
            for name, a in result.tensors.items()
            for p in tensor_pieces(name, a)
            if p.SerializeToString()
        )

    def deserialize():
        return assemble(p for name, a in result.tensors.items() for p in tensor_pieces(name, a))

    server = BackgroundServer(core, warm_up=False)
    with Client(server.address, timeout=600) as client:
        client.extract(TEXT, views=[views.pooled(POOLED)])  # warm-up
        compute = _median(lambda: collect(core.extract(request)), args.repeats)
        ser = _median(serialize, args.repeats)
        de = _median(deserialize, args.repeats)
        e2e = _median(lambda: client.extract(TEXT, views=[views.pooled(POOLED)]), args.repeats)
        first, whole = _streaming(server.address, client.create_trace(TEXT).trace_id, args.repeats)
    server.stop()
    row = {
        "result_MB": nbytes / 1e6,
        "tokens": result.info.kinds[0].query_len,
        "compute_ms": compute * 1e3,
        "serialize_ms": ser * 1e3,
        "assemble_ms": de * 1e3,
        "end_to_end_ms": e2e * 1e3,
        "overhead_fraction": (e2e - compute) / compute,
        "stream_first_tensor_ms": first * 1e3,
        "stream_whole_call_ms": whole * 1e3,
    }
    print(row)
    write("service", environment(), [row], args.out, __doc__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
