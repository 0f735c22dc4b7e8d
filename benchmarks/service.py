"""Service benchmark: what serialization and transport add to the compute of a 38 MB pooled result.

    python -m benchmarks.service [--repeats 15] [--out benchmarks/results]

The bundled all-MiniLM-L6-v2 (6 layers × 12 heads) traces a 398-token text and returns pooled
maps at 363 × 363: 6·12·363²·4 bytes = 37.9 MB. Measured, each as a median of `repeats` runs:
* compute: `AttentionCore.extract` in-process (tokenize, forward with capture, views), no gRPC;
* serialize: splitting the arrays into Tensor pieces and encoding the messages;
* end to end: `Client.extract` against a real server on a loopback port (compute included).
Overhead = (end to end - compute) / compute.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from attnscope import Client, Extractor, proto, views
from attnscope.service import AttentionCore
from attnscope.service.background import BackgroundServer
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    core = AttentionCore({"minilm": Extractor.from_pretrained()})
    request = proto.ExtractRequest(text=TEXT, views=[views.pooled(POOLED)])
    result = core.extract(request)
    nbytes = sum(a.nbytes for _, a in result.tensors)

    def serialize():
        return sum(
            p.ByteSize()
            for name, a in result.tensors
            for p in tensor_pieces(name, a)
            if p.SerializeToString()
        )

    def deserialize():
        return assemble(p for name, a in result.tensors for p in tensor_pieces(name, a))

    server = BackgroundServer(core, warm_up=False)
    with Client(server.address, timeout=600) as client:
        client.extract(TEXT, views=[views.pooled(POOLED)])  # warm-up
        compute = _median(lambda: core.extract(request), args.repeats)
        ser = _median(serialize, args.repeats)
        de = _median(deserialize, args.repeats)
        e2e = _median(lambda: client.extract(TEXT, views=[views.pooled(POOLED)]), args.repeats)
    server.stop()
    row = {
        "result_MB": nbytes / 1e6,
        "tokens": len(result.info.tokens),
        "compute_ms": compute * 1e3,
        "serialize_ms": ser * 1e3,
        "assemble_ms": de * 1e3,
        "end_to_end_ms": e2e * 1e3,
        "overhead_fraction": (e2e - compute) / compute,
    }
    print(row)
    write("service", environment(), [row], args.out, __doc__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
