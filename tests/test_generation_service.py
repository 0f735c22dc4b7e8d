"""Generation traces through the real gRPC server: progress streamed while the model generates,
the split in TraceInfo, the reading views (attention_from, retrieval, query_focus) equal to the
Python API, and every bad input's status with the server still serving."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

pytest.importorskip("grpc_health")  # as tests/test_service.py: the GPU machine lacks it
import torch

from attnscope import Client, Extractor, proto, views
from attnscope.service import AttentionCore, Limits
from attnscope.service.background import BackgroundServer
from attnscope.service.core import collect

from tiny_models import build, build_lm, word_tokenizer

PROMPT = "w3 w9 w14 w27 w3 w9 w40 w41 w3"


@pytest.fixture(scope="module")
def extractors():
    tok = word_tokenizer()
    return {
        "lm": Extractor(build_lm("llama", dtype=torch.float32), tok),
        "bert": Extractor(build("bert", dtype=torch.float32), tok),
    }


@pytest.fixture(scope="module")
def server(extractors):
    limits = Limits(max_tokens=64, max_new_tokens=20)
    running = BackgroundServer(AttentionCore(extractors, limits))
    yield running
    running.stop()


@pytest.fixture
def client(server):
    with Client(server.address, timeout=120) as c:
        yield c


def test_models_say_which_can_generate_and_the_limit_is_published(client):
    can = {m.name: m.can_generate for m in client.list_models()}
    assert can == {"lm": True, "bert": False}
    assert client.server_info().limits.max_new_tokens == 20


def test_generation_streams_progress_then_the_trace_and_its_reading_views(client, extractors):
    tr = extractors["lm"].trace(PROMPT, generate=6)
    n, p = tr.seq_len, tr.prompt_len
    got = client.extract(
        PROMPT,
        model="lm",
        generation=views.generation(6),
        views=[
            views.attention_from(range(p, n), layers=[1], heads=[0, 2], name="read"),
            views.retrieval(name="retrieval"),
            views.query_focus((p, n), [(0, 4), (4, p)], name="focus"),
        ],
    )
    done = [m.done for m in got.progress]
    assert done == sorted(done) and done[0] == 0 and done[-1] == 6  # one message per new token
    assert len(done) >= 7 and {m.stage for m in got.progress} == {"generate"}
    assert {m.total for m in got.progress} == {6}
    info = got.info
    assert info.prompt_len == p and list(info.generated_ids) == tr.generated.ids
    assert info.generated_text == tr.generated.text and info.kinds[0].query_len == n
    read = tr.attention_from(list(range(p, n)), layers=[1], heads=[0, 2]).numpy()
    np.testing.assert_allclose(got["read"], read, atol=1e-6)
    np.testing.assert_allclose(got["retrieval"], tr.retrieval_scores().numpy(), atol=1e-6)
    np.testing.assert_allclose(got["focus"], tr.query_focus((p, n), [(0, 4), (4, p)]).numpy(), atol=1e-6)


def test_seeded_sampling_over_the_wire_equals_the_python_api(client, extractors):
    spec = views.generation(5, do_sample=True, temperature=1.3, top_k=20, top_p=0.9, seed=7)
    got = client.extract(PROMPT, model="lm", generation=spec, views=[views.head_stats()])
    tr = extractors["lm"].trace(
        PROMPT, generate=5, do_sample=True, temperature=1.3, top_k=20, top_p=0.9, seed=7
    )
    assert list(got.info.generated_ids) == tr.generated.ids
    kept = client.create_trace(PROMPT, model="lm", generation=spec)
    assert list(kept.generated_ids) == tr.generated.ids and kept.prompt_len == tr.prompt_len
    again = client.views(kept.trace_id, [views.retrieval(name="r")])
    np.testing.assert_allclose(again["r"], tr.retrieval_scores().numpy(), atol=1e-6)
    assert again.info.prompt_len == tr.prompt_len


@pytest.mark.parametrize(
    ("model", "generation", "extra", "code", "says"),
    [
        ("bert", views.generation(3), {}, grpc.StatusCode.INVALID_ARGUMENT, "cannot generate"),
        (
            "lm",
            views.generation(0),
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_new_tokens must be in [1, 20]",
        ),
        (
            "lm",
            views.generation(21),
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_new_tokens must be in [1, 20]",
        ),
        (
            "lm",
            views.generation(3, do_sample=True, temperature=0.0),
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "temperature",
        ),
        ("lm", views.generation(3, top_p=1.5), {}, grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
        ("lm", views.generation(3), {"pair": "w1"}, grpc.StatusCode.INVALID_ARGUMENT, "text_pair and target"),
        (
            "lm",
            views.generation(20),
            {"text": " ".join(["w1"] * 50)},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "plus 20 new tokens",
        ),
    ],
)
def test_bad_generation_requests_get_a_precise_status_and_the_server_keeps_serving(
    client, model, generation, extra, code, says
):
    text = extra.pop("text", PROMPT)
    with pytest.raises(grpc.RpcError) as err:
        client.extract(text, model=model, generation=generation, **extra)
    assert err.value.code() == code and says in err.value.details()
    assert client.extract(PROMPT, model="lm", views=[views.head_stats()]).info.prompt_len == 0


def test_retrieval_on_a_plain_trace_needs_query_positions(client, extractors):
    with pytest.raises(grpc.RpcError) as err:
        client.extract(PROMPT, model="lm", views=[views.retrieval()])
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "not a generation trace" in err.value.details()
    )
    tr = extractors["lm"].trace(PROMPT)
    got = client.extract(PROMPT, model="lm", views=[views.retrieval([2, 5, 7], name="r")])
    np.testing.assert_allclose(got["r"], tr.retrieval_scores([2, 5, 7]).numpy(), atol=1e-6)
    last = tr.seq_len - 1
    with pytest.raises(grpc.RpcError) as err:
        client.extract(PROMPT, model="lm", views=[views.retrieval([last])])
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_a_generation_stops_at_its_deadline_or_when_the_call_ends(extractors):
    core = AttentionCore(extractors, Limits(max_tokens=64, max_new_tokens=20))
    request = proto.ExtractRequest(model="lm", text=PROMPT, generation=views.generation(20))
    with pytest.raises(TimeoutError):
        collect(core.extract(request, deadline=time.monotonic() - 1))  # already past: stops at once
    items = core.extract(request)
    assert next(items)[0] == "progress"
    items.close()  # the call ended (client gone): generation stops at its next token, thread joined
    got = collect(core.extract(request))  # and the model is free for the next call
    assert len(got.info.generated_ids) == 20 and [p.done for p in got.progress] == list(range(21))


def test_kind_info_carries_the_texts_sentences(client, extractors):
    text = "w1 w2 w3. w4 w5! w6 w7 w8? w9"
    got = client.extract(text, model="bert", views=[views.head_stats()])
    sentences = [(r.start, r.stop) for r in got.info.kinds[0].sentences]
    assert sentences == extractors["bert"].trace(text).sentence_spans()
    assert len(sentences) == 4 and sentences[0][0] == 0 and sentences[-1][1] == got.info.kinds[0].query_len
