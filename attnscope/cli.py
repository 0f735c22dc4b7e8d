"""The `attnscope` command line."""

from __future__ import annotations

import argparse
import sys
import time


def _cmd_trace(args: argparse.Namespace) -> int:
    from attnscope import Extractor
    from attnscope.kernels.facts import HEAD_STATS

    started = time.perf_counter()
    ex = Extractor.from_pretrained(args.model, device=args.device)
    loaded = time.perf_counter()
    options = {"generate": args.generate} if args.generate else {"pair": args.pair}
    tr = ex.trace(args.text, **options)
    stats = tr.head_stats()
    done = time.perf_counter()
    name = ex.name if args.model else f"bundled {ex.name}"
    print(f"model: {name} on {ex.device}  ({tr.num_layers} layers × {tr.num_heads} heads)")
    print(f"tokens ({tr.seq_len}): {' '.join(tr.tokens)}")
    if tr.generated is not None:
        print(
            f"generated ({len(tr.generated.ids)} after {tr.prompt_len} prompt tokens): {tr.generated.text!r}"
        )
    what = "generated, traced" if tr.generated is not None else "traced"
    print(f"loaded in {loaded - started:.2f} s, {what} + head statistics in {done - loaded:.3f} s")
    if tr.generated is not None and tr.generated.ids:
        _print_reading(ex, tr, args.top)
    for stat, values in stats.items():
        flat = values.flatten()
        high = HEAD_STATS[stat][1] == "high"  # which end marks a notable head
        order = flat.argsort(descending=high)[: args.top]
        heads = ", ".join(f"L{int(i) // tr.num_heads}.H{int(i) % tr.num_heads}={flat[i]:.3f}" for i in order)
        print(f"{stat:>15} ({'highest' if high else 'lowest'}): {heads}")
    return 0


