"""Bounded work and bad input on a real server: each test is a probe that once went wrong."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

pytest.importorskip("grpc_health")
import torch

from attnscope import Client, Extractor, proto, views
from attnscope.cli import _token
from attnscope.kernels import digest
from attnscope.service import AttentionCore, Limits
from attnscope.service.background import BackgroundServer
from attnscope.service.server import Server, is_loopback

from tiny_models import build, random_text, word_tokenizer
from waiting import wait_until

#: Seconds a call may overrun its deadline or cancellation before its worker is free again: one
#: slowed chunk (below) plus scheduling on a loaded 2-core machine.
MARGIN = 3.0


@pytest.fixture(scope="module")
def extractor():
    return Extractor(build("llama", dtype=torch.float32), word_tokenizer())


@pytest.fixture(scope="module")
def server(extractor):
    running = BackgroundServer(AttentionCore({"tiny": extractor}, Limits(max_tokens=4000)), max_pending=2)
    yield running
    running.stop()


@pytest.fixture
def client(server):
    with Client(server.address, timeout=120) as c:
        yield c


@pytest.fixture
def slow_chunks(monkeypatch):
    """Call it to make every chunk of the torch digest take 50 ms, in chunks of a few rows: one
    pooled view of a 600-token trace then takes minutes."""
    from attnscope.kernels import scores

    original = digest.masked_logits

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return original(*args, **kwargs)

    def enable() -> None:
        monkeypatch.setattr(scores, "SCORE_BUDGET", 4 * 7 * 600)
        monkeypatch.setattr(digest, "masked_logits", slow)

    return enable


def _quick_call_time(client) -> float:
    started = time.monotonic()
    assert client.extract("w1 w2", views=[views.tile(0, 0, name="t")])["t"].shape == (4, 4)
    return time.monotonic() - started


def test_repeated_selections_and_views_are_refused(client):
    for requested, message in [
        ([views.pooled(1, layers=[0] * 3000)], "selection layers lists 0 3000 times"),
        ([views.received(heads=[1, 2, 1])], "selection heads lists 1 2 times"),
        ([views.pooled(4, name="a"), views.pooled(4, name="b")], "views 0 and 1 ask for the same thing"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            client.extract("w1 w2 w3", views=requested)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


def test_an_expired_call_frees_its_worker_inside_a_view(client, slow_chunks, rng):
    info = client.create_trace(random_text(600, rng))  # row statistics are computed before slowing
    slow_chunks()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        client.views(info.trace_id, [views.pooled(8, name="slow")], timeout=1.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The one view would take minutes; the worker must give it up at its next chunk.
    assert _quick_call_time(client) < MARGIN, "the worker kept computing the expired view"
    assert time.monotonic() - started < 1.5 + 2 * MARGIN


def test_a_cancelled_call_frees_its_worker(server, client, slow_chunks, rng):
    info = client.create_trace(random_text(600, rng))
    slow_chunks()
    stream = client._call(
        "GetViews", proto.GetViewsRequest(trace_id=info.trace_id, views=[views.pooled(8)]), 300
    )
    assert next(stream).WhichOneof("piece") == "info"  # the call is now computing its view
    stream.cancel()
    wait_until(lambda: server.server.servicer._pending == 0, "the cancelled call to end", timeout=MARGIN * 4)
    assert _quick_call_time(client) < MARGIN, "the worker kept computing the cancelled view"


def test_calls_still_streaming_count_against_max_pending(server, client, rng):
    info = client.create_trace(random_text(1500, rng))
    big = [views.tile(layer, head, name=f"t{layer}.{head}") for layer in range(2) for head in range(4)]
    readers = [
        client._call("GetViews", proto.GetViewsRequest(trace_id=info.trace_id, views=big), 300)
        for _ in range(2)
    ]
    for stream in readers:  # both admitted, each has sent its first message and waits to be read
        assert next(stream).WhichOneof("piece") == "info"
    with pytest.raises(grpc.RpcError) as err:
        client.extract("w1 w2")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "server busy" in err.value.details()
    for stream in readers:
        assert sum(1 for m in stream if m.WhichOneof("piece") == "tensor") >= 8
    wait_until(lambda: server.server.servicer._pending == 0, "the readers' calls to end")
    assert client.extract("w1 w2").tokens == ["[CLS]", "w1", "w2", "[SEP]"]


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xff\xff", b"\x12\x02\xff\xfe"],  # not a message; field 2 (text) with invalid UTF-8
    ids=["garbage", "invalid-utf8"],
)
def test_malformed_protobuf_is_an_invalid_argument(server, client, raw):
    with grpc.insecure_channel(server.address) as chan:
        call = chan.unary_stream(proto.method_path("Extract"))
        with pytest.raises(grpc.RpcError) as err:
            list(call(raw, timeout=30))
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "not a valid ExtractRequest" in err.value.details()
    )
    assert _quick_call_time(client) < 30


@pytest.mark.parametrize(
    ("kwargs", "code", "message"),
    [
        (dict(text=" \n\t "), grpc.StatusCode.INVALID_ARGUMENT, "only whitespace"),
        (
            dict(text="w1", views=[views.topk(0, 0, 2**31 - 1)]),
            grpc.StatusCode.OUT_OF_RANGE,
            "k must be in [1, 3]",
        ),
        (dict(text="w1", model="m" * 100_000), grpc.StatusCode.NOT_FOUND, "is not served here"),
        (
            dict(text="w1", views=[views.tile(0, 0, name="n" * 5000)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "must be 1-128",
        ),
    ],
    ids=["whitespace", "huge-k", "long-model-name", "long-view-name"],
)
def test_bad_input_gets_its_status_and_a_short_message(client, kwargs, code, message):
    with pytest.raises(grpc.RpcError) as err:
        client.extract(**kwargs)
    assert err.value.code() == code and message in err.value.details()
    assert len(err.value.details()) < 400, "messages never echo unbounded input"


def test_system_exit_in_model_code_does_not_stop_the_server(client, monkeypatch):
    def exits(self, *args, **kwargs):
        raise SystemExit(3)

    monkeypatch.setattr(Extractor, "trace", exits)
    with pytest.raises(grpc.RpcError) as err:
        client.extract("w1 w2")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    monkeypatch.undo()
    assert _quick_call_time(client) < 30


def test_binding_beyond_loopback_needs_a_token(extractor):
    core = AttentionCore({"tiny": extractor})
    with pytest.raises(ValueError, match=r"without a token.*--allow-unauthenticated"):
        Server(core, host="0.0.0.0", port=0)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")


def test_the_token_comes_from_a_file_the_environment_or_the_flag(tmp_path, monkeypatch):
    import argparse

    monkeypatch.delenv("ATTNSCOPE_TOKEN", raising=False)
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert _token(argparse.Namespace(token="flag", token_file=str(path))) == "from-file"
    monkeypatch.setenv("ATTNSCOPE_TOKEN", "from-env")
    assert _token(argparse.Namespace(token="flag", token_file=None)) == "from-env"
    monkeypatch.delenv("ATTNSCOPE_TOKEN")
    assert _token(argparse.Namespace(token="flag", token_file=None)) == "flag"
    path.write_text("  \n")
    with pytest.raises(ValueError, match="is empty"):
        _token(argparse.Namespace(token=None, token_file=str(path)))


def test_tls_serves_clients_that_trust_the_certificate(extractor, certificate):
    cert, key = certificate
    running = BackgroundServer(
        AttentionCore({"tiny": extractor}), warm_up=False, tls=(cert.read_bytes(), key.read_bytes())
    )
    try:
        with Client(running.address, timeout=60, root_certificates=cert.read_bytes()) as secure:
            assert secure.extract("w1 w2").tokens == ["[CLS]", "w1", "w2", "[SEP]"]
        with Client(running.address, timeout=10) as plain, pytest.raises(grpc.RpcError) as err:
            plain.list_models()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()


def test_threads_are_not_left_behind(server, client):
    before = threading.active_count()
    for _ in range(5):
        _quick_call_time(client)
    assert threading.active_count() <= before + 2


def test_an_error_while_streaming_gets_its_status_and_its_log_line(client, caplog):
    caplog.set_level("INFO", logger="attnscope.service")
    stream = client._call(
        "Extract",
        proto.ExtractRequest(
            text="w1 w2 w3", views=[views.pooled(2, name="a"), views.tile(0, 0, queries=(50, 60))]
        ),
        60,
    )
    received = []
    with pytest.raises(grpc.RpcError) as err:
        for message in stream:
            received.append(message.WhichOneof("piece"))
    assert received[:2] == ["info", "manifest"] and "tensor" in received  # the first view had streamed
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE and "queries" in err.value.details()
    line = wait_until(
        lambda: next((r.getMessage() for r in caplog.records if r.getMessage().startswith("Extract")), None),
        "the call's log line",
    )
    assert "status=OUT_OF_RANGE" in line
