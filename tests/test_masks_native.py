"""Packed sequences and bidirectional prefixes, read off transformers' mask and traced exactly.

Packed sequences: transformers masks them block-diagonally when position_ids restart inside a row
and no attention_mask is given (its packed-sequence mask function; transformers 5.24's eager path
does so too, which the eager reference here shows). Packing and padding never meet: transformers
looks for packing only without an attention_mask, so there is no padded batch of packed rows.

Bidirectional prefix: PaliGemma's prefix-LM (image tokens and the prompt attend both ways, the
suffix causally) through `block_sequence_ids`, an or-overlay of transformers' causal mask.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from attnscope import Extractor
from attnscope.extract import capturing
from attnscope.kernels import triton_common

from eager import check_views
from tiny_models import build

SEGMENTS = (10, 15, 8, 6)  # odd lengths, 39 tokens


def _packed_positions(lengths) -> torch.Tensor:
    return torch.cat([torch.arange(n) for n in lengths])[None]


def _eager(model, **inputs) -> list[torch.Tensor]:
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(**inputs, output_attentions=True, use_cache=False)
    return [a[0] for a in out.attentions]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packed_sequences_trace_exactly(family, rng):
    """Every view equals eager (float64): no attention crosses a document boundary."""
    model = build(family)
    n = sum(SEGMENTS)
    ids = torch.randint(4, 100, (1, n), generator=rng)
    positions = _packed_positions(SEGMENTS)
    tr = Extractor(model, None).trace(inputs={"input_ids": ids, "position_ids": positions})
    spec = tr.layer_qk(0, "decoder").spec
    assert spec.segments.tolist() == [[i for i, s in enumerate(SEGMENTS) for _ in range(s)]]
    eager = _eager(model, input_ids=ids, position_ids=positions)
    assert float(eager[0][:, 12, :10].abs().max()) == 0.0  # the reference masks across documents
    check_views(tr, {"decoder": eager})


def test_each_row_of_a_packed_batch_gets_its_own_segments(rng):
    model = build("llama")
    ids = torch.randint(4, 100, (2, 24), generator=rng)
    positions = torch.cat([_packed_positions((7, 17)), _packed_positions((12, 5, 7))])
    with torch.no_grad(), capturing(model) as rec:
        model(input_ids=ids, position_ids=positions, use_cache=False)
    segments = rec.calls[0].spec.segments
    assert segments[0].tolist() == [0] * 7 + [1] * 17
    assert segments[1].tolist() == [0] * 12 + [1] * 5 + [2] * 7


def _paligemma() -> torch.nn.Module:
    torch.manual_seed(0)
    vision = tf.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=42,
        patch_size=14,
    )
    text = tf.GemmaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        pad_token_id=0,
    )
    config = tf.PaliGemmaConfig(
        vision_config=vision, text_config=text, image_token_index=120, projection_dim=32
    )
    return tf.PaliGemmaForConditionalGeneration(config).to(torch.float64).eval()


def test_paligemma_prefix_is_bidirectional_and_exact(rng):
    """9 image tokens + 14 prompt tokens attend both ways, 10 suffix tokens causally: the language
    model's views equal eager, and so do the vision tower's."""
    model = _paligemma()
    images, prompt, suffix = 9, 14, 10
    ids = torch.cat([torch.full((images,), 120), torch.randint(4, 100, (prompt + suffix,), generator=rng)])[
        None
    ]
    token_types = torch.cat(
        [torch.zeros(images + prompt, dtype=torch.long), torch.ones(suffix, dtype=torch.long)]
    )
    pixels = torch.randn(1, 3, 42, 42, generator=rng, dtype=torch.float64)
    inputs = {
        "input_ids": ids,
        "token_type_ids": token_types[None],
        "pixel_values": pixels,
        "attention_mask": torch.ones_like(ids),
    }
    tr = Extractor(model, None).trace(inputs=inputs)
    groups = tr.layer_qk(0, "decoder").spec.groups
    assert groups.tolist() == [[1] * (images + prompt) + [0] * suffix]
    language = _eager(model, **inputs)
    assert float(language[0][0, 0, images + prompt - 1]) > 0  # the first token sees the prompt's last
    with torch.no_grad():
        vision = model.model.vision_tower(pixels, output_attentions=True).attentions
    check_views(tr, {"decoder": language, "encoder": [a[0] for a in vision]})


def _gemma3() -> torch.nn.Module:
    torch.manual_seed(0)
    vision = tf.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
    )
    text = tf.Gemma3TextConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=6,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
    )
    config = tf.Gemma3Config(
        vision_config=vision,
        text_config=text,
        mm_tokens_per_image=4,
        image_token_index=260,
        boi_token_index=258,
        eoi_token_index=259,
    )
    return tf.Gemma3ForConditionalGeneration(config).to(torch.float64).eval()


def gemma3_inputs(rng, before: int = 5, after: int = 9) -> dict:
    """Text, <start_of_image>, 4 image tokens, <end_of_image>, text: the image attends both ways."""
    ids = torch.cat(
        [
            torch.randint(4, 100, (before,), generator=rng),
            torch.tensor([258]),
            torch.full((4,), 260),
            torch.tensor([259]),
            torch.randint(4, 100, (after,), generator=rng),
        ]
    )[None]
    pixels = torch.randn(1, 3, 56, 56, generator=rng, dtype=torch.float64)
    return {
        "input_ids": ids,
        "token_type_ids": (ids == 260).long(),
        "pixel_values": pixels,
        "attention_mask": torch.ones_like(ids),
    }


def test_gemma3_image_tokens_attend_both_ways_inside_a_sliding_window(rng):
    """Gemma 3: the image's 4 tokens form a bidirectional group on top of a 6-key sliding window
    (layer 0) and of full causal attention (layer 1); both layers equal eager."""
    model = _gemma3()
    inputs = gemma3_inputs(rng)
    tr = Extractor(model, None).trace(inputs=inputs)
    spec = tr.layer_qk(0, "decoder").spec
    assert spec.window == 6 and spec.groups.tolist() == [[0] * 6 + [1] * 4 + [0] * 10]
    language = _eager(model, **inputs)
    assert float(language[1][0, 6, 9]) > 0  # the first image token sees the last
    with torch.no_grad():
        vision = model.model.vision_tower(inputs["pixel_values"], output_attentions=True).attentions
    check_views(tr, {"decoder": language, "encoder": [a[0] for a in vision]})


@pytest.mark.skipif(not triton_common.HAS_TRITON, reason="triton is not installed")
def test_segments_and_groups_on_the_triton_kernels(rng, monkeypatch):
    """The Triton kernels (interpreted here) take segments and groups themselves: float32 views
    of a packed Llama and of PaliGemma's prefix equal eager."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("ATTNSCOPE_BACKEND", "triton")
    model = build("llama", dtype=torch.float32)
    ids = torch.randint(4, 100, (1, sum(SEGMENTS)), generator=rng)
    positions = _packed_positions(SEGMENTS)
    tr = Extractor(model, None).trace(inputs={"input_ids": ids, "position_ids": positions})
    eager = _eager(model.double(), input_ids=ids, position_ids=positions)
    model = _paligemma().float()
    ids = torch.cat([torch.full((9,), 120), torch.randint(4, 100, (21,), generator=rng)])[None]
    types = torch.cat([torch.zeros(20, dtype=torch.long), torch.ones(10, dtype=torch.long)])[None]
    px = torch.randn(1, 3, 42, 42, generator=rng)
    inputs = {
        "input_ids": ids,
        "token_type_ids": types,
        "pixel_values": px,
        "attention_mask": torch.ones_like(ids),
    }
    prefix = Extractor(model, None).trace(inputs=inputs)
    model = model.double()
    prefix_eager = _eager(model, **{**inputs, "pixel_values": px.double()})
    for trace, layers in ((tr, eager), (prefix, prefix_eager)):
        for layer, p in enumerate(layers):
            for head in range(p.shape[0]):
                got = trace.attention(layer, head, kind="decoder").double()
                assert (got - p[head]).abs().max() < 1e-5, (layer, head)
    idx, _ = tr.topk(5, 0, 0, queries=slice(12, 13), kind="decoder")  # document 2 starts at 10
    assert sorted(idx[0].tolist()) == [-1, -1, 10, 11, 12]
    idx, _ = prefix.topk(21, 0, 0, queries=slice(2, 3), kind="decoder")  # the prefix is 0..19
    assert sorted(idx[0].tolist()) == [-1, *range(20)]
