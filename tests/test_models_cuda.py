"""Whole models on the compiled Triton kernels (CUDA only; `pytest -m cuda`, run by
`python -m benchmarks.gpu`): every view of a float32 trace against eager attention of a float64
copy of the same model on the same GPU, within 1e-5.

The CPU suite runs the same families on the interpreted kernels (test_models.py, test_masks*.py,
test_position_bias.py); this is the compiled, on-device counterpart.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_masks_native import SEGMENTS, _packed_positions
from test_position_bias import build as build_t5

from attnscope import Extractor

from eager import check_views, decoder_inputs, eager_attentions
from tiny_models import FAMILIES, build, random_text, word_tokenizer

pytestmark = pytest.mark.cuda


def _on_gpu(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(float32 model, float64 reference copy), both on the GPU."""
    model = model.float().cuda().eval()
    return model, copy.deepcopy(model).double()


@pytest.mark.parametrize("family", [*FAMILIES, "llama4_chunked"])
def test_family_on_the_compiled_kernels(family, rng):
    model, reference = _on_gpu(build(family, dtype=torch.float32))
    tok = word_tokenizer()
    text = random_text(35, rng)
    tr = Extractor(model, tok).trace(text)
    ids = tok(text, return_tensors="pt")["input_ids"].cuda()
    dec = decoder_inputs(reference, ids.cpu()).cuda() if model.config.is_encoder_decoder else None
    eager = eager_attentions(reference, ids, None, dec)
    if family == "llama4_chunked":
        eager = {"decoder": next(iter(eager.values()))}
    check_views(tr, eager)


def test_relative_bias_on_the_compiled_kernels(rng):
    model, reference = _on_gpu(build_t5("t5_base"))
    tok = word_tokenizer()
    text, target = random_text(41, rng), random_text(29, rng)
    tr = Extractor(model, tok).trace(text, target=target)
    ids = tok(text, return_tensors="pt")["input_ids"].cuda()
    dec = decoder_inputs(reference, tok(target, return_tensors="pt")["input_ids"]).cuda()
    check_views(tr, eager_attentions(reference, ids, None, dec))


def test_packed_sequences_on_the_compiled_kernels(rng):
    model, reference = _on_gpu(build("llama", dtype=torch.float32))
    ids = torch.randint(4, 100, (1, sum(SEGMENTS)), generator=rng).cuda()
    positions = _packed_positions(SEGMENTS).cuda()
    tr = Extractor(model, None).trace(inputs={"input_ids": ids, "position_ids": positions})
    reference.set_attn_implementation("eager")
    with torch.no_grad():
        out = reference(input_ids=ids, position_ids=positions, output_attentions=True, use_cache=False)
    check_views(tr, {"decoder": [a[0] for a in out.attentions]})
