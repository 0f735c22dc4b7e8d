"""A real third-party Connect client against the HTTP side: connect-es (@connectrpc/connect with
@connectrpc/connect-node, from npm) driven by tests/connect/client.mjs, with binary protobuf and
with JSON, through a gateway that wants a token, in front of a real gRPC server. The tensors it
assembles must be byte for byte what the Python Client gets over gRPC."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from attnscope import Client, Extractor, proto, views
from attnscope.service import AttentionCore
from attnscope.service.background import BackgroundServer
from attnscope.service.gateway import Gateway

from tiny_models import build_lm, word_tokenizer

HERE = Path(__file__).parent / "connect"
TOKEN = "connect-test-token"
TEXT = "w1 w2 w3 w4 w5"
DTYPES = {proto.DType["FLOAT32"]: "<f4", proto.DType["INT64"]: "<i8", proto.DType["INT32"]: "<i4"}


@pytest.fixture(scope="module")
def node_client():
    if shutil.which("node") is None:
        pytest.skip("needs Node.js (make test installs it)")
    if not (HERE / "node_modules" / "@connectrpc" / "connect-node").is_dir():
        pytest.skip("needs the npm packages: npm ci --prefix tests/connect (make test runs it)")
    return HERE / "client.mjs"


@pytest.fixture(scope="module")
def stack():
    # A language model: its generation is traced too (Progress, the split in TraceInfo).
    core = AttentionCore({"tiny": Extractor(build_lm("llama", dtype=torch.float32), word_tokenizer())})
    server = BackgroundServer(core, token=TOKEN)
    gateway = Gateway(server.address, port=0, token=TOKEN)
    gateway.start()
    yield server.address, gateway.url
    gateway.stop()
    server.stop()


@pytest.fixture(scope="module")
def answers(node_client, stack):
    out = subprocess.run(
        ["node", str(node_client), stack[1], str(proto.DESCRIPTOR_SET), TOKEN, TEXT],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def direct(stack):
    with Client(stack[0], token=TOKEN) as client:
        result = client.extract(TEXT, views=[views.head_stats(name="stats"), views.pooled(3, name="map")])
        generated = client.extract(TEXT, generation=views.generation(3), views=[views.retrieval(name="read")])
        return result, client.server_info(), client.list_models(), generated


@pytest.mark.parametrize("codec", ["binary", "json"])
def test_connect_es_streams_extract_with_the_same_bytes(answers, direct, codec):
    got = answers[codec]["extract"]
    result, _, _, _ = direct
    assert got["tokens"] == list(result.tokens)
    assert got["manifest"] == [{"name": v.name, "tensors": list(v.tensors)} for v in result.manifest.views]
    assert set(got["tensors"]) == set(result.tensors) and "map" in got["tensors"]
    for name, tensor in got["tensors"].items():
        expected = result[name]
        assert tensor["shape"] == list(expected.shape), name
        data = base64.b64decode(tensor["data"])
        assert data == np.ascontiguousarray(expected).astype(DTYPES[tensor["dtype"]]).tobytes(), name
    assert got["messages"] == 2 + len(result.tensors)  # info, manifest, one piece per small tensor


@pytest.mark.parametrize("codec", ["binary", "json"])
def test_connect_es_unary_calls_and_errors(answers, direct, codec):
    got = answers[codec]
    _, info, models, _ = direct
    assert got["serverInfo"] == {
        "version": info.version,
        "maxTokens": info.limits.max_tokens,
        "headStats": [h.name for h in info.head_stats],
    }
    assert got["models"] == [
        {"name": m.name, "isDefault": m.is_default, "numLayers": m.num_layers} for m in models
    ]
    errors = got["errors"]
    # A stream's error arrives in its end-of-stream envelope; unary errors by HTTP status and JSON.
    assert errors["streamNotFound"]["code"] == "NotFound" and "'nope'" in errors["streamNotFound"]["message"]
    assert errors["unaryNotFound"]["code"] == "NotFound" and "'nope'" in errors["unaryNotFound"]["message"]
    assert errors["unaryInvalid"]["code"] == "InvalidArgument"
    assert errors["noToken"]["code"] == "Unauthenticated" and "token" in errors["noToken"]["message"]
    assert errors["wrongToken"]["code"] == "Unauthenticated"
    assert got["cancelled"] == "Canceled"  # an aborted stream ends as cancelled on the client


@pytest.mark.parametrize("codec", ["binary", "json"])
def test_connect_es_reads_a_generation_its_progress_and_the_split(answers, direct, codec):
    got = answers[codec]["generation"]
    *_, generated = direct
    assert got["progress"] == [p.done for p in generated.progress] == [0, 1, 2, 3]
    assert got["promptLen"] == generated.info.prompt_len > 0
    assert got["generatedIds"] == list(generated.info.generated_ids) and len(got["generatedIds"]) == 3
    assert got["generatedText"] == generated.info.generated_text
    assert base64.b64decode(got["tensors"]["read"]) == generated["read"].astype("<f4").tobytes()
