"""Service benchmark: what serialization and transport add to the compute of a 38 MB pooled result.

    python -m benchmarks.service [--repeats 15] [--out benchmarks/results]
    python -m benchmarks.service --load [N] [--seconds T]    (load mode: LOAD_DOC, service-load.*)

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
import asyncio
import json
import multiprocessing
import os
import statistics
import struct
import threading
import time
from pathlib import Path

import numpy as np

# Only the client side at the top: the load mode's clients run in a child process that imports
# this module, and need neither torch nor the server (imported where the server is built).
from attnscope import Client, proto, views
from attnscope.service.stubs import channel, stubs
from attnscope.service.tensors import assemble, tensor_pieces

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
    from attnscope import Extractor
    from attnscope.service import AttentionCore
    from attnscope.service.background import BackgroundServer
    from attnscope.service.core import collect

    from .common import RESULTS, environment, write

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--load",
        type=int,
        nargs="?",
        const=8,
        metavar="N",
        help=f"instead: N concurrent clients (default 8, at most {MAX_CLIENTS}) for --seconds each transport",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help=f"with --load: seconds per transport (at most {MAX_SECONDS:g})",
    )
    args = parser.parse_args(argv)
    if args.load is not None:
        if not (1 <= args.load <= MAX_CLIENTS and 0 < args.seconds <= MAX_SECONDS):
            parser.error(f"--load takes 1-{MAX_CLIENTS} clients and --seconds 0-{MAX_SECONDS:g}")
        return load(args.load, args.seconds, args.out)

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


# ---- load mode -------------------------------------------------------------------------------
LOAD_DOC = """Service load: throughput and latency of a small Extract under N concurrent clients.

    python -m benchmarks.service --load [N=8] [--seconds T=10] [--out benchmarks/results]

N clients call Extract back to back for T seconds per transport: the bundled all-MiniLM-L6-v2
(6 layers x 12 heads) on a 65-token text, head statistics and a pooled map at 32 x 32 (296 KB
of tensors per call). Transports: gRPC (the Python Client, one channel per client, one thread each)
and Connect through the HTTP side (aiohttp's client, server-streaming Extract in Connect's
envelopes, JSON and binary protobuf). The clients run in a child process, so their Python work
does not share the server's interpreter; server and clients share the machine's cores. Every answer
is checked (TraceInfo, the manifest, every tensor it names with its whole bytes, an end of stream
without error). calls_per_s = calls completed / wall time from the first start to the last end;
latencies are per call (p50, p99, max); errors are counted, the first one's message kept.
"""
LOAD_TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 7)  # 63 words -> 65 tokens
LOAD_POOLED = 32
MAX_CLIENTS = 256
MAX_SECONDS = 600.0
TRANSPORTS = ("grpc", "connect+json", "connect+proto")
LOAD_COLUMNS = [
    ("transport", "transport"),
    ("clients", "clients"),
    ("seconds", "seconds"),
    ("calls", "calls"),
    ("errors", "errors"),
    ("calls_per_s", "calls/s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("tokens", "tokens"),
    ("result_KB", "result KB"),
    ("note", "note"),
]


def _load_views() -> list:
    return [views.head_stats(name="stats"), views.pooled(LOAD_POOLED, name="map")]


def _load_request():
    return proto.ExtractRequest(text=LOAD_TEXT, views=_load_views())


def _check_answer(info, manifest, tensors: dict) -> int:
    """The answer's tensor bytes; raises when it is not a whole answer to `_load_request`."""
    if info is None or manifest is None:
        raise RuntimeError("the stream lacks its TraceInfo or manifest")
    listed = [t for v in manifest.views for t in v.tensors]
    if sorted(listed) != sorted(tensors):
        raise RuntimeError(f"tensors {sorted(tensors)} do not match the manifest {listed}")
    lq = info.kinds[0].query_len
    if tensors["map"].shape[2:] != (min(LOAD_POOLED, lq), min(LOAD_POOLED, lq)):
        raise RuntimeError(f"pooled map of shape {tensors['map'].shape} for {lq} tokens")
    return sum(a.nbytes for a in tensors.values())


