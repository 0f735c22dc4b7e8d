"""The head-analysis views through the real gRPC server: rollout, span_pooled, head_classes, sinks
and a request's Renormalize, each equal to the Python API, and each bad input's status."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

pytest.importorskip("grpc_health")  # as tests/test_service.py: the GPU machine lacks it
import torch
from test_analysis import repeated_text

from attnscope import HEAD_STAT_NAMES, Client, Extractor, proto, views
from attnscope.service import AttentionCore, Limits, view_table
from attnscope.service.background import BackgroundServer

from tiny_models import build, word_tokenizer


@pytest.fixture(scope="module")
def extractors():
    tok = word_tokenizer()
    return {
        "tiny": Extractor(build("llama", dtype=torch.float32), tok),
        "bart": Extractor(build("bart", dtype=torch.float32), tok),
    }


@pytest.fixture(scope="module")
def server(extractors):
    limits = Limits(max_text_chars=4000, max_tokens=400, max_pooled_size=64, max_scores=60_000)
    running = BackgroundServer(AttentionCore(extractors, limits))
    yield running
    running.stop()


@pytest.fixture
def client(server):
    with Client(server.address, timeout=120) as c:
        yield c


@pytest.fixture
def text(rng):
    return repeated_text(rng)


def test_server_info_lists_the_new_statistics(client):
    names = [s.name for s in client.server_info().head_stats]
    assert names == list(HEAD_STAT_NAMES) and {"duplicate_token", "induction"} <= set(names)


def test_new_views_equal_the_python_api(client, extractors, text):
    tr = extractors["tiny"].trace(text)
    n = tr.seq_len
    spans = [(5, 12), (0, 5), (12, n)]
    got = client.extract(
        text,
        model="tiny",
        views=[
            views.rollout([n - 1, 4], 0.3, heads=[1, 2], name="roll"),
            views.rollout([2], layers=[1], name="roll1"),
            views.span_pooled(spans, layers=[1], heads=[0, 3], name="spans"),
            views.span_pooled([(0, 4), (4, 0)]),  # stop 0 = to the end
            views.head_classes(),
            views.head_stats(),
            views.sinks(0.1),
        ],
    )
    assert [list(v.tensors) for v in got.manifest.views] == [
        ["roll"],
        ["roll1"],
        ["spans"],
        ["span_pooled/3"],
        ["head_classes"],
        [f"head_stats/{name}" for name in HEAD_STAT_NAMES],
        ["sinks/positions", "sinks/shares"],
    ]
    np.testing.assert_allclose(got["roll"], tr.rollout([n - 1, 4], 0.3, heads=[1, 2]).numpy(), atol=1e-6)
    np.testing.assert_allclose(got["roll1"], tr.rollout([2], layers=[1]).numpy(), atol=1e-6)
    np.testing.assert_allclose(
        got["spans"], tr.span_pooled(spans, layers=[1], heads=[0, 3]).numpy(), atol=1e-6
    )
    np.testing.assert_allclose(got["span_pooled/3"], tr.span_pooled([(0, 4), (4, n)]).numpy(), atol=1e-6)
    labels = views.head_class_labels(got["head_classes"])
    assert got["head_classes"].dtype == np.int32
    assert {
        (layer, head): c for layer, row in enumerate(labels) for head, c in enumerate(row)
    } == tr.head_classes()
    for name in ("duplicate_token", "induction"):
        np.testing.assert_allclose(got[f"head_stats/{name}"], tr.head_stats()[name].numpy(), atol=1e-6)
    assert got["sinks/positions"].tolist() == tr.sinks(0.1)
    assert got["sinks/shares"].shape == (n,) and got["sinks/positions"].dtype == np.int64


def test_cross_attention_span_maps_take_key_spans(client, extractors, text):
    tr = extractors["bart"].trace(text)
    lk = tr.shape("cross")[3]
    got = client.extract(
        text, model="bart", views=[views.span_pooled([(0, 3), (3, 9)], key_spans=[(2, lk)], kind="cross")]
    )
    expected = tr.span_pooled([(0, 3), (3, 9)], kind="cross", key_spans=[(2, lk)])
    np.testing.assert_allclose(got["span_pooled/0"], expected.numpy(), atol=1e-6)


def test_every_view_can_be_asked_renormalised(client, extractors, text):
    tr = extractors["tiny"].trace(text)
    n = tr.seq_len
    sinks = tr.sinks(0.15)
    renorm = tr.renormalized(sorted({0, 7, *sinks}))
    requested = [
        views.tile(1, 2),
        views.pooled(8),
        views.received(),
        views.topk(0, 1, 3),
        views.neuron(1, 0, n - 1),
        views.head_stats(),
        views.rollout([n - 1]),
        views.span_pooled([(0, 5), (5, n)]),
    ]
    info = client.create_trace(text, model="tiny")
    for got in (
        client.extract(text, model="tiny", views=requested, renormalize=views.renormalize([7, 0], 0.15)),
        client.views(info.trace_id, requested, renormalize=views.renormalize([0, 7, 7], 0.15)),
    ):
        assert list(got.info.excluded_keys) == sorted({0, 7, *sinks})
        np.testing.assert_allclose(got["tile/0"], renorm.attention(1, 2).numpy(), atol=1e-6)
        assert float(np.abs(got["tile/0"][:, [0, 7]]).max()) == 0
        np.testing.assert_allclose(got["pooled"], renorm.pooled(8).numpy(), atol=1e-6)
        np.testing.assert_allclose(got["received"], renorm.received().numpy(), atol=1e-5)
        np.testing.assert_allclose(got["topk/3/probs"], renorm.topk(3, 0, 1)[1].numpy(), atol=1e-6)
        np.testing.assert_allclose(got["neuron/4/probs"], renorm.neuron(1, 0, n - 1).probs.numpy(), atol=1e-6)
        for name, values in renorm.head_stats().items():
            np.testing.assert_allclose(got[f"head_stats/{name}"], values.numpy(), atol=1e-5)
        np.testing.assert_allclose(got["rollout/6"], renorm.rollout([n - 1]).numpy(), atol=1e-6)
        np.testing.assert_allclose(
            got["span_pooled/7"], renorm.span_pooled([(0, 5), (5, n)]).numpy(), atol=1e-6
        )
    plain = client.views(info.trace_id, [views.tile(1, 2)])  # the kept trace itself is unchanged
    assert list(plain.info.excluded_keys) == []
    np.testing.assert_allclose(plain["tile/0"], tr.attention(1, 2).numpy(), atol=1e-6)


BAD = [
    (
        "rollout of cross attention",
        dict(model="bart", views=[views.rollout([0], kind="cross")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "rollout needs self-attention",
    ),
    (
        "rollout of no query",
        dict(views=[views.rollout([])]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "names no query",
    ),
    (
        "rollout query out of range",
        dict(views=[views.rollout([3, 999])]),
        grpc.StatusCode.OUT_OF_RANGE,
        "must be in [0, 23), got [999]",
    ),
    (
        "rollout residual",
        dict(views=[views.rollout([0], residual=1.5)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "residual must be a number in [0, 1]",
    ),
    (
        "overlapping spans",
        dict(views=[views.span_pooled([(0, 5), (3, 8)])]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "spans (0, 5) and (3, 8) overlap",
    ),
    (
        "span out of range",
        dict(views=[views.span_pooled([(0, 5), (20, 40)])]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "span (20, 40) must satisfy 0 <= start < stop <= 23",
    ),
    (
        "no span",
        dict(views=[views.span_pooled([])]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "spans is empty",
    ),
    (
        "cross key span out of range",
        dict(model="bart", views=[views.span_pooled([(0, 2)], key_spans=[(0, 99)], kind="cross")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "key_spans: span (0, 99)",
    ),
    (
        "threshold 0",
        dict(views=[views.sinks(0)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "threshold must be a number in (0, 1]",
    ),
    ("threshold 1.5", dict(views=[views.sinks(1.5)]), grpc.StatusCode.INVALID_ARGUMENT, "in (0, 1], got 1.5"),
    (
        "renormalize sinks threshold",
        dict(renormalize=views.renormalize(sinks_threshold=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "threshold must be a number in (0, 1]",
    ),
    (
        "renormalize key out of range",
        dict(renormalize=views.renormalize([23])),
        grpc.StatusCode.OUT_OF_RANGE,
        "exclude_keys must be key positions in [0, 23), got [23]",
    ),
    (
        "rollout over the score limit",
        dict(views=[views.rollout(list(range(23)))]),  # 23 × 2 layers × 4 heads × 23² > 60,000 scores
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "attention scores",
    ),
]


@pytest.mark.parametrize(("case", "kwargs", "code", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_analysis_requests_get_precise_statuses(client, case, kwargs, code, message, rng):
    text = repeated_text(rng, extra=6)  # 21 words: 23 tokens
    with pytest.raises(grpc.RpcError) as err:
        client.extract(text, model=kwargs.pop("model", "tiny"), **kwargs)
    assert err.value.code() == code, err.value.details()
    assert message in err.value.details(), err.value.details()
    assert client.list_models()  # the server goes on


def test_costs_are_checked_before_any_work(extractors, text):
    tr = extractors["tiny"].trace(text)
    n = tr.seq_len
    requests = [
        views.rollout([0, 1], layers=[1], heads=[0]),
        views.span_pooled([(0, 3), (3, 9)]),
        views.sinks(),
    ]
    planned = view_table.plan(tr, requests, Limits())
    assert [v.which for v in planned] == ["rollout", "span_pooled", "sinks"]
    work = sum(view_table.VIEW_TYPES[v.which].work(tr, v.spec, None) for v in planned)
    assert work == 2 * 1 * 1 * n * n + 2 * 4 * n * n + 2 * 4 * n * n
    renorm = proto.Renormalize(exclude_keys=[0, 1], sinks_threshold=0.5)
    assert view_table.renormalize_work(tr, renorm) == 2 * 4 * n * (n + 2)
    with pytest.raises(Exception, match="attention scores"):
        view_table.plan(tr, requests, Limits(max_scores=5 * n * n))
