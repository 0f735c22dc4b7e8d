"""Images through the service: PNG bytes to a tiny ViT loaded from a saved checkpoint (as `attnscope
serve --model DIR` loads one), served by the real gRPC server on a loopback port and by the HTTP
gateway in Connect JSON; attention against transformers' eager output_attentions; bad images."""

from __future__ import annotations

import base64
import io
import json
import struct
import urllib.error
import urllib.request
import zlib

import grpc
import numpy as np
import pytest
import torch

from attnscope import Client, Extractor, proto, views
from attnscope.service import AttentionCore, Limits
from attnscope.service.background import BackgroundServer

from tiny_models import build, random_text, word_tokenizer

pytest.importorskip("grpc_health")  # the server's health and reflection (absent on the GPU machine)
pytest.importorskip("grpc_reflection")
Image = pytest.importorskip("PIL.Image", reason="images need Pillow")

GRID_4x4 = ["[CLS]"] + [f"patch {r},{c}" for r in range(4) for c in range(4)]
LIMITS = Limits(max_image_bytes=64 * 1024, max_image_pixels=1024 * 1024)
SERVICE = f"/{proto.SERVICE_NAME}/"


def png(rng, height=40, width=52) -> bytes:
    data = torch.randint(0, 256, (height, width, 3), generator=rng, dtype=torch.uint8).numpy()
    out = io.BytesIO()
    Image.fromarray(data, mode="RGB").save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A saved tiny ViT (float32) with its image processor's preprocessor_config.json."""
    from transformers import ViTImageProcessor

    folder = tmp_path_factory.mktemp("vit")
    build("vit", dtype=torch.float32).save_pretrained(folder)
    ViTImageProcessor(
        do_resize=True, size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(checkpoint):
    models = {
        "vit": Extractor.from_pretrained(checkpoint, device="cpu", dtype=torch.float32),
        "text": Extractor(build("llama", dtype=torch.float32), word_tokenizer()),
    }
    running = BackgroundServer(AttentionCore(models, LIMITS))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def gateway(server):
    pytest.importorskip("aiohttp")
    from attnscope.service.gateway import Gateway

    gate = Gateway(server.address, port=0)
    gate.start()
    yield gate
    gate.stop()


@pytest.fixture
def client(server):
    with Client(server.address, timeout=120) as c:
        yield c


def eager_attentions(checkpoint, image: bytes) -> list[np.ndarray]:
    """Per layer [heads, L, L]: the checkpoint run by transformers itself, eager attention, float32."""
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(checkpoint, attn_implementation="eager", dtype=torch.float32)
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    pixel_values = processor(images=Image.open(io.BytesIO(image)).convert("RGB"), return_tensors="pt")[
        "pixel_values"
    ]
    with torch.no_grad():
        out = model.eval()(pixel_values=pixel_values, output_attentions=True)
    return [a[0].numpy() for a in out.attentions]


def test_an_image_is_traced_as_patches_exact_against_eager(client, checkpoint, rng):
    image = png(rng)
    tiles = [views.tile(layer, head, name=f"L{layer}H{head}") for layer in range(2) for head in range(4)]
    got = client.extract(model="vit", image=image, views=tiles)
    (kind,) = got.info.kinds
    assert got.tokens == list(kind.key_tokens) == GRID_4x4
    assert kind.kind == proto.Kind["KIND_ENCODER"] and (kind.query_len, kind.key_len) == (17, 17)
    assert kind.HasField("patch_grid")
    grid = kind.patch_grid
    assert (grid.rows, grid.cols, grid.first_patch) == (4, 4, 1)
    reference = eager_attentions(checkpoint, image)
    for layer in range(2):
        for head in range(4):
            np.testing.assert_allclose(
                got[f"L{layer}H{head}"], reference[layer][head], rtol=0, atol=1e-5, err_msg=f"L{layer}H{head}"
            )


def test_a_kept_image_trace_serves_views_and_models_say_what_they_take(client, rng):
    info = client.create_trace(model="vit", image=png(rng, 64, 64))
    assert info.trace_id and info.kinds[0].patch_grid.rows == 4
    zoom = client.views(info.trace_id, [views.neuron(1, 2, 5, name="n"), views.received(name="r")])
    assert zoom["r"].shape == (2, 4, 17) and zoom["n/probs"].shape == (17,)
    np.testing.assert_allclose(zoom["n/probs"].sum(), 1.0, atol=1e-5)
    assert client.delete_trace(info.trace_id)
    models = {m.name: m for m in client.list_models()}
    assert (models["vit"].takes_images, models["vit"].takes_text) == (True, False)
    assert (models["text"].takes_images, models["text"].takes_text) == (False, True)
    limits = client.server_info().limits
    assert (limits.max_image_bytes, limits.max_image_pixels) == (64 * 1024, 1024 * 1024)
    text = client.extract(random_text(6, rng), model="text")
    assert not text.info.kinds[0].HasField("patch_grid")


def _claims(width: int, height: int) -> bytes:
    """A 1×1 PNG whose header says it is `width`×`height` (the header's checksum made to match)."""
    out = io.BytesIO()
    Image.new("L", (1, 1)).save(out, "PNG")
    data = bytearray(out.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR: after the signature, length and type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _bomb() -> bytes:
    """A PNG of 2048×2048 black pixels: a few KiB on the wire, 4 Mpx (12 MiB) once decoded."""
    out = io.BytesIO()
    Image.new("L", (2048, 2048)).save(out, "PNG", optimize=True)
    return out.getvalue()


@pytest.mark.parametrize(
    ("request_fields", "code", "message"),
    [
        ({"model": "vit", "image": b"not an image at all"}, "INVALID_ARGUMENT", "not a PNG, JPEG"),
        ({"model": "vit", "image": b"\x89PNG\r\n\x1a\n" + bytes(40)}, "INVALID_ARGUMENT", "image"),
        ({"model": "vit", "image": "truncated"}, "INVALID_ARGUMENT", "truncated or corrupt"),
        ({"model": "vit", "image": bytes(64 * 1024 + 1)}, "RESOURCE_EXHAUSTED", "at most 65,536"),
        ({"model": "vit", "image": "bomb"}, "RESOURCE_EXHAUSTED", "4,194,304 pixels"),
        ({"model": "vit", "image": "claims 2000x1000"}, "RESOURCE_EXHAUSTED", "2000×1000 = 2,000,000 pixels"),
        ({"model": "vit", "image": "claims 20000x20000"}, "RESOURCE_EXHAUSTED", "at most 1,048,576 pixels"),
        ({"model": "text", "image": "png"}, "INVALID_ARGUMENT", "model 'text' takes no images"),
        ({"model": "vit", "image": "png", "text": "a cat"}, "INVALID_ARGUMENT", "either image or text"),
        ({"model": "vit", "text": "a cat"}, "INVALID_ARGUMENT", "model 'vit' takes images, not text"),
    ],
)
def test_bad_images_are_refused_and_the_server_keeps_serving(client, rng, request_fields, code, message):
    fields = dict(request_fields)
    good = png(rng)
    made = {"png": good, "truncated": good[: len(good) // 2], "bomb": _bomb()}
    made |= {"claims 2000x1000": _claims(2000, 1000), "claims 20000x20000": _claims(20000, 20000)}
    fields["image"] = made.get(fields.get("image"), fields.get("image", b""))
    for method, cls in (("Extract", proto.ExtractRequest), ("CreateTrace", proto.CreateTraceRequest)):
        with pytest.raises(grpc.RpcError) as caught:
            result = client._call(method, cls(**fields), None)
            list(result) if method == "Extract" else result
        assert caught.value.code() == grpc.StatusCode[code], caught.value.details()
        assert message in caught.value.details()
        assert len(caught.value.details()) < 300  # never an echo of the input
    assert client.extract(model="vit", image=good).tokens == GRID_4x4  # still serving


# ---- the same over the HTTP gateway, Connect JSON (bytes in base64) ---------------------------------
def connect_call(gateway, method: str, body: dict, streaming: bool) -> tuple[int, bytes]:
    data = json.dumps(body).encode()
    if streaming:
        from attnscope.service.http.connect import envelope

        data = envelope(data)
    content_type = "application/connect+json" if streaming else "application/json"
    request = urllib.request.Request(
        gateway.url + SERVICE + method,
        data=data,
        headers={"Content-Type": content_type, "Connect-Protocol-Version": "1"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def envelopes(raw: bytes) -> list[tuple[int, dict]]:
    """A Connect stream's (flags, JSON message) pairs, split by the gateway's own codec."""
    from attnscope.service.http.connect import read_envelopes

    return [(flags, json.loads(data)) for flags, data in read_envelopes(raw, len(raw))]


def test_connect_json_carries_the_image_as_base64(gateway, client, rng):
    image = png(rng)
    encoded = base64.b64encode(image).decode()
    status, raw = connect_call(gateway, "CreateTrace", {"model": "vit", "image": encoded}, streaming=False)
    assert status == 200, raw
    info = json.loads(raw)
    (kind,) = info["kinds"]
    assert kind["queryTokens"] == GRID_4x4
    assert kind["patchGrid"] == {"rows": 4, "cols": 4, "firstPatch": 1}
    body = {"model": "vit", "image": encoded, "views": [{"name": "t", "tile": {"layer": 1, "head": 3}}]}
    status, raw = connect_call(gateway, "Extract", body, streaming=True)
    messages = envelopes(raw)
    assert status == 200 and messages[-1] == (2, {}), messages[-1]
    piece = next(m["tensor"] for _, m in messages if "tensor" in m)
    over_http = np.frombuffer(base64.b64decode(piece["data"]), np.float32).reshape(17, 17)
    np.testing.assert_array_equal(
        over_http, client.extract(model="vit", image=image, views=[views.tile(1, 3, name="t")])["t"]
    )
    status, raw = connect_call(gateway, "CreateTrace", {"model": "vit", "image": "bm90IGFuIGltYWdl"}, False)
    assert status == 400 and json.loads(raw)["code"] == "invalid_argument" and "not a PNG" in raw.decode()
    status, raw = connect_call(gateway, "CreateTrace", {"model": "vit", "image": encoded}, False)
    assert status == 200, "the gateway and the server still answer after a refused image"
    client.delete_trace(info["traceId"])
    client.delete_trace(json.loads(raw)["traceId"])
