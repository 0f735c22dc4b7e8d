"""The HTTP side (service/gateway.py, service/http/) on the wire, read with aiohttp's client and raw
sockets: Connect framing and status codes, deadlines and cancellation passed on to gRPC, the
Host / Origin / token guard, and the limits on what one request may cost.

Most tests put the gateway in front of a fake AttentionService whose answers they choose (an
error after three messages, a call that never ends), so each checks the gateway alone; the real
service behind it is tested in test_serve_process.py and test_connect_client.py."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

import grpc
import pytest
from google.protobuf import json_format

from attnscope import proto
from attnscope.service.gateway import Gateway
from attnscope.service.http.connect import HTTP_STATUS

aiohttp = pytest.importorskip("aiohttp")

SERVICE = "/attnscope.v1.AttentionService/"
TENSOR = proto.Tensor(
    name="t", dtype=proto.DType["FLOAT32"], shape=[2], data=b"\0\0\x80?\0\0\0@", total_bytes=8
)


# ---- a fake gRPC service behind the gateway ------------------------------------------------------
class FakeService:
    """Extract streams info, manifest and one tensor, then: ends ("ok"), fails ("fail") or waits
    until cancelled ("hang"). CreateTrace fails with the status its text names. Every call's
    metadata and time remaining are recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict, float | None, object]] = []
        self.cancelled = threading.Event()

    def _record(self, name, request, context) -> None:
        self.calls.append((name, dict(context.invocation_metadata()), context.time_remaining(), request))

    async def Extract(self, request, context):
        self._record("Extract", request, context)
        yield proto.ExtractResponse(info=proto.TraceInfo(model="fake", trace_id=request.text))
        yield proto.ExtractResponse(
            manifest=proto.ViewManifest(views=[proto.ViewOutput(name="t", tensors=["t"])])
        )
        yield proto.ExtractResponse(tensor=TENSOR)
        if request.text == "fail":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory while streaming")
        if request.text == "hang":
            try:
                await asyncio.sleep(120)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if request.text == "big":  # far more than socket buffers hold, for a client that never reads
            sent = 0
            try:
                for i in range(64):
                    piece = proto.Tensor(
                        name="big", data=bytes(1 << 20), offset=i << 20, total_bytes=64 << 20
                    )
                    yield proto.ExtractResponse(tensor=piece)
                    sent += 1
            finally:
                if sent < 64:  # cut off: the client cancelled (grpc closes this generator)
                    self.cancelled.set()

    async def CreateTrace(self, request, context):
        self._record("CreateTrace", request, context)
        if request.text == "hang":
            try:
                await asyncio.sleep(120)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        await context.abort(grpc.StatusCode[request.text], f"{request.text} from the fake service")

    async def ListModels(self, request, context):
        self._record("ListModels", request, context)
        return proto.ListModelsResponse(models=[proto.ModelInfo(name="fake", is_default=True)])


class FakeServer:
    """`FakeService` on a grpc.aio server in a thread of its own (plaintext, or TLS with `tls`)."""

    def __init__(self, tls: tuple[bytes, bytes] | None = None) -> None:
        self.service = FakeService()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server, port = asyncio.run_coroutine_threadsafe(self._start(tls), self.loop).result(30)
        self.address = f"127.0.0.1:{port}"

    async def _start(self, tls):
        s = self.service
        handlers = {
            "Extract": grpc.unary_stream_rpc_method_handler(
                s.Extract, proto.ExtractRequest.FromString, proto.ExtractResponse.SerializeToString
            ),
            "CreateTrace": grpc.unary_unary_rpc_method_handler(
                s.CreateTrace, proto.CreateTraceRequest.FromString, proto.TraceInfo.SerializeToString
            ),
            "ListModels": grpc.unary_unary_rpc_method_handler(
                s.ListModels, proto.ListModelsRequest.FromString, proto.ListModelsResponse.SerializeToString
            ),
        }
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(proto.SERVICE_NAME, handlers)])
        if tls:
            port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(tls[1], tls[0])]))
        else:
            port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def fake():
    server = FakeServer()
    yield server
    server.stop()


