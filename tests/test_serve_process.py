"""`attnscope serve` as a user runs it: a subprocess, its printed addresses, the HTTP side (Connect
calls, the token flow, its flags), `attnscope extract`, and a graceful stop on SIGTERM while a
call is in flight."""

from __future__ import annotations

import base64
import http.client
import json
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import grpc
import numpy as np
import pytest

# The GPU machine has grpcio but not the health/reflection packages: skip there, run everywhere else.
pytest.importorskip("grpc_health")
pytest.importorskip("grpc_reflection")
import torch

from attnscope import Client, proto, views
from attnscope.cli import main as cli_main
from attnscope.service.stubs import channel, stubs
from attnscope.service.tensors import assemble

from tiny_models import build, random_text, word_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    build("llama", dtype=torch.float32, attn="sdpa").save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


def serve_command(model_dir, http_port: str, *extra) -> list[str]:
    """`attnscope serve` on the tiny checkpoint, gRPC on any free port."""
    return [
        sys.executable,
        "-m",
        "attnscope.cli",
        "serve",
        "--model",
        str(model_dir),
        "--grpc-port",
        "0",
        "--http-port",
        http_port,
        *extra,
    ]


def start_serve(model_dir, *extra):
    proc = subprocess.Popen(
        serve_command(model_dir, "0", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    grpc_address = http_url = None
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (grpc_address and http_url):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if m := re.search(r"gRPC on (\S+)", line):
            grpc_address = m.group(1)
        if m := re.search(r"viewer on (http://\S+)", line):
            http_url = m.group(1)
    if not (grpc_address and http_url):
        proc.kill()
        raise AssertionError("serve did not print its addresses:\n" + "".join(lines))
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, grpc_address, http_url, lines


@pytest.fixture(scope="module")
def served(model_dir):
    proc, address, url, _lines = start_serve(model_dir)
    yield address, url, model_dir.name  # served by its folder name, never a path
    proc.terminate()
    proc.wait(30)


SERVICE = "/attnscope.v1.AttentionService/"


def envelopes(raw: bytes) -> list[tuple[int, dict]]:
    """A Connect stream's (flags, JSON message) pairs."""
    out, at = [], 0
    while at < len(raw):
        flags, length = struct.unpack_from(">BI", raw, at)
        out.append((flags, json.loads(raw[at + 5 : at + 5 + length])))
        at += 5 + length
    return out


def post(url: str, method: str, body: dict, headers: dict | None = None) -> tuple[int, object]:
    """A Connect call with JSON: (HTTP status, the answer's JSON), where a stream's answer is its
    list of (flags, message), the last one flagged 0x02 (end of stream)."""
    streaming = (
        method in proto.SERVICE.methods_by_name and proto.SERVICE.methods_by_name[method].server_streaming
    )
    data = json.dumps(body).encode()
    if streaming:
        data = struct.pack(">BI", 0, len(data)) + data
    request = urllib.request.Request(
        f"{url}{SERVICE}{method}",
        data=data,
        method="POST",
        headers={
            "Content-Type": "application/connect+json" if streaming else "application/json",
            "Connect-Protocol-Version": "1",
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            raw = reply.read()
            return reply.status, envelopes(raw) if streaming else json.loads(raw)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_gateway_serves_the_page_and_the_service(served):
    address, url, model = served
    with urllib.request.urlopen(f"{url}/", timeout=30) as reply:
        assert reply.status == 200 and b"<title>attnscope</title>" in reply.read()
    with urllib.request.urlopen(f"{url}/main.js", timeout=30) as reply:
        assert reply.headers["Content-Type"].startswith("text/javascript")
    for private in ("standalone.py", "../service/server.py", "%2e%2e/pyproject.toml"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}/{private}", timeout=30)
        assert err.value.code == 404, private
    status, models = post(url, "ListModels", {})
    assert status == 200 and models["models"][0]["name"] == model
    status, stream = post(url, "Extract", {"text": "w1 w2 w3", "views": [{"headStats": {}}]})
    assert status == 200 and [flags for flags, _ in stream] == [0] * (len(stream) - 1) + [2]
    assert stream[-1][1] == {}  # the end of the stream: no error
    messages = [m for _, m in stream[:-1]]
    assert messages[0]["info"]["kinds"][0]["queryTokens"] == [
        "[CLS]",
        "w1",
        "w2",
        "w3",
        "[SEP]",
    ]
    assert messages[1]["manifest"]["views"][0]["name"] == "head_stats"
    assert {m["tensor"]["name"] for m in messages[2:]} >= {"head_stats/entropy", "head_stats/previous_token"}
    with Client(address) as client:  # the same numbers as the gRPC client gets
        direct = client.extract("w1 w2 w3", views=[views.head_stats()])
    piece = next(m["tensor"] for m in messages[2:] if m["tensor"]["name"] == "head_stats/entropy")
    values = np.frombuffer(base64.b64decode(piece["data"]), dtype="<f4").reshape(2, 4)
    np.testing.assert_array_equal(values, direct["head_stats/entropy"])
    old = urllib.request.Request(
        f"{url}/api/ListModels", data=b"{}", method="POST", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(old, timeout=30)
    assert err.value.code == 404, "the old /api/<Method> JSON gateway is gone"


@pytest.mark.parametrize(
    ("method", "body", "status", "code"),
    [
        # A stream's errors end the stream (HTTP 200, the code in its last envelope) ...
        ("Extract", {"text": "w1", "model": "nope"}, 200, "not_found"),
        ("Extract", {"text": "w1", "views": [{"tile": {"layer": 7}}]}, 200, "out_of_range"),
        ("Extract", {"text": ""}, 200, "invalid_argument"),
        # ... unless the request itself could not be read; unary errors have the spec's status.
        ("Extract", {"text": 5, "bogus": 1}, 400, "invalid_argument"),
        ("CreateTrace", {"text": "w1", "model": "nope"}, 404, "not_found"),
        ("CreateTrace", {"text": " "}, 400, "invalid_argument"),
        ("Nope", {}, 404, "not_found"),
    ],
)
def test_gateway_errors_are_connect_errors_with_the_grpc_code(served, method, body, status, code):
    got_status, reply = post(served[1], method, body)
    if isinstance(reply, list):  # a stream: its end says how it went
        flags, reply = reply[-1]
        assert flags == 2
        reply = reply["error"]
    assert (got_status, reply["code"]) == (status, code) and reply["message"]


def test_cli_extract_writes_npz(served, tmp_path):
    out = tmp_path / "result.npz"
    assert (
        cli_main(
            [
                "extract",
                "w5 w6 w7 w8",
                "--server",
                served[0],
                "--out",
                str(out),
                "--pooled-size",
                "3",
                "--received",
            ]
        )
        == 0
    )
    data = np.load(out)
    assert list(data["tokens"]) == ["[CLS]", "w5", "w6", "w7", "w8", "[SEP]"]
    assert data["pooled"].shape == (2, 4, 3, 3) and data["received"].shape == (2, 4, 6)
    assert data["head_stats/entropy"].shape == (2, 4)


def test_sigterm_lets_the_call_in_flight_finish(model_dir):
    proc, address, _, lines = start_serve(model_dir, "--grace", "60")
    text = random_text(2500, torch.Generator().manual_seed(0))
    # About 2 s of work on the 2-core machines: long enough to be in flight when SIGTERM arrives.
    requested = [views.topk(layer, head, k) for k in (64, 63) for layer in range(2) for head in range(4)]
    chan = channel(address)
    stream = stubs(chan)["Extract"].call(proto.ExtractRequest(text=text, views=requested), timeout=300)
    # The call is in flight once its first message (the trace's description) has arrived: the
    # views are still being computed and streamed. SIGTERM then must let it finish.
    first = next(stream)
    assert first.WhichOneof("piece") == "info"
    proc.send_signal(signal.SIGTERM)
    rest = list(stream)
    chan.close()
    assert proc.wait(120) == 0
    assert rest[0].WhichOneof("piece") == "manifest"
    result = assemble(m.tensor for m in rest[1:])
    assert result["topk/7/indices"].shape == (2502, 64) and len(first.info.kinds[0].query_tokens) == 2502
    assert (result["topk/7/probs"][:, 0] > 0).all()
    assert any("stopped" in line for line in lines)


def test_grace_bounds_shutdown(model_dir):
    """After --grace, work still running is abandoned and the process exits (it once took 38 s)."""
    proc, address, _, lines = start_serve(model_dir, "--grace", "1")
    text = random_text(2500, torch.Generator().manual_seed(1))
    requested = [views.pooled(size, name=f"p{size}") for size in range(1, 201)]  # minutes of work here
    chan = channel(address)
    stream = stubs(chan)["Extract"].call(proto.ExtractRequest(text=text, views=requested), timeout=600)
    assert next(stream).WhichOneof("piece") == "info"  # traced; the views are being computed
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    received = 0
    with pytest.raises(grpc.RpcError):  # cut off: the server stopped before the call could finish
        for message in stream:
            received += message.WhichOneof("piece") == "tensor"
    chan.close()
    assert proc.wait(60) == 0
    took = time.monotonic() - signalled
    # grace (1 s) + the workers' settle time (5 s) + one chunk and process exit on a loaded machine.
    assert took < 15, f"exited {took:.1f} s after SIGTERM with --grace 1"
    assert received < len(requested)
    assert any("stopped" in line for line in lines)


def test_a_taken_port_is_reported_in_words(model_dir):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            serve_command(model_dir, str(port)),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2
    assert (
        f"could not listen on 127.0.0.1:{port} for the viewer" in proc.stderr and "--http-port" in proc.stderr
    )


def _get(url: str, path: str, headers: dict | None = None, method: str = "GET"):
    """(status, headers, body) of one request, redirects not followed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, reply.headers, reply.read()
    finally:
        conn.close()


def test_serve_with_a_token_prints_the_viewer_address_carrying_it(model_dir, tmp_path):
    """The token comes from a file (not the command line, where ps shows it); serve prints the one
    address that opens the viewer; --allow-host and --allow-origin add a name and a page."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-Token\n")
    proc, address, url, _lines = start_serve(
        model_dir,
        "--token-file",
        str(token_file),
        "--allow-host",
        "attnscope.test",
        "--allow-origin",
        "http://localhost:9999",
    )
    try:
        parts = urlsplit(url)
        assert parts.path == "/" and parts.query == "token=s3cret-Token", url
        base = f"{parts.scheme}://{parts.netloc}"
        status, _, body = _get(base, "/")
        assert status == 401 and b"needs its token" in body
        status, headers, _ = _get(base, "/?token=wrong")
        assert status == 401 and "Set-Cookie" not in headers
        status, headers, _ = _get(base, "/?token=s3cret-Token&text=w1")
        assert status == 303 and headers["Location"] == "/?text=w1"
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "s3cret" not in cookie
        jar = {"Cookie": cookie.split(";", 1)[0]}
        status, _, body = _get(base, "/", jar)
        assert status == 200 and b"<title>attnscope</title>" in body
        assert post(base, "ListModels", {})[0] == 401
        status, models = post(base, "ListModels", {}, jar)
        assert status == 200 and models["models"][0]["name"] == model_dir.name
        bearer = {"Authorization": "Bearer s3cret-Token"}
        assert post(base, "ListModels", {}, bearer)[0] == 200
        assert _get(base, "/", {**jar, "Host": "attnscope.test"})[0] == 200
        assert _get(base, "/", {**jar, "Host": "evil.example"})[0] == 403
        allowed = {"Origin": "http://localhost:9999", "Access-Control-Request-Method": "POST"}
        status, headers, _ = _get(base, f"{SERVICE}ListModels", allowed, method="OPTIONS")
        assert status == 204 and headers["Access-Control-Allow-Origin"] == "http://localhost:9999"
        other = {**allowed, "Origin": "http://localhost:9998"}
        assert _get(base, f"{SERVICE}ListModels", other, method="OPTIONS")[0] == 403
        with Client(address, token="s3cret-Token") as client:  # the gRPC side wants it too
            assert client.list_models()
    finally:
        proc.terminate()
        proc.wait(30)


def test_viewer_only_serve_reaches_a_tls_grpc_server(certificate):
    """`serve --grpc HOST:PORT --grpc-ca CA` backs the viewer with a remote server that speaks TLS."""
    from attnscope import Extractor
    from attnscope.service import AttentionCore
    from attnscope.service.background import BackgroundServer

    cert, key = certificate
    core = AttentionCore({"tiny": Extractor(build("llama", dtype=torch.float32), word_tokenizer())})
    remote = BackgroundServer(core, warm_up=False, tls=(cert.read_bytes(), key.read_bytes()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "attnscope.cli", "serve", "--grpc", remote.address, "--grpc-ca", str(cert),
         "--http-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = None
        for line in proc.stdout:
            if m := re.search(r"viewer on (http://[0-9.:]+)", line):
                url = m.group(1)
                break
        assert url, "serve did not print the viewer's address"
        status, models = post(url, "ListModels", {})
        assert status == 200 and models["models"][0]["name"] == "tiny"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        remote.stop()


def test_image_limits_from_the_command_line_reach_the_server(model_dir):
    proc, _address, url, _lines = start_serve(
        model_dir, "--max-image-mb", "0.5", "--max-image-pixels", "1000"
    )
    try:
        status, info = post(url, "GetServerInfo", {})
        assert status == 200
        limits = info["limits"]  # int64 fields are strings in proto JSON
        assert int(limits["maxImageBytes"]) == 2**19 and int(limits["maxImagePixels"]) == 1000
    finally:
        proc.terminate()
        proc.wait(30)
