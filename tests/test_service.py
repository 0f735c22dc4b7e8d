"""The gRPC service end to end: a real server on a loopback port, real channels, the Client."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

# The GPU machine has grpcio but not the health/reflection packages: skip there, run everywhere else.
pytest.importorskip("grpc_health")
pytest.importorskip("grpc_reflection")
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from attnscope import HEAD_STAT_NAMES, Client, Extractor, proto, views
from attnscope.service import AttentionCore, Limits
from attnscope.service.background import BackgroundServer
from attnscope.service.errors import status_of
from attnscope.service.tensors import PIECE_BYTES

from tiny_models import build, random_text, word_tokenizer
from waiting import wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def extractor():
    return Extractor(build("llama", dtype=torch.float32), word_tokenizer())


@pytest.fixture(scope="module")
def clock():
    return FakeClock()


@pytest.fixture(scope="module")
def server(extractor, clock):
    limits = Limits(max_text_chars=40_000, max_tokens=4000, max_pooled_size=512, trace_ttl_s=60)
    running = BackgroundServer(AttentionCore({"tiny": extractor}, limits, clock=clock))
    yield running
    running.stop()


@pytest.fixture
def client(server):
    with Client(server.address, timeout=120) as c:
        yield c


def test_extract_equals_the_python_api(client, extractor, rng):
    text = random_text(30, rng)
    requested = [
        views.pooled(7, layers=[1], heads=[0, 3]),
        views.head_stats(),
        views.received(),
        views.tile(1, 2, queries=(3, 20), keys=(0, 15)),
        views.topk(0, 1, 4, queries=(10, 25)),
        views.neuron(1, 3, 17, keys=(2, 30)),
    ]
    got = client.extract(text, model="tiny", views=requested)
    tr = extractor.trace(text)
    (kind,) = got.info.kinds
    assert got.tokens == tr.tokens and kind.query_len == 32 and kind.kind == proto.Kind["KIND_DECODER"]
    assert list(kind.key_tokens) == tr.tokens and (kind.num_layers, kind.num_heads) == (2, 4)
    assert (kind.num_key_heads, kind.head_dim) == (tr.num_key_heads(), tr.head_dim()) == (2, 16)
    # Unnamed views get the server's names, listed per view in the manifest.
    assert [list(v.tensors) for v in got.manifest.views] == [
        ["pooled"],
        [f"head_stats/{n}" for n in HEAD_STAT_NAMES],
        ["received"],
        ["tile/3"],
        ["topk/4/indices", "topk/4/probs"],
        [f"neuron/5/{p}" for p in ("q", "k", "q_times_k", "scores", "probs")],
    ]
    assert set(got.view(3)) == {"tile/3"}
    np.testing.assert_allclose(got["pooled"], tr.pooled(7, layers=[1], heads=[0, 3]).numpy(), atol=1e-6)
    for name, values in tr.head_stats().items():
        np.testing.assert_allclose(got[f"head_stats/{name}"], values.numpy(), atol=1e-6)
    np.testing.assert_allclose(got["received"], tr.received().numpy(), atol=1e-5)
    np.testing.assert_allclose(
        got["tile/3"], tr.attention(1, 2, slice(3, 20), slice(0, 15)).numpy(), atol=1e-6
    )
    idx, probs = tr.topk(4, 0, 1, slice(10, 25))
    np.testing.assert_array_equal(got["topk/4/indices"], idx.numpy())
    np.testing.assert_allclose(got["topk/4/probs"], probs.numpy(), atol=1e-6)
    view = tr.neuron(1, 3, 17, slice(2, 30))
    for part, values in zip(view._fields, view, strict=True):
        np.testing.assert_allclose(got[f"neuron/5/{part}"], values.numpy(), atol=1e-6)


def test_extract_without_views_returns_stats_and_pooled(client, rng):
    got = client.extract(random_text(9, rng))
    assert set(got.tensors) == {f"head_stats/{n}" for n in HEAD_STAT_NAMES} | {"pooled"}
    assert got["pooled"].shape == (2, 4, 11, 11) and got["head_stats/entropy"].shape == (2, 4)
    np.testing.assert_allclose(got["pooled"].sum(-1), 1.0, atol=1e-5)


def test_trace_rpcs_zoom_without_rerunning(client, extractor, rng):
    text = random_text(40, rng)
    info = client.create_trace(text)
    assert info.trace_id and info.kinds[0].query_len == 42
    calls_before = _forward_count(extractor)
    zoom = client.views(
        info.trace_id, [views.tile(1, 0, queries=(30, 42), keys=(20, 42)), views.pooled(4, kind="")]
    )
    assert _forward_count(extractor) == calls_before, "GetViews must not run the model"
    tr = extractor.trace(text)
    np.testing.assert_allclose(
        zoom["tile/0"], tr.attention(1, 0, slice(30, 42), slice(20, 42)).numpy(), atol=1e-6
    )
    assert zoom.info.trace_id == info.trace_id and zoom.tokens == tr.tokens
    assert client.delete_trace(info.trace_id) is True
    assert client.delete_trace(info.trace_id) is False
    with pytest.raises(grpc.RpcError) as err:
        client.views(info.trace_id, [views.head_stats()])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _forward_count(extractor) -> int:
    return getattr(extractor.model, "_attnscope_test_forwards", 0)


@pytest.fixture(autouse=True)
def count_forwards(extractor):
    def hook(module, args, kwargs):
        module._attnscope_test_forwards = getattr(module, "_attnscope_test_forwards", 0) + 1

    handle = extractor.model.register_forward_pre_hook(hook, with_kwargs=True)
    yield
    handle.remove()


def test_kept_traces_expire(client, clock, rng):
    info = client.create_trace(random_text(5, rng))
    client.views(info.trace_id, [views.head_stats()])
    clock.now += 61
    with pytest.raises(grpc.RpcError) as err:
        client.views(info.trace_id, [views.head_stats()])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "expired" in err.value.details()


def test_a_result_over_32_mib_streams_in_pieces(server, client, extractor, rng):
    text = random_text(2998, rng)  # 3,000 tokens: a full tile is 3000² float32 = 34.3 MiB
    request = [views.tile(1, 3)]
    stream = client._call(
        "Extract", __import__("attnscope").proto.ExtractRequest(text=text, views=request), 300
    )
    sizes = [m.ByteSize() for m in stream]
    assert sum(sizes) > 32 * 2**20
    tensor_messages = sizes[2:]  # the first messages are the TraceInfo and the manifest
    assert max(tensor_messages) <= PIECE_BYTES + 4096  # a piece plus its name, shape and offsets
    assert min(tensor_messages[:-1]) >= 256 * 1024, "pieces between 256 KiB and 1 MiB, but the last"
    got = client.extract(text, views=request)
    tr = extractor.trace(text)
    rows = [0, 1, 1500, 2999]
    np.testing.assert_allclose(
        got["tile/0"][rows], tr.attention(1, 3, slice(None), slice(None)).numpy()[rows], atol=1e-6
    )


BAD = [
    ("empty text", dict(text=""), grpc.StatusCode.INVALID_ARGUMENT, "text is empty"),
    ("text over the limit", dict(text="w1 " * 15_000), grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 40,000"),
    ("too many tokens", dict(text="w1 " * 4500), grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 4,000"),
    ("unknown model", dict(text="w1", model="gpt-9"), grpc.StatusCode.NOT_FOUND, "available: tiny"),
    (
        "layer out of range",
        dict(text="w1 w2", views=[views.tile(2, 0)]),
        grpc.StatusCode.OUT_OF_RANGE,
        "layer must be in [0, 2), got 2",
    ),
    (
        "head out of range",
        dict(text="w1 w2", views=[views.topk(0, 9, 1)]),
        grpc.StatusCode.OUT_OF_RANGE,
        "head must be in [0, 4), got 9",
    ),
    (
        "range out of bounds",
        dict(text="w1 w2", views=[views.tile(0, 0, queries=(50, 60))]),
        grpc.StatusCode.OUT_OF_RANGE,
        "selects nothing",
    ),
    ("k of zero", dict(text="w1 w2", views=[views.topk(0, 0, 0)]), grpc.StatusCode.OUT_OF_RANGE, "k must be"),
    (
        "negative pooled size",
        dict(text="w1", views=[views.pooled(-3)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "size must be >= 1",
    ),
    (
        "huge pooled size",
        dict(text="w1", views=[views.pooled(100_000)]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "limit of 512",
    ),
    (
        "unknown kind",
        dict(text="w1", views=[views.head_stats(kind="cross")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "kind must be one of",
    ),
]


@pytest.mark.parametrize(("case", "kwargs", "code", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_precise_statuses(client, case, kwargs, code, message):
    with pytest.raises(grpc.RpcError) as err:
        client.extract(**kwargs)
    assert err.value.code() == code, err.value.details()
    assert message in err.value.details()
    assert _healthy(client.address)
    assert client.extract("w1 w2").tokens == ["[CLS]", "w1", "w2", "[SEP]"]


def test_unknown_trace_id_and_empty_view(client):
    with pytest.raises(grpc.RpcError) as err:
        client.views("0123abcd", [views.head_stats()])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no trace with id" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        client.extract("w1", views=[proto.ViewRequest()])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "names no view" in err.value.details()


def test_deadline_is_honoured_and_the_server_goes_on(client, rng):
    with pytest.raises(grpc.RpcError) as err:
        client.extract(random_text(3000, rng), views=[views.tile(0, 0)], timeout=0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _healthy(client.address)
    assert len(client.extract("w3 w4").tokens) == 4


def test_sixteen_concurrent_clients(server, extractor, rng):
    texts = [random_text(5 + 3 * i, rng) for i in range(16)]
    expected = [extractor.trace(t).pooled(6).numpy() for t in texts]
    results: list = [None] * 16
    errors: list = []

    def worker(i):
        try:
            with Client(server.address, timeout=120) as c:
                results[i] = c.extract(texts[i], views=[views.pooled(6)])["pooled"]
        except Exception as exc:  # collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_health_and_reflection(server):
    assert _healthy(server.address)
    with grpc.insecure_channel(server.address) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "attnscope.v1.AttentionService" in services and "grpc.health.v1.Health" in services


def test_list_models(client):
    (model,) = client.list_models()
    assert model.name == "tiny" and model.is_default and model.num_layers == 2 and model.num_heads == 4


def test_token_is_required_on_every_call(extractor):
    running = BackgroundServer(AttentionCore({"tiny": extractor}), token="s3cret")
    try:
        with Client(running.address, timeout=30) as anonymous:
            with pytest.raises(grpc.RpcError) as err:
                anonymous.extract("w1")
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with Client(running.address, token="wrong", timeout=30) as wrong:
            with pytest.raises(grpc.RpcError) as err:
                wrong.list_models()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with Client(running.address, token="s3cret", timeout=30) as right:
            assert right.extract("w1").tokens == ["[CLS]", "w1", "[SEP]"]
    finally:
        running.stop()


def test_out_of_memory_maps_to_resource_exhausted():
    class OutOfMemoryError(RuntimeError):  # the name torch.cuda.OutOfMemoryError has
        pass

    code, message = status_of(OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "out of memory" in message


def _healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_trace_cache_evicts_least_recently_used_first(extractor, clock):
    from attnscope.service.cache import TraceCache

    traces = [extractor.trace(f"w{i} w{i + 1} w{i + 2}") for i in range(3)]
    size = traces[0].nbytes()
    assert size == 2 * (4 * 5 * 16 + 2 * 5 * 16) * 4  # 2 layers × (Q [4,5,16] + K [2,5,16]) float32
    cache = TraceCache(max_bytes=2 * size, ttl_s=60, clock=clock)
    first, second = cache.put(traces[0], "tiny"), cache.put(traces[1], "tiny")
    cache.get(first)  # first is now the most recently used
    third = cache.put(traces[2], "tiny")
    assert len(cache) == 2 and cache.used_bytes == 2 * size
    assert cache.get(first)[0] is traces[0] and cache.get(third)[0] is traces[2]
    with pytest.raises(Exception, match="no trace with id"):
        cache.get(second)


def test_a_busy_server_refuses_instead_of_queueing(extractor, rng):
    running = BackgroundServer(AttentionCore({"tiny": extractor}), max_pending=1)
    slow_text = random_text(2500, rng)
    slow = [views.topk(layer, head, k) for k in (64, 63) for layer in range(2) for head in range(4)]
    outcome: dict = {}

    def first_call():
        with Client(running.address, timeout=300) as c:
            outcome["first"] = c.extract(slow_text, views=slow)

    try:
        caller = threading.Thread(target=first_call)
        caller.start()
        wait_until(lambda: running.server.servicer._pending == 1, "the first call to be admitted")
        with Client(running.address, timeout=60) as c, pytest.raises(grpc.RpcError) as err:
            c.extract("w1 w2")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "server busy" in err.value.details()
        caller.join(300)
        assert outcome["first"]["topk/0/indices"].shape == (2502, 64)
        with Client(running.address, timeout=60) as c:
            assert c.extract("w1 w2").tokens == ["[CLS]", "w1", "w2", "[SEP]"]
    finally:
        running.stop()
