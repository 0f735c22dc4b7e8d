"""The service's naming rule, its streaming, its workers and its cheap calls, on a real server."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

pytest.importorskip("grpc_health")
import torch

from attnscope import HEAD_STAT_NAMES, Client, Extractor, Trace, proto, views
from attnscope.service import AttentionCore, Limits
from attnscope.service.background import BackgroundServer
from attnscope.service.errors import status_of
from attnscope.service.stubs import channel, stubs

from tiny_models import build, random_text, word_tokenizer
from waiting import wait_until


@pytest.fixture(scope="module")
def models():
    return {
        "a": Extractor(build("llama", dtype=torch.float32), word_tokenizer()),
        "b": Extractor(build("gpt2", dtype=torch.float32), word_tokenizer()),
    }


@pytest.fixture(scope="module")
def server(models):
    running = BackgroundServer(AttentionCore(models, Limits(max_tokens=4000)), workers="model")
    yield running
    running.stop()


@pytest.fixture
def client(server):
    with Client(server.address, timeout=300) as c:
        yield c


def test_requested_names_name_the_tensors(client, rng):
    got = client.extract(
        random_text(12, rng),
        views=[
            views.tile(0, 1, name="zoom"),
            views.neuron(1, 2, 5, name="n"),
            views.head_stats(name="stats"),
            views.pooled(4),
        ],
    )
    parts = ("q", "k", "q_times_k", "scores", "probs")
    assert set(got.tensors) == (
        {"zoom", "pooled"} | {f"n/{p}" for p in parts} | {f"stats/{s}" for s in HEAD_STAT_NAMES}
    )
    assert [v.name for v in got.manifest.views] == ["zoom", "n", "stats", "pooled"]
    assert [v.index for v in got.manifest.views] == [0, 1, 2, 3]
    dim = got.info.kinds[0].head_dim
    assert got["zoom"].shape == (14, 14) and got.view(1)["n/q_times_k"].shape == (14, dim) and dim > 1


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        ([views.pooled(4), views.pooled(8)], "views 0 and 1 both return a tensor named 'pooled'"),
        (
            [views.tile(0, 0, name="x"), views.tile(0, 1, name="x")],
            "views 0 and 1 both return a tensor named 'x'",
        ),
        ([views.neuron(0, 0, 1, name="x"), views.pooled(4, name="x/q")], "named 'x/q'"),
        ([views.tile(0, 0, name="bad name!")], "must be 1-128 letters"),
    ],
)
def test_colliding_or_malformed_names_are_refused(client, requested, message):
    with pytest.raises(grpc.RpcError) as err:
        client.extract("w1 w2 w3", views=requested)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    assert client.extract("w1 w2", views=[views.tile(0, 0, name="x")])["x"].shape == (4, 4)


def test_views_stream_as_soon_as_each_is_computed(server, client, rng):
    """The first view's tensors arrive long before the last view is computed."""
    info = client.create_trace(random_text(2000, rng), model="a")
    requested = [
        views.topk(layer, head, 64, name=f"top{layer}.{head}") for layer in range(2) for head in range(4)
    ]
    stream = stubs(chan := channel(server.address))["GetViews"].call(
        proto.GetViewsRequest(trace_id=info.trace_id, views=requested), timeout=300
    )
    started = time.perf_counter()
    first_tensor, kinds = None, []
    for message in stream:
        kinds.append(message.WhichOneof("piece"))
        if first_tensor is None and kinds[-1] == "tensor":
            first_tensor = time.perf_counter() - started
    total = time.perf_counter() - started
    chan.close()
    print(f"GetViews of 8 top-k views over 2002 tokens: first tensor {first_tensor:.3f} s, all {total:.3f} s")
    assert kinds[:2] == ["info", "manifest"] and kinds.count("tensor") >= 16
    assert first_tensor < total / 2, (first_tensor, total)


def _thread_of_views(monkeypatch) -> list[str]:
    seen: list[str] = []
    original = Trace.topk

    def spy(self, *args, **kwargs):
        seen.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trace, "topk", spy)
    return seen


def test_get_views_runs_on_the_worker_of_the_traces_model(client, monkeypatch):
    seen = _thread_of_views(monkeypatch)
    trace_b = client.create_trace("w1 w2 w3", model="b")
    client.views(trace_b.trace_id, [views.topk(0, 0, 2)])
    client.extract("w1 w2 w3", model="a", views=[views.topk(0, 0, 2)])
    assert [name.split("_")[0] for name in seen] == ["attnscope-b", "attnscope-a"]


def test_cheap_calls_answer_while_a_model_call_runs(server, client, models, monkeypatch):
    started, release = threading.Event(), threading.Event()
    original = Extractor.trace

    def blocked(self, *args, **kwargs):
        started.set()
        assert release.wait(300), "never released"
        return original(self, *args, **kwargs)

    kept = client.create_trace("w1 w2", model="a")
    monkeypatch.setattr(Extractor, "trace", blocked)
    outcome: dict = {}

    def slow_call():
        with Client(server.address, timeout=300) as c:
            outcome["tokens"] = c.extract("w5 w6", model="a").tokens

    caller = threading.Thread(target=slow_call)
    caller.start()
    try:
        wait_until(started.is_set, "the Extract call to reach the model")
        # With a(n otherwise idle) worker blocked, each of these must answer at once.
        with Client(server.address, timeout=30) as quick:
            assert [m.name for m in quick.list_models()] == ["a", "b"]
            assert quick.server_info().limits.max_tokens == 4000
            assert quick.delete_trace(kept.trace_id) is True
        assert caller.is_alive(), "the model call finished early: the test proved nothing"
    finally:
        release.set()
        caller.join(300)
    assert outcome["tokens"] == ["[CLS]", "w5", "w6", "[SEP]"]


def test_server_info_reports_the_limits_and_statistics(client):
    info = client.server_info()
    assert info.limits.max_tokens == 4000 and info.limits.default_pooled_size == 256
    assert info.limits.max_pending == Limits().max_pending and info.limits.max_result_values == 64 * 2**20
    assert [s.name for s in info.head_stats] == list(HEAD_STAT_NAMES)
    notable = {s.name: s.notable for s in info.head_stats}
    assert notable["entropy"] == proto.Notable["NOTABLE_LOW"]
    assert notable["previous_token"] == proto.Notable["NOTABLE_HIGH"]
    assert all(s.description for s in info.head_stats)
    assert (info.viewer.full_attention_tokens, info.viewer.tile_size) == (256, 512)
    assert [m.name for m in info.models] == ["a", "b"] and info.version


def test_pooled_default_comes_from_the_limits(models):
    core = AttentionCore(models, Limits(default_pooled_size=5))
    from attnscope.service import view_table

    trace = models["a"].trace("w1 w2 w3 w4 w5 w6 w7 w8")
    ((name, pooled),) = view_table.compute(trace, [views.pooled()], core.limits)
    assert name == "pooled" and pooled.shape == (2, 4, 5, 5)


def test_out_of_memory_releases_the_allocators_cache(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    code, message = status_of(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "out of memory" in message
    assert emptied == [True]
