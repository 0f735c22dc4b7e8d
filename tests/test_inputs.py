"""Any model input: `trace(inputs={...})` and `trace(image=...)` on a tiny random ViT (float64),
every view against transformers' eager attention, and the patch labels."""

from __future__ import annotations

import pytest
import torch

from attnscope import Extractor
from attnscope.extract.extractor import InputTooLong
from attnscope.kernels import backend, triton_common

from eager import check_views
from reference import assert_close
from tiny_models import build, random_text, word_tokenizer

GRID_4x4 = ["[CLS]"] + [f"patch {r},{c}" for r in range(4) for c in range(4)]


def vit_eager(model, pixel_values, **extra) -> dict[str, list[torch.Tensor]]:
    """ViT's eager attention (bidirectional: the "encoder" kind), per layer [H, L, L]."""
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(pixel_values=pixel_values, output_attentions=True, **extra)
    return {"encoder": [a[0] for a in out.attentions]}


def pixels(rng, height=32, width=32) -> torch.Tensor:
    return torch.randn(1, 3, height, width, generator=rng, dtype=torch.float64)


def test_vit_pixel_values_match_eager_and_are_labelled_by_patch(rng):
    model = build("vit")
    pv = pixels(rng)
    tr = Extractor(model).trace(inputs={"pixel_values": pv})
    assert tr.seq_len == 17 and tr.kinds == ("encoder",)
    assert tr.tokens == GRID_4x4
    assert tr.tokens[-1] == "patch 3,3"
    check_views(tr, vit_eager(model, pv))


PATCHES_4x4 = GRID_4x4[1:]


@pytest.mark.parametrize(
    ("family", "specials"),
    [
        ("deit", ["[CLS]", "[DIST]"]),
        ("dinov2_registers", ["[CLS]", "[REG 0]", "[REG 1]"]),
        ("clip_vision", ["[CLS]"]),
        ("siglip_vision", []),
    ],
)
def test_other_vision_encoders_label_their_special_tokens(family, specials, rng):
    model = build(family)
    pv = pixels(rng)
    tr = Extractor(model).trace(inputs={"pixel_values": pv})
    assert tr.tokens == specials + PATCHES_4x4
    check_views(tr, vit_eager(model, pv))


def test_unknown_layout_is_labelled_by_position(rng):
    model = build("bert")
    embeds = torch.randn(1, 9, 32, generator=rng, dtype=torch.float64)
    tr = Extractor(model, word_tokenizer()).trace(inputs={"inputs_embeds": embeds})
    assert tr.tokens == [f"pos {i}" for i in range(9)]
    with pytest.raises(InputTooLong, match="9 tokens"):
        Extractor(model).trace(inputs={"inputs_embeds": embeds}, max_tokens=8)


def test_vit_interpolated_positions_get_their_own_grid(rng):
    model = build("vit")
    pv = pixels(rng, 48, 40)  # 6 rows × 5 columns of 8×8 patches
    try:
        tr = Extractor(model).trace(inputs={"pixel_values": pv, "interpolate_pos_encoding": True})
    except TypeError as e:  # pragma: no cover - depends on the transformers version
        pytest.skip(f"ViTModel.forward takes no interpolate_pos_encoding here: {e}")
    assert tr.seq_len == 31
    assert tr.tokens == ["[CLS]"] + [f"patch {r},{c}" for r in range(6) for c in range(5)]
    check_views(tr, vit_eager(model, pv, interpolate_pos_encoding=True))