@contextlib.contextmanager
def gateway_for(fake, **kwargs):
    gateway = Gateway(fake.address, port=0, **kwargs)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def gateway(fake):
    with gateway_for(fake) as g:
        yield g


# ---- helpers ---------------------------------------------------------------------------------------
def run(coro):
    return asyncio.run(coro)


def envelope(data: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def split_envelopes(raw: bytes) -> list[tuple[int, bytes]]:
    out, at = [], 0
    while at < len(raw):
        flags, length = struct.unpack_from(">BI", raw, at)
        out.append((flags, raw[at + 5 : at + 5 + length]))
        at += 5 + length
    assert at == len(raw), "the stream ends inside an envelope"
    return out


def connect_headers(content_type: str, **extra) -> dict:
    return {"Content-Type": content_type, "Connect-Protocol-Version": "1", **extra}


async def request(url: str, method: str = "POST", path: str = "/", **kwargs):
    """(status, headers, body) of one request, with a fresh session."""
    async with aiohttp.ClientSession() as session, session.request(method, url + path, **kwargs) as r:
        return r.status, r.headers, await r.read()


def stream_body(message, codec: str) -> bytes:
    data = message.SerializeToString() if codec == "proto" else json_format.MessageToJson(message).encode()
    return envelope(data)


def decode_stream(raw: bytes, codec: str) -> tuple[list, dict]:
    """A Connect stream's messages (as ExtractResponse) and its end-of-stream JSON."""
    *messages, (end_flags, end) = split_envelopes(raw)
    assert end_flags == 0x02 and all(flags == 0 for flags, _ in messages)
    parse = (
        proto.ExtractResponse.FromString
        if codec == "proto"
        else (lambda b: json_format.Parse(b.decode(), proto.ExtractResponse()))
    )
    return [parse(data) for _, data in messages], json.loads(end)


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` on a plain socket and read until the server closes or `timeout` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in b"".join(chunks):
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    None,
                )
                if length is not None and len(body) >= length:
                    break
        return b"".join(chunks)


# ---- Connect framing -------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", ["json", "proto"])
def test_a_stream_is_envelopes_then_an_empty_end_of_stream(gateway, codec):
    status, headers, raw = run(
        request(
            gateway.url,
            path=f"{SERVICE}Extract",
            data=stream_body(proto.ExtractRequest(text="ok"), codec),
            headers=connect_headers(f"application/connect+{codec}"),
        )
    )
    assert status == 200 and headers["Content-Type"] == f"application/connect+{codec}"
    messages, end = decode_stream(raw, codec)
    assert end == {}
    assert [m.WhichOneof("piece") for m in messages] == ["info", "manifest", "tensor"]
    assert messages[0].info.trace_id == "ok" and messages[2].tensor == TENSOR


@pytest.mark.parametrize("codec", ["json", "proto"])
def test_an_error_mid_stream_ends_the_stream_with_its_code(gateway, codec):
    status, _, raw = run(
        request(
            gateway.url,
            path=f"{SERVICE}Extract",
            data=stream_body(proto.ExtractRequest(text="fail"), codec),
            headers=connect_headers(f"application/connect+{codec}"),
        )
    )
    assert status == 200  # a stream's status is always 200: how it ended is in its last envelope
    messages, end = decode_stream(raw, codec)
    assert len(messages) == 3 and messages[2].tensor == TENSOR  # what came before the error arrived
    assert end == {"error": {"code": "resource_exhausted", "message": "out of memory while streaming"}}


@pytest.mark.parametrize("status", [s for s in grpc.StatusCode if s is not grpc.StatusCode.OK], ids=str)
def test_unary_errors_have_the_spec_http_status(gateway, status):
    body = json.dumps({"text": status.name}).encode()
    got, headers, raw = run(
        request(
            gateway.url, path=f"{SERVICE}CreateTrace", data=body, headers=connect_headers("application/json")
        )
    )
    code = "canceled" if status is grpc.StatusCode.CANCELLED else status.name.lower()
    assert headers["Content-Type"] == "application/json"
    assert json.loads(raw) == {"code": code, "message": f"{status.name} from the fake service"}
    assert got == HTTP_STATUS[code]
    # The table of the Connect spec, spelled out for the codes this service answers with.
    spec = {"invalid_argument": 400, "out_of_range": 400, "not_found": 404, "resource_exhausted": 429}
    spec |= {"unauthenticated": 401, "deadline_exceeded": 504, "unavailable": 503, "canceled": 499}
    spec |= {"internal": 500, "unimplemented": 501, "permission_denied": 403, "unknown": 500}
    assert got == spec.get(code, got)


def test_unary_calls_answer_in_the_codec_they_were_asked_in(gateway):
    for codec, decode in (
        ("json", lambda raw: json_format.Parse(raw.decode(), proto.ListModelsResponse())),
        ("proto", proto.ListModelsResponse.FromString),
    ):
        body = b"{}" if codec == "json" else b""
        status, headers, raw = run(
            request(
                gateway.url,
                path=f"{SERVICE}ListModels",
                data=body,
                headers=connect_headers(f"application/{codec}"),
            )
        )
        assert status == 200 and headers["Content-Type"] == f"application/{codec}"
        assert decode(raw).models[0].name == "fake"


def test_connect_timeout_becomes_the_grpc_deadline(fake, gateway):
    def call(timeout_ms):
        extra = {} if timeout_ms is None else {"Connect-Timeout-Ms": timeout_ms}
        return run(
            request(
                gateway.url,
                path=f"{SERVICE}ListModels",
                data=b"{}",
                headers=connect_headers("application/json", **extra),
            )
        )

    assert call("4000")[0] == 200
    _, _, remaining, _ = fake.service.calls[-1]
    assert remaining is not None and 2.0 < remaining <= 4.1  # grpc rounds the timeout it sends up
    assert call(None)[0] == 200
    assert fake.service.calls[-1][2] is None  # no header, no deadline
    for bad in ("abc", "-5", "0", "12345678901"):
        status, _, raw = call(bad)
        assert (status, json.loads(raw)["code"]) == (400, "invalid_argument"), bad


def test_a_client_that_leaves_cancels_its_grpc_call(fake, gateway, caplog):
    """The browser closes the stream while the server still works: the gRPC call is cancelled
    (the server abandons the work) and the request's log line says canceled."""
    fake.service.cancelled.clear()

    async def leave_early():
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                f"{gateway.url}{SERVICE}Extract",
                data=stream_body(proto.ExtractRequest(text="hang"), "json"),
                headers=connect_headers("application/connect+json"),
            )
            seen = b""
            while len(split_or_none(seen)) < 3:  # the first three messages arrive while the call runs
                seen += await asyncio.wait_for(response.content.readany(), 30)
            response.close()  # and the client goes away
            return split_or_none(seen)

    with caplog.at_level(logging.INFO, logger="attnscope.http"):
        first = run(leave_early())
        assert [flags for flags, _ in first[:3]] == [0, 0, 0]
        assert fake.service.cancelled.wait(10), "the gRPC call went on after the client left"
        deadline = time.monotonic() + 10
        while not any("Extract" in r.message and "code=canceled" in r.message for r in caplog.records):
            assert time.monotonic() < deadline, [r.message for r in caplog.records]
            time.sleep(0.05)


def test_a_unary_call_is_cancelled_when_its_client_leaves(fake, gateway):
    fake.service.cancelled.clear()

    async def leave():
        async with aiohttp.ClientSession() as session:
            call = session.post(
                f"{gateway.url}{SERVICE}CreateTrace",
                data=json.dumps({"text": "hang"}),
                headers=connect_headers("application/json"),
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(call, 1.0)  # gives up: the connection is closed

    started = len(fake.service.calls)
    run(leave())
    assert fake.service.calls[started][0] == "CreateTrace"  # the call had reached the server
    assert fake.service.cancelled.wait(10), "the gRPC call went on after the client left"


def test_a_client_that_stops_reading_is_let_go(fake):
    """Nothing waits forever on a reader that reads nothing: after write_timeout_s the gateway
    gives up on the answer and cancels the gRPC call (the server frees what it holds for it)."""
    fake.service.cancelled.clear()
    with gateway_for(fake, write_timeout_s=1.0) as g:
        body = stream_body(proto.ExtractRequest(text="big"), "proto")
        with socket.create_connection(("127.0.0.1", g.port), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(
                b"POST " + SERVICE.encode() + b"Extract HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/connect+proto\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            assert fake.service.cancelled.wait(20), "the gateway still waits on a client that reads nothing"


def split_or_none(raw: bytes) -> list[tuple[int, bytes]]:
    """The whole envelopes at the start of `raw` (a stream read so far)."""
    out, at = [], 0
    while len(raw) - at >= 5:
        flags, length = struct.unpack_from(">BI", raw, at)
        if len(raw) - at - 5 < length:
            break
        out.append((flags, raw[at + 5 : at + 5 + length]))
        at += 5 + length
    return out


def test_the_token_is_checked_here_and_sent_to_grpc_as_bearer(fake):
    with gateway_for(fake, token="tok") as g:
        body, headers = b"{}", connect_headers("application/json")
        status, _, raw = run(request(g.url, path=f"{SERVICE}ListModels", data=body, headers=headers))
        assert (status, json.loads(raw)["code"]) == (401, "unauthenticated")
        headers["Authorization"] = "Bearer wrong"
        assert run(request(g.url, path=f"{SERVICE}ListModels", data=body, headers=headers))[0] == 401
        headers["Authorization"] = "Bearer tok"
        assert run(request(g.url, path=f"{SERVICE}ListModels", data=body, headers=headers))[0] == 200
        assert fake.service.calls[-1][1]["authorization"] == "Bearer tok"
        # Static files need it too, and the login answer sets the cookie that replaces it.
        assert run(request(g.url, "GET", "/main.js"))[0] == 401
        status, headers, _ = run(request(g.url, "GET", "/?token=tok&view=model", allow_redirects=False))
        assert status == 303 and headers["Location"] == "/?view=model"
        cookie = headers["Set-Cookie"]
        assert f"attnscope-token-{g.port}=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        jar = {"Cookie": cookie.split(";", 1)[0]}
        assert run(request(g.url, "GET", "/main.js", headers=jar))[0] == 200
    with gateway_for(fake) as g:  # no token here: the client's own header goes through
        headers = connect_headers("application/json", Authorization="Bearer theirs")
        assert run(request(g.url, path=f"{SERVICE}ListModels", data=b"{}", headers=headers))[0] == 200
        assert fake.service.calls[-1][1]["authorization"] == "Bearer theirs"


# ---- bad requests: every one answered, with the right code -----------------------------------------
@pytest.mark.parametrize(
    ("path", "content_type", "body", "status", "code"),
    [
        ("ListModels", "application/connect+json", envelope(b"{}"), 415, "unimplemented"),
        ("Extract", "application/json", b"{}", 415, "unimplemented"),
        ("ListModels", "text/plain", b"{}", 415, "unimplemented"),
        ("ListModels", "application/json", b'{"x": "\xff\xfe"}', 400, "invalid_argument"),
        ("ListModels", "application/json", b"[1, 2", 400, "invalid_argument"),
        ("ListModels", "application/json", b"[" * 100_000, 400, "invalid_argument"),
        ("Extract", "application/connect+proto", envelope(b"\xff\xff\xff\xff"), 400, "invalid_argument"),
        ("Extract", "application/connect+json", envelope(b"{}")[:6], 400, "invalid_argument"),
        ("Extract", "application/connect+json", envelope(b"{}") * 2, 400, "invalid_argument"),
        ("Extract", "application/connect+json", envelope(b"{}", flags=2), 400, "invalid_argument"),
        ("Nope", "application/json", b"{}", 404, "not_found"),
    ],
)
def test_bad_requests_get_connect_errors(gateway, path, content_type, body, status, code):
    got, headers, raw = run(
        request(gateway.url, path=SERVICE + path, data=body, headers=connect_headers(content_type))
    )
    assert headers["Content-Type"] == "application/json"
    assert (got, json.loads(raw)["code"]) == (status, code), raw[:300]


def test_echoed_input_is_cut_short(gateway):
    long_field = json.dumps({"x" * 100_000: 1}).encode()
    for path, body in ((f"{SERVICE}ListModels", long_field), (SERVICE + "N" * 10_000, b"{}")):
        status, _, raw = run(
            request(gateway.url, path=path, data=body, headers=connect_headers("application/json"))
        )
        message = json.loads(raw)["message"]
        assert status in (400, 404) and len(message) < 1100, len(message)


def test_protocol_version_and_encodings(gateway):
    url = f"{gateway.url}{SERVICE}Extract"
    message = json_format.MessageToJson(proto.ExtractRequest(text="ok")).encode()
    headers = connect_headers("application/connect+json", **{"Connect-Protocol-Version": "2"})
    status, _, raw = run(request(url, path="", data=envelope(message), headers=headers))
    assert (status, json.loads(raw)["code"]) == (400, "invalid_argument")
    # A gzip-compressed envelope (flag 0x01) is read; an encoding this side lacks is unimplemented.
    gz = connect_headers("application/connect+json", **{"Connect-Content-Encoding": "gzip"})
    status, _, raw = run(request(url, path="", data=envelope(gzip.compress(message), flags=1), headers=gz))
    assert status == 200 and decode_stream(raw, "json")[1] == {}
    br = connect_headers("application/connect+json", **{"Connect-Content-Encoding": "br"})
    status, _, raw = run(request(url, path="", data=envelope(message), headers=br))
    assert (status, json.loads(raw)["code"]) == (501, "unimplemented")
    # A unary body sent with Content-Encoding: gzip (aiohttp undoes it) is read too.
    headers = connect_headers("application/json", **{"Content-Encoding": "gzip"})
    status, _, raw = run(
        request(gateway.url, path=f"{SERVICE}ListModels", data=gzip.compress(b"{}"), headers=headers)
    )
    assert status == 200 and json.loads(raw)["models"][0]["name"] == "fake"


def test_get_on_a_method_and_post_elsewhere_are_answered(gateway):
    status, _, raw = run(request(gateway.url, "GET", f"{SERVICE}ListModels"))
    assert (status, json.loads(raw)["code"]) == (405, "unimplemented")
    status, _, raw = run(request(gateway.url, "POST", "/api/ListModels", data=b"{}"))
    assert (status, json.loads(raw)["code"]) == (404, "not_found") and "Connect" in json.loads(raw)["message"]


# ---- limits on one request ---------------------------------------------------------------------------
@pytest.mark.parametrize("length", [b"-1", b"abc", b"1, 2"])
def test_a_bad_content_length_is_answered_400(gateway, length, caplog):
    with caplog.at_level(logging.INFO, logger="attnscope.http"):
        reply = raw_exchange(
            gateway.port,
            b"POST " + SERVICE.encode() + b"ListModels HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: " + length + b"\r\n\r\n{}",
        )
        assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n", 1)[0], reply[:200]
        deadline = time.monotonic() + 5  # one log line for it too
        while not any(
            "malformed HTTP request" in r.message and "http=400" in r.message for r in caplog.records
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_bodies_over_the_limit_are_refused_however_they_are_sent(fake):
    with gateway_for(fake, max_body_bytes=4096) as g:
        url = f"{g.url}{SERVICE}ListModels"
        status, _, raw = run(
            request(url, path="", data=b" " * 5000, headers=connect_headers("application/json"))
        )
        assert (status, json.loads(raw)["code"]) == (413, "resource_exhausted")

        async def chunks(n):
            for _ in range(n):
                yield b" " * 1000
            yield b"{}"

        # Chunked (no Content-Length, as real Connect clients stream bodies): read, and cut at the limit.
        status, _, raw = run(
            request(url, path="", data=chunks(10), headers=connect_headers("application/json"))
        )
        assert (status, json.loads(raw)["code"]) == (413, "resource_exhausted")
        status, _, raw = run(
            request(url, path="", data=chunks(2), headers=connect_headers("application/json"))
        )
        assert status == 200 and json.loads(raw)["models"][0]["name"] == "fake"
        # A body announced over the limit is refused before it is sent.
        reply = raw_exchange(
            g.port,
            b"POST " + SERVICE.encode() + b"ListModels HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 99999999\r\n\r\n",
        )
        assert b" 413 " in reply.split(b"\r\n", 1)[0] and b"resource_exhausted" in reply


def test_a_body_that_does_not_arrive_times_out(fake):
    with gateway_for(fake, body_timeout_s=1.0) as g:
        started = time.monotonic()
        reply = raw_exchange(
            g.port,
            b"POST " + SERVICE.encode() + b"ListModels HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        assert b" 408 " in reply.split(b"\r\n", 1)[0] and b"deadline_exceeded" in reply
        assert time.monotonic() - started < 8


def test_idle_and_half_sent_connections_are_closed(fake):
    with gateway_for(fake, idle_timeout_s=1.0) as g:
        started = time.monotonic()
        assert raw_exchange(g.port, b"GET / HT", timeout=15) == b""  # closed, nothing to answer
        assert time.monotonic() - started < 10


def test_connections_over_the_limit_get_503(fake):
    with gateway_for(fake, max_connections=2) as g:
        held = []
        try:
            for _ in range(2):  # two keep-alive connections, each answered once and kept open
                sock = socket.create_connection(("127.0.0.1", g.port), timeout=10)
                sock.sendall(b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
                held.append(sock)
            reply = raw_exchange(g.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 503") and b'"unavailable"' in reply
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10  # once they are closed, a new connection is served
        while not raw_exchange(g.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").startswith(
            b"HTTP/1.1 200"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_head_answers_for_static_files(gateway):
    _, _, page = run(request(gateway.url, "GET", "/index.html"))
    status, headers, body = run(request(gateway.url, "HEAD", "/index.html"))
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(page) > 0
    assert headers["Content-Type"].startswith("text/html")
    assert run(request(gateway.url, "HEAD", "/nope.html"))[0] == 404
    assert run(request(gateway.url, "HEAD", "/../pyproject.toml"))[0] == 404


# ---- Host, Origin, CORS ----------------------------------------------------------------------------
def test_host_must_name_this_server(fake, caplog):
    with (
        gateway_for(fake, allow_hosts=["attnscope.test"]) as g,
        caplog.at_level(logging.INFO, "attnscope.http"),
    ):
        for host, expected in [
            ("evil.example", 403),
            (f"evil.example:{g.port}", 403),
            ("127.0.0.1.evil.example", 403),
            (f"localhost:{g.port}", 200),
            (f"127.0.0.1:{g.port}", 200),
            (f"[::1]:{g.port}", 200),
            ("attnscope.test", 200),
        ]:
            status, _, raw = run(request(g.url, "GET", "/", headers={"Host": host}))
            assert status == expected, host
            if expected == 403:
                assert json.loads(raw)["code"] == "permission_denied"
            body = b"{}"
            status, _, _ = run(
                request(
                    g.url,
                    path=f"{SERVICE}ListModels",
                    data=body,
                    headers=connect_headers("application/json", Host=host),
                )
            )
            assert status == expected, host
        assert any("http=403 code=permission_denied" in r.message for r in caplog.records)


def test_cross_origin_requests_are_refused_unless_allowed(fake):
    allowed = "http://localhost:5173"
    with gateway_for(fake, allow_origins=[allowed]) as g:
        own = f"http://127.0.0.1:{g.port}"
        url, body = f"{g.url}{SERVICE}ListModels", b"{}"

        def post(origin, content_type="application/json"):
            return run(request(url, path="", data=body, headers=connect_headers(content_type, Origin=origin)))

        assert post(own)[0] == 200
        status, headers, _ = post(allowed)
        assert (
            status == 200
            and headers["Access-Control-Allow-Origin"] == allowed
            and "Origin" in headers["Vary"]
        )
        for other in ("http://localhost:8001", f"http://localhost:{g.port}", "https://evil.example", "null"):
            status, headers, raw = post(other)
            assert (status, json.loads(raw)["code"]) == (403, "permission_denied"), other
            assert "Access-Control-Allow-Origin" not in headers
        # The no-cors form of the attack: a "simple" request a page may send without asking first.
        assert post("http://localhost:8001", "text/plain")[0] == 403

        def preflight(origin, **extra):
            headers = {"Origin": origin, "Access-Control-Request-Method": "POST", **extra}
            return run(request(url, "OPTIONS", "", headers=headers))

        status, headers, _ = preflight(
            allowed,
            **{"Access-Control-Request-Headers": "content-type,connect-protocol-version,connect-timeout-ms"},
        )
        assert status == 204 and headers["Access-Control-Allow-Origin"] == allowed
        allow = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
        assert {"content-type", "connect-protocol-version", "connect-timeout-ms", "authorization"} <= allow
        assert (
            "POST" in headers["Access-Control-Allow-Methods"] and int(headers["Access-Control-Max-Age"]) > 0
        )
        status, headers, _ = preflight(allowed, **{"Access-Control-Request-Private-Network": "true"})
        assert headers["Access-Control-Allow-Private-Network"] == "true"
        status, headers, _ = preflight("http://localhost:8001")
        assert status == 403 and "Access-Control-Allow-Origin" not in headers


def test_no_token_means_loopback_only(fake):
    with pytest.raises(ValueError, match="without a token"):
        Gateway(fake.address, host="0.0.0.0", port=0)
    Gateway(fake.address, host="0.0.0.0", port=0, token="t").stop()  # with a token: fine
    Gateway(fake.address, host="0.0.0.0", port=0, allow_unauthenticated=True).stop()


def test_aiohttp_is_needed_only_by_the_http_side(tmp_path):
    """Without aiohttp: the package, the gRPC side and the benchmarks import; a Gateway, and
    serve with an HTTP port, say what to install (before loading any model)."""
    code = (
        "import sys\n"
        "sys.modules['aiohttp'] = None  # as if it were not installed\n"
        "import attnscope, attnscope.service.server, attnscope.service.gateway, attnscope.benchmarks.web\n"
        "from attnscope.service.gateway import Gateway\n"
        "try:\n"
        "    Gateway('127.0.0.1:1', port=0)\n"
        "except ImportError as exc:\n"
        "    print('gateway:', exc)\n"
        "from attnscope.cli import main\n"
        "print('serve:', main(['serve', '--model', 'no/such/model', '--http-port', '0', '--grpc-port', '0']))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gateway: the viewer's HTTP side needs aiohttp" in out.stdout
    assert "serve: 2" in out.stdout and "needs aiohttp" in out.stderr and "no/such/model" not in out.stderr


# ---- TLS ---------------------------------------------------------------------------------------------
def test_https_and_a_tls_channel_to_grpc(certificate):
    cert, key = certificate
    server = FakeServer(tls=(cert.read_bytes(), key.read_bytes()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    trust = ssl.create_default_context(cafile=str(cert))
    try:
        with gateway_for(
            server,
            token="tok",
            ssl_context=context,
            grpc_credentials=grpc.ssl_channel_credentials(root_certificates=cert.read_bytes()),
        ) as g:
            assert g.url.startswith("https://") and g.viewer_url == f"{g.url}/?token=tok"
            status, headers, _ = run(request(g.url, "GET", "/?token=tok", ssl=trust, allow_redirects=False))
            assert status == 303 and "Secure" in headers["Set-Cookie"]
            headers = connect_headers("application/json", Authorization="Bearer tok")
            status, _, raw = run(
                request(g.url, path=f"{SERVICE}ListModels", data=b"{}", headers=headers, ssl=trust)
            )
            assert status == 200 and json.loads(raw)["models"][0]["name"] == "fake"  # over gRPC with TLS
            with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served there
                run(request(g.url.replace("https://", "http://"), "GET", "/"))
    finally:
        server.stop()