class _Tally:
    """Latencies and errors of one transport's run (shared by its clients)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = ""
        self.tokens = 0
        self.nbytes = 0
        self.started = time.perf_counter()
        self.ended = self.started

    def ok(self, started: float, ended: float, tokens: int, nbytes: int) -> None:
        with self.lock:
            self.latencies.append(ended - started)
            self.ended = max(self.ended, ended)
            self.tokens, self.nbytes = tokens, nbytes

    def failed(self, exc: BaseException) -> None:
        with self.lock:
            self.errors += 1
            self.ended = max(self.ended, time.perf_counter())
            if not self.first_error:
                self.first_error = f"{type(exc).__name__}: {exc}"[:300]

    def row(self, transport: str, clients: int, seconds: float) -> dict:
        lat = np.array(self.latencies) * 1e3
        wall = max(self.ended - self.started, 1e-9)
        figures = (
            {
                "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "max_ms": float(lat.max()),
            }
            if len(lat)
            else {}
        )
        return {
            "transport": transport,
            "clients": clients,
            "seconds": seconds,
            "calls": len(self.latencies),
            "errors": self.errors,
            "calls_per_s": len(self.latencies) / wall,
            **figures,
            "tokens": self.tokens,
            "result_KB": self.nbytes / 1e3,
            "note": self.first_error,
        }


def _grpc_clients(address: str, clients: int, seconds: float, warmup: int) -> _Tally:
    def one_call(client: Client) -> tuple[int, int]:
        result = client.extract(LOAD_TEXT, views=_load_views(), timeout=60)
        return result.info.kinds[0].query_len, _check_answer(result.info, result.manifest, result.tensors)

    with Client(address) as client:
        for _ in range(warmup):
            one_call(client)
    tally = _Tally()
    end = tally.started + seconds

    def run() -> None:
        with Client(address) as client:
            while time.perf_counter() < end:
                started = time.perf_counter()
                try:
                    tokens, nbytes = one_call(client)
                except Exception as exc:  # counted and reported, the run goes on
                    tally.failed(exc)
                    continue
                tally.ok(started, time.perf_counter(), tokens, nbytes)

    threads = [threading.Thread(target=run, name=f"load-grpc-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


_ENVELOPE = struct.Struct(">BI")


def _from_json(message: dict):
    """A Connect JSON message of the stream as an ExtractResponse."""
    from google.protobuf import json_format

    return json_format.ParseDict(message, proto.ExtractResponse())


async def _connect_call(session, url: str, codec: str) -> tuple[int, int]:
    """One server-streaming Extract over Connect: (query tokens, tensor bytes) of its checked answer."""
    request = _load_request()
    if codec == "json":
        from google.protobuf import json_format

        body = json.dumps(json_format.MessageToDict(request)).encode()
    else:
        body = request.SerializeToString()
    headers = {
        "Content-Type": f"application/connect+{codec}",
        "Connect-Protocol-Version": "1",
        "Connect-Timeout-Ms": "60000",
    }
    path = f"{url}/{proto.SERVICE_NAME}/Extract"
    info = manifest = None
    pieces: list = []
    async with session.post(path, data=_ENVELOPE.pack(0, len(body)) + body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
        while True:
            flags, length = _ENVELOPE.unpack(await response.content.readexactly(_ENVELOPE.size))
            data = await response.content.readexactly(length)
            if flags & 0x02:  # end of stream: {} or {"error": {...}}
                end = json.loads(data or b"{}")
                if "error" in end:
                    raise RuntimeError(f"Connect error {end['error']}")
                break
            message = (
                _from_json(json.loads(data)) if codec == "json" else proto.ExtractResponse.FromString(data)
            )
            which = message.WhichOneof("piece")
            if which == "info":
                info = message.info
            elif which == "manifest":
                manifest = message.manifest
            else:
                pieces.append(message.tensor)
    tensors = assemble(pieces)
    return (info.kinds[0].query_len if info else 0), _check_answer(info, manifest, tensors)


async def _connect_clients_async(url: str, codec: str, clients: int, seconds: float, warmup: int) -> _Tally:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=clients + 1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(warmup):
            await _connect_call(session, url, codec)
        tally = _Tally()
        end = tally.started + seconds

        async def run() -> None:
            while time.perf_counter() < end:
                started = time.perf_counter()
                try:
                    tokens, nbytes = await _connect_call(session, url, codec)
                except Exception as exc:  # counted and reported, the run goes on
                    tally.failed(exc)
                    continue
                tally.ok(started, time.perf_counter(), tokens, nbytes)

        await asyncio.gather(*(run() for _ in range(clients)))
    return tally


def _load_child(address: str, url: str | None, clients: int, seconds: float, conn) -> None:
    """The clients' process: each transport in turn; sends its rows through `conn`."""
    rows = []
    for transport in TRANSPORTS:
        try:
            if transport == "grpc":
                tally = _grpc_clients(address, clients, seconds, warmup=2)
            elif url is None:
                rows.append(
                    {"transport": transport, "clients": clients, "note": "not available: no HTTP side"}
                )
                continue
            else:
                codec = transport.split("+")[1]
                tally = asyncio.run(_connect_clients_async(url, codec, clients, seconds, warmup=2))
            rows.append(tally.row(transport, clients, seconds))
        except Exception as exc:  # a transport that cannot run at all: one row that says why
            rows.append(
                {
                    "transport": transport,
                    "clients": clients,
                    "note": f"failed: {type(exc).__name__}: {exc}"[:300],
                }
            )
    conn.send(rows)
    conn.close()