def _image_processor():
    pytest.importorskip("PIL", reason="trace(image=...) needs Pillow")
    from transformers import ViTImageProcessor

    return ViTImageProcessor(
        do_resize=True,
        size={"height": 32, "width": 32},
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def _image(rng):
    Image = pytest.importorskip("PIL.Image", reason="trace(image=...) needs Pillow")

    data = torch.randint(0, 256, (40, 52, 3), generator=rng, dtype=torch.uint8).numpy()
    return Image.fromarray(data, mode="RGB")


@pytest.mark.parametrize("slot", ["processor", "tokenizer"])
def test_image_runs_the_image_processor_like_its_pixel_values(rng, slot, tmp_path):
    model = build("vit")
    proc = _image_processor()
    ex = Extractor(model, processor=proc) if slot == "processor" else Extractor(model, proc)
    image = _image(rng)
    tr = ex.trace(image=image)
    pv = proc(images=image, return_tensors="pt")["pixel_values"]
    direct = ex.trace(inputs={"pixel_values": pv})
    assert tr.tokens == direct.tokens == GRID_4x4
    for layer in range(2):
        for head in range(4):
            assert_close(tr.attention(layer, head), direct.attention(layer, head), 0.0, f"L{layer}H{head}")
    check_views(tr, vit_eager(model, pv.to(torch.float64)))
    path = tmp_path / "image.png"
    image.save(path)
    from_path = ex.trace(image=path)
    assert_close(from_path.attention(1, 2), tr.attention(1, 2), 0.0, "from a path")
    from_bytes = ex.trace(image=path.read_bytes())
    assert_close(from_bytes.attention(0, 3), tr.attention(0, 3), 0.0, "from bytes")
    with pytest.raises(ValueError, match="cannot read an image"):
        ex.trace(image=b"not an image")


def test_bad_inputs_raise_clear_errors(rng):
    model = build("vit")
    ex = Extractor(model)
    with pytest.raises(ValueError, match="batch size 2"):
        ex.trace(inputs={"pixel_values": torch.randn(2, 3, 32, 32, dtype=torch.float64)})
    with pytest.raises(ValueError, match="no image processor"):
        ex.trace(image=_image(rng))
    with pytest.raises(ValueError, match="exactly one"):
        ex.trace("w1 w2", inputs={"pixel_values": pixels(rng)})
    with pytest.raises(ValueError, match="set by attnscope"):
        ex.trace(inputs={"pixel_values": pixels(rng), "output_attentions": True})
    with pytest.raises(ValueError, match="takes no input 'nonsense'"):
        ex.trace(inputs={"pixel_values": pixels(rng), "nonsense": 1})
    with pytest.raises(ValueError, match="non-empty dict"):
        ex.trace(inputs={})
    with pytest.raises(InputTooLong, match="17 tokens"):
        ex.trace(inputs={"pixel_values": pixels(rng)}, max_tokens=16)
    assert ex.trace(inputs={"pixel_values": pixels(rng)}, max_tokens=17).seq_len == 17


def test_text_inputs_dict_traces_like_text(rng):
    model = build("bert")
    tok = word_tokenizer()
    text = random_text(12, rng)
    enc = tok(text, return_tensors="pt")
    ex = Extractor(model, tok)
    tr = ex.trace(inputs=dict(enc))
    ref = ex.trace(text)
    assert tr.tokens == ref.tokens
    assert_close(tr.attention(1, 3), ref.attention(1, 3), 1e-12, "inputs vs text")


def test_padded_single_item_keeps_only_its_real_tokens(rng):
    model = build("bert")
    tok = word_tokenizer()
    text = random_text(10, rng)
    enc = tok(text, return_tensors="pt", padding="max_length", max_length=20)
    assert int(enc["attention_mask"].sum()) == 12
    ex = Extractor(model, tok)
    tr = ex.trace(inputs=dict(enc))
    ref = ex.trace(text)
    assert tr.tokens == ref.tokens and tr.seq_len == 12
    assert_close(tr.attention(0, 1), ref.attention(0, 1), 1e-12, "padded inputs vs text")
    holes = dict(enc, attention_mask=torch.tensor([[1, 0] * 10]))
    with pytest.raises(ValueError, match="contiguous"):
        ex.trace(inputs=holes)


def test_inputs_reach_the_eager_fallback(rng):
    """BLOOM's attention never passes through AttentionInterface: inputs={...} falls back too."""
    from test_eager_fallback import bloom

    tok = word_tokenizer()
    text = random_text(8, rng)
    ex = Extractor(bloom(), tok)
    tr = ex.trace(inputs=dict(tok(text, return_tensors="pt")))
    ref = ex.trace(text)
    assert tr.method == ref.method == "eager"
    assert tr.tokens == ref.tokens
    assert_close(tr.attention(1, 2), ref.attention(1, 2), 1e-12, "eager fallback via inputs")


def test_from_pretrained_loads_a_vision_checkpoint_with_its_image_processor(rng, tmp_path):
    model = build("vit")
    proc = _image_processor()
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    ex = Extractor.from_pretrained(tmp_path, device="cpu", dtype=torch.float64)
    assert ex.tokenizer is None and ex.processor is not None
    image = _image(rng)
    tr = ex.trace(image=image)
    assert tr.tokens == GRID_4x4
    pv = proc(images=image, return_tensors="pt")["pixel_values"]
    check_views(tr, vit_eager(model, pv.to(torch.float64)))


@pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")
def test_vit_on_the_triton_backend_matches_eager(rng, monkeypatch):
    """The Triton kernels (interpreted on the CPU) on patches: float32, as the kernels take."""
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "triton")
    assert backend.backend_name(torch.device("cpu")) == "triton"
    model = build("vit", dtype=torch.float32)
    pv = pixels(rng).float()
    tr = Extractor(model).trace(inputs={"pixel_values": pv})
    assert tr.tokens == GRID_4x4
    check_views(tr, vit_eager(model, pv))