def _print_reading(ex, tr, top: int) -> None:
    """The heads that copied what was generated and the passages the answer read."""
    scores = tr.retrieval_scores().flatten()
    order = scores.argsort(descending=True)[:top]
    heads = ", ".join(f"L{int(i) // tr.num_heads}.H{int(i) % tr.num_heads}={scores[i]:.2f}" for i in order)
    print(f"{'retrieval':>15} (highest): {heads}")
    for start, stop, mass in tr.passages(top=min(top, 3)):
        print(f"{'read':>15}: [{start}, {stop}) mass {mass:.3f}  {' '.join(tr.tokens[start:stop])[:70]}")


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token from --token-file, the ATTNSCOPE_TOKEN environment variable or --token (the
    last is visible to every user in `ps`; the first two are not), in that order."""
    import os

    path = getattr(args, "token_file", None)
    if path:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
        if not token:
            raise ValueError(f"--token-file {path} is empty")
        return token
    return os.environ.get("ATTNSCOPE_TOKEN") or args.token or None


def _tls(args: argparse.Namespace) -> tuple[bytes, bytes] | None:
    """(certificate chain, key) PEM from --tls-cert/--tls-key, or None for plaintext."""
    if not args.tls_cert and not args.tls_key:
        return None
    if not (args.tls_cert and args.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    with open(args.tls_cert, "rb") as cert, open(args.tls_key, "rb") as key:
        return cert.read(), key.read()


def _model_spec(spec: str) -> tuple[str | None, str]:
    """`--model` as (the operator's name or None, what to load): NAME=PATH_OR_ID names a model;
    a bare id or path is named by its Hub id or its folder's name (see Extractor.name)."""
    import os

    given, sep, source = spec.partition("=")
    if sep and given and source and "/" not in given and "\\" not in given and not os.path.exists(spec):
        return given, source
    return None, spec


def _load_models(
    specs: list[str],
    device: str | None,
    dtype: str | None,
    device_map: str | None = None,
    offload: str | None = None,
) -> dict:
    """The served models by name: an operator's NAME= wins; else the Extractor's own name (the
    Hub id, a local folder's name, or all-MiniLM-L6-v2), never an absolute path."""
    import torch

    from attnscope import Extractor

    torch_dtype = getattr(torch, dtype) if dtype else None
    models: dict = {}
    for given, source in (_model_spec(s) for s in specs or [""]):
        placement = {"device_map": device_map, "offload_folder": offload} if device_map else {}
        ex = Extractor.from_pretrained(source or None, device=device, dtype=torch_dtype, **placement)
        name = given or ex.name
        if name in models:
            raise ValueError(f"two --model options are both named {name!r}; name them with --model NAME=PATH")
        models[name] = ex
    return models


async def _serve(args: argparse.Namespace) -> int:
    from attnscope.service.core import AttentionCore
    from attnscope.service.gateway import Gateway, require_aiohttp
    from attnscope.service.http.guard import parse_origin
    from attnscope.service.limits import Limits
    from attnscope.service.server import Server, wait_for_signal

    if args.http_port >= 0:  # checked before any model loads
        try:
            require_aiohttp()
        except ImportError as exc:
            print(f"attnscope: error: {exc}", file=sys.stderr)
            return 2
        for origin in args.allow_origin:
            if origin not in ("*", "null"):
                parse_origin(origin)  # ValueError: not scheme://host[:port]
    server = None
    grpc_address = args.grpc
    if grpc_address is None:
        limits = Limits(
            max_tokens=args.max_tokens,
            max_pooled_size=args.max_pooled_size,
            trace_cache_bytes=args.trace_cache_mb * 2**20,
            trace_ttl_s=args.trace_ttl,
            max_pending=args.max_pending,
            max_image_bytes=int(args.max_image_mb * 2**20),
            max_image_pixels=args.max_image_pixels,
        )
        models = _load_models(args.model, args.device, args.dtype, args.device_map, args.offload_folder)
        core = AttentionCore(models, limits)
        server = Server(
            core,
            args.host,
            args.grpc_port,
            token=_token(args),
            workers=args.workers,
            tls=_tls(args),
            allow_unauthenticated=args.allow_unauthenticated,
        )
        await server.start()
        grpc_address = server.address
        print(f"attnscope: gRPC on {server.address} (models: {', '.join(core.models)})", flush=True)
    gateway = None
    if args.http_port >= 0:
        gateway = Gateway(
            grpc_address,
            args.host,
            args.http_port,
            token=_token(args),
            allow_hosts=args.allow_host,
            allow_origins=args.allow_origin,
            ssl_context=_http_ssl_context(args),
            grpc_credentials=_gateway_credentials(args, in_process=server is not None),
            allow_unauthenticated=args.allow_unauthenticated,
            max_connections=args.http_max_connections,
        )
        gateway.start()
        # With a token, the one address that opens the viewer carries it (the page keeps it in
        # an HttpOnly cookie and goes on to the address without it).
        shown = gateway.viewer_url if gateway.guard.token else gateway.url
        print(f"attnscope: viewer on {shown}  (gRPC at {grpc_address})", flush=True)
    idle = True
    try:
        if server is not None:
            idle = await server.run_until_signal(args.grace)
        else:
            await wait_for_signal()
    finally:
        if gateway is not None:
            gateway.stop()
    print("attnscope: stopped", flush=True)
    if not idle:  # --grace bounds shutdown: a worker stuck in one long launch is not waited for
        import os

        sys.stderr.flush()
        os._exit(0)
    return 0


def _http_ssl_context(args: argparse.Namespace):
    """HTTPS for the viewer from the same certificate and key as gRPC's (--tls-cert, --tls-key)."""
    if _tls(args) is None:
        return None
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    return context


def _gateway_credentials(args: argparse.Namespace, in_process: bool):
    """TLS for the gateway's own gRPC channel: to the server this process serves with
    --tls-cert, that certificate is the one to trust; to a remote `--grpc` server, the CA of
    --grpc-ca (or the system's roots with --grpc-tls)."""
    import grpc

    tls = _tls(args)
    if in_process:
        return grpc.ssl_channel_credentials(root_certificates=tls[0]) if tls else None
    if args.grpc_ca:
        with open(args.grpc_ca, "rb") as f:
            return grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.ssl_channel_credentials() if args.grpc_tls else None


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return asyncio.run(_serve(args))


def _cmd_extract(args: argparse.Namespace) -> int:
    import numpy as np

    from attnscope import Client, views

    requested = [views.head_stats(), views.pooled(args.pooled_size)]
    if args.received:
        requested.append(views.received())
    with Client(args.server, token=_token(args), timeout=args.timeout, tls=args.tls) as client:
        result = client.extract(args.text, model=args.model, pair=args.pair or "", views=requested)
    np.savez(args.out, tokens=np.array(result.tokens), **result.tensors)
    print(
        f"wrote {args.out}: {len(result.tokens)} tokens; "
        + ", ".join(f"{name} {list(array.shape)}" for name, array in result.tensors.items())
    )
    return 0


def _parse_tiles(specs: list[str]) -> list[tuple[int, int]]:
    tiles = []
    for spec in specs:
        try:
            layer, head = (int(v) for v in spec.split(":"))
        except ValueError as exc:
            raise ValueError(f"--tile takes LAYER:HEAD, got {spec!r}") from exc
        tiles.append((layer, head))
    return tiles


def _cmd_export(args: argparse.Namespace) -> int:
    from attnscope.service.exports import export_file, trace_fetch

    tiles = _parse_tiles(args.tile)
    queries = [int(q) for q in args.neuron_queries.split(",")] if args.neuron_queries else None
    if args.server:
        from attnscope.service import Client

        with Client(args.server, token=_token(args), timeout=args.timeout, tls=args.tls) as client:
            path = client.export(
                args.text,
                args.out,
                model=args.model or "",
                pair=args.pair or "",
                pooled_size=args.pooled_size,
                tiles=tiles,
                neuron_queries=queries,
            )
    else:
        from attnscope import Extractor
        from attnscope.service.core import trace_info

        ex = Extractor.from_pretrained(args.model, device=args.device)
        trace = ex.trace(args.text, pair=args.pair)
        info = trace_info(trace, ex.name)
        path = export_file(
            args.out,
            info,
            trace_fetch(trace),
            text=args.text,
            pair=args.pair or "",
            pooled_size=args.pooled_size,
            tiles=tiles,
            neuron_queries=queries,
        )
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    import torch

    from attnscope import Extractor

    dtype = getattr(torch, args.dtype) if args.dtype else None
    ex = Extractor.from_pretrained(args.model, device=args.device, dtype=dtype)
    report = ex.verify(
        args.text,
        args.max_tokens,
        pair=args.pair,
        target=args.target,
        tolerance=args.tolerance,
        model_name=ex.name if args.model else f"bundled {ex.name}",
    )
    print(report)
    return 0 if report.passed else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from attnscope.benchmarks.e2e import main as bench_main

    return bench_main([a for a in args.bench_args if a != "--"])


def build_parser() -> argparse.ArgumentParser:
    from attnscope.service.limits import Limits  # the defaults the server reports, written once

    limits = Limits()
    parser = argparse.ArgumentParser(prog="attnscope", description="Exact attention views for transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser(
        "trace", help="trace one text and print its tokens and the top heads by each statistic"
    )
    tr.add_argument("text", help="the input text")
    tr.add_argument("--pair", default=None, help="optional second sentence (BERT-style pairs)")
    tr.add_argument("--model", default=None, help="model name or local path (default: the bundled MiniLM)")
    tr.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    tr.add_argument("--top", type=int, default=5, help="heads to list per statistic (default 5)")
    tr.add_argument(
        "--generate",
        type=int,
        default=0,
        metavar="N",
        help="generate N tokens after the text first (a causal language model), then trace it all "
        "and print the top retrieval heads and the passages the answer read",
    )
    tr.set_defaults(func=_cmd_trace)

    sv = sub.add_parser("serve", help="run the gRPC service and the viewer's HTTP port")
    sv.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]MODEL",
        help="Hub id or local path to serve (repeatable; the first is the default; none = the "
        "bundled all-MiniLM-L6-v2). Served as NAME when given, else as the Hub id or the folder's "
        "name; requests can name only these. A Hub id not in the local cache fails at once when "
        "offline (HF_HUB_OFFLINE=1) or when the Hub cannot be reached.",
    )
    sv.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    sv.add_argument(
        "--grpc-port", type=int, default=50051, help="gRPC port (0 picks a free one; default 50051)"
    )
    sv.add_argument(
        "--http-port", type=int, default=8000, help="viewer port (0 picks a free one, -1 none; default 8000)"
    )
    sv.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer HTTP requests whose Host is NAME (repeatable; default: loopback names and "
        "the --host address only, which stops DNS rebinding; '*' = any)",
    )
    sv.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages of ORIGIN (scheme://host[:port]) call the viewer's port (repeatable; default: "
        "only the viewer's own pages; cross-origin requests are refused with 403)",
    )
    sv.add_argument(
        "--http-max-connections",
        type=int,
        default=100,
        help="open HTTP connections before new ones get 503 (default 100)",
    )
    sv.add_argument(
        "--grpc",
        default=None,
        metavar="HOST:PORT",
        help="serve only the viewer, backed by a remote attnscope gRPC server",
    )
    sv.add_argument("--grpc-tls", action="store_true", help="the --grpc server speaks TLS (system CA roots)")
    sv.add_argument("--grpc-ca", default=None, help="PEM CA certificate that signed the --grpc server's")
    sv.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    sv.add_argument(
        "--device-map",
        default=None,
        help="spread each model over devices as accelerate does: auto, balanced, sequential (needs "
        "accelerate; --device is then not used); TraceInfo.device_memory reports each device's share",
    )
    sv.add_argument(
        "--offload-folder", default=None, help="with --device-map: where weights offloaded to disk go"
    )
    sv.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="model dtype (default: float32 on CPU, the checkpoint's on GPU)",
    )
    sv.add_argument(
        "--token",
        default=None,
        help="require 'authorization: Bearer TOKEN' on every call (visible in `ps`: prefer "
        "--token-file or the ATTNSCOPE_TOKEN environment variable)",
    )
    sv.add_argument("--token-file", default=None, help="read the bearer token from this file")
    sv.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve an address beyond loopback without a token (anyone who reaches it can run models)",
    )
    sv.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve TLS (with --tls-key)")
    sv.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    sv.add_argument(
        "--max-tokens",
        type=int,
        default=limits.max_tokens,
        help=f"longest input in tokens (default {limits.max_tokens})",
    )
    sv.add_argument(
        "--max-pooled-size",
        type=int,
        default=limits.max_pooled_size,
        help=f"largest pooled map side (default {limits.max_pooled_size})",
    )
    sv.add_argument(
        "--trace-cache-mb",
        type=int,
        default=limits.trace_cache_bytes // 2**20,
        help=f"device memory for kept traces (default {limits.trace_cache_bytes // 2**20} MiB)",
    )
    sv.add_argument(
        "--trace-ttl",
        type=float,
        default=limits.trace_ttl_s,
        help=f"seconds a kept trace lives unused (default {limits.trace_ttl_s:g})",
    )
    sv.add_argument(
        "--max-pending",
        type=int,
        default=limits.max_pending,
        help=f"calls in flight before RESOURCE_EXHAUSTED (default {limits.max_pending})",
    )
    sv.add_argument(
        "--max-image-mb",
        type=float,
        default=limits.max_image_bytes / 2**20,
        help=f"largest image a request may carry (default {limits.max_image_bytes / 2**20:g} MiB)",
    )
    sv.add_argument(
        "--max-image-pixels",
        type=int,
        default=limits.max_image_pixels,
        help=f"largest image in pixels, read from its header (default {limits.max_image_pixels:,})",
    )
    sv.add_argument(
        "--workers",
        choices=["device", "model"],
        default="device",
        help="one model-work thread per device (default) or per model (several small CPU models)",
    )
    sv.add_argument(
        "--grace", type=float, default=30.0, help="seconds calls in flight get on SIGTERM (default 30)"
    )
    sv.set_defaults(func=_cmd_serve)

    ex = sub.add_parser("extract", help="call a running server's Extract and write what it returned to .npz")
    ex.add_argument("text", help="the input text")
    ex.add_argument("--server", default="127.0.0.1:50051", help="gRPC address (default 127.0.0.1:50051)")
    ex.add_argument("--out", required=True, help="output .npz (tokens, head_stats/*, pooled, ...)")
    ex.add_argument("--model", default="", help="model name on the server (default: its default)")
    ex.add_argument("--pair", default=None, help="optional second sentence")
    ex.add_argument(
        "--pooled-size",
        type=int,
        default=0,
        help=f"pooled map side (0 = the server's default, min(L, {limits.default_pooled_size}) here)",
    )
    ex.add_argument("--received", action="store_true", help="also fetch received attention per key")
    ex.add_argument("--token", default=None, help="bearer token, if the server requires one")
    ex.add_argument("--token-file", default=None, help="read the bearer token from this file")
    ex.add_argument("--tls", action="store_true", help="the server speaks TLS (system CA roots)")
    ex.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    ex.set_defaults(func=_cmd_extract)

    xp = sub.add_parser(
        "export", help="write a trace's views to .npz, .safetensors or a standalone .html viewer"
    )
    xp.add_argument("text", help="the input text")
    xp.add_argument("--out", required=True, help="output file: .npz, .safetensors or .html")
    xp.add_argument(
        "--model",
        default=None,
        help="model name or local path (default: the bundled MiniLM); "
        "with --server, a model name on that server",
    )
    xp.add_argument("--pair", default=None, help="optional second sentence")
    xp.add_argument(
        "--pooled-size",
        type=int,
        default=0,
        help=f"pooled map side in .npz/.safetensors (0 = min(L, {limits.default_pooled_size}))",
    )
    xp.add_argument(
        "--tile",
        action="append",
        default=[],
        metavar="LAYER:HEAD",
        help="also store that head's exact attention (repeatable; .npz/.safetensors)",
    )
    xp.add_argument(
        "--neuron-queries",
        default=None,
        metavar="I,J,...",
        help="query tokens whose neuron view the .html holds (default: all)",
    )
    xp.add_argument("--server", default=None, metavar="HOST:PORT", help="trace on a running attnscope server")
    xp.add_argument("--device", default=None, help="cpu, cuda, ... (without --server)")
    xp.add_argument("--token", default=None, help="bearer token for --server")
    xp.add_argument("--token-file", default=None, help="read the bearer token for --server from this file")
    xp.add_argument("--tls", action="store_true", help="--server speaks TLS (system CA roots)")
    xp.add_argument("--timeout", type=float, default=None, help="seconds before giving up (with --server)")
    xp.set_defaults(func=_cmd_export)

    vf = sub.add_parser(
        "verify",
        help="compare attnscope's attention with transformers' eager output_attentions on one input "
        "(exit 0 on pass, 1 on fail)",
    )
    vf.add_argument("--model", default=None, help="model name or local path (default: the bundled MiniLM)")
    vf.add_argument(
        "--text",
        default="The doctor asked the nurse a question about the patient's recovery.",
        help="the input text (default: one English sentence)",
    )
    vf.add_argument("--pair", default=None, help="optional second sentence (BERT-style pairs)")
    vf.add_argument(
        "--target", default=None, help="the decoder's text (encoder-decoder models; default: --text)"
    )
    vf.add_argument(
        "--max-tokens", type=int, default=128, help="compare only the first N tokens (default 128)"
    )
    vf.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="largest accepted |difference| (default by dtype: float64 1e-5, float32 1e-4, "
        "float16 1e-2, bfloat16 5e-2)",
    )
    vf.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    vf.add_argument(
        "--dtype",
        default=None,
        choices=["float64", "float32", "float16", "bfloat16"],
        help="model dtype (default: float32 on CPU, the checkpoint's on GPU)",
    )
    vf.set_defaults(func=_cmd_verify)

    bn = sub.add_parser(
        "bench",
        help="the end-to-end benchmark (python -m benchmarks); --quick for a smoke run",
        add_help=False,
    )
    bn.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for python -m benchmarks")
    bn.set_defaults(func=_cmd_bench)

    from attnscope.service.report.cli import add_report_parser  # corpus reports, --compare

    add_report_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # everything after "bench" belongs to python -m benchmarks, --help included
        argv = ["bench", "--", *argv[1:]]
    args = build_parser().parse_args(argv)
    import grpc

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"attnscope: error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"attnscope: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