def _http_side(address: str):
    """The HTTP (Connect) side in front of the gRPC server at `address`, or (None, why not)."""
    try:
        from attnscope.service.gateway import Gateway

        gateway = Gateway(address, port=0)
        gateway.start()
    except Exception as exc:  # aiohttp missing, or the HTTP side not there
        return None, f"not available: {type(exc).__name__}: {exc}"[:300]
    return gateway, ""


def load(clients: int, seconds: float, out: Path, model=None) -> int:
    """The load mode: one server (and its HTTP side), `clients` clients per transport for
    `seconds` each; writes service-load.{json,md} in `out`. `model`: an Extractor (default: the
    bundled all-MiniLM-L6-v2)."""
    from attnscope import Extractor
    from attnscope.service import AttentionCore
    from attnscope.service.background import BackgroundServer

    from .common import environment, write

    core = AttentionCore({"minilm": model or Extractor.from_pretrained()})
    server = BackgroundServer(core)
    gateway, why = _http_side(server.address)
    try:
        parent, child = multiprocessing.get_context("spawn").Pipe(duplex=False)
        process = multiprocessing.get_context("spawn").Process(
            target=_load_child,
            args=(server.address, gateway.url if gateway else None, clients, seconds, child),
            name="attnscope-load-clients",
        )
        process.start()
        child.close()
        budget = len(TRANSPORTS) * (seconds + 60) + 120  # bounded: a stuck child is ended
        rows = parent.recv() if parent.poll(budget) else None
        process.join(30)
        if process.is_alive():
            process.terminate()
            process.join(10)
        if rows is None:
            raise RuntimeError(f"the clients' process sent no results within {budget:.0f} s")
    finally:
        if gateway is not None:
            gateway.stop()
        server.stop()
    for row in rows:
        if why and row["transport"] != "grpc":
            row["note"] = why
        print(row)
    env = environment() | {"cpu_count": os.cpu_count(), "model": "all-MiniLM-L6-v2"}
    write("service-load", env, rows, out, LOAD_DOC, LOAD_COLUMNS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
