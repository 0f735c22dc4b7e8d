"""Models spread over devices (issue 17, item 4), proven on a machine without a GPU: accelerate's
CPU and disk offload, with layers whose weights live on "meta" until accelerate's hooks bring them
in. An offloaded model's trace equals the on-device one view for view; TraceInfo reports where
the captured Q/K are held."""

from __future__ import annotations

import pytest

pytest.importorskip("accelerate")
import torch

from attnscope import Extractor, views
from attnscope.service import AttentionCore, Limits
from attnscope.service.core import collect

from tiny_models import build_lm, word_tokenizer

TEXT = "w5 w8 w13 w21 w5 w8 w34 w55 w5 w8"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama-lm")
    model, tok = build_lm("llama", dtype=torch.float32), word_tokenizer()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


#: Layer 0 on the CPU, layer 1 and the output head offloaded to disk (weights on meta).
SPLIT = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "lm_head": "disk",
}


def _same_views(tr, ref) -> None:
    assert tr.shape() == ref.shape()
    for layer in range(ref.num_layers):
        for head in range(ref.num_heads):
            torch.testing.assert_close(
                tr.attention(layer, head), ref.attention(layer, head), atol=1e-6, rtol=0
            )
    torch.testing.assert_close(tr.pooled(4), ref.pooled(4), atol=1e-6, rtol=0)
    torch.testing.assert_close(tr.received(), ref.received(), atol=1e-5, rtol=0)
    for name, value in ref.head_stats().items():
        torch.testing.assert_close(tr.head_stats()[name], value, atol=1e-5, rtol=0, msg=name)


def test_an_offloaded_model_traces_and_generates_as_the_model_on_one_device(checkpoint, tmp_path):
    ref_ex = Extractor.from_pretrained(checkpoint)
    ex = Extractor.from_pretrained(checkpoint, device_map=SPLIT, offload_folder=tmp_path / "offload")
    offloaded = {n for n, p in ex.model.named_parameters() if p.device.type == "meta"}
    assert any(n.startswith("model.layers.1.") for n in offloaded)  # really dispatched from disk
    assert not any(n.startswith("model.layers.0.") for n in offloaded)
    assert ex.device == torch.device("cpu")
    _same_views(ex.trace(TEXT), ref_ex.trace(TEXT))
    gen, ref_gen = ex.trace(TEXT, generate=5), ref_ex.trace(TEXT, generate=5)
    assert gen.generated.ids == ref_gen.generated.ids
    _same_views(gen, ref_gen)
    assert gen.bytes_by_device() == {"cpu": gen.nbytes()}


def test_device_map_auto_on_a_cpu_machine_and_the_memory_the_service_reports(checkpoint):
    ex = Extractor.from_pretrained(checkpoint, device_map="auto")
    assert {p.device.type for p in ex.model.parameters()} == {"cpu"}  # no GPU here: all of it on the CPU
    core = AttentionCore({"split": ex}, Limits())
    got = collect(core.extract(_request(TEXT)))
    tr = ex.trace(TEXT)
    assert [(m.device, m.trace_bytes) for m in got.info.device_memory] == [("cpu", tr.nbytes())]
    assert tr.nbytes() == sum(
        lqk.q.numel() * lqk.q.element_size() + lqk.k.numel() * lqk.k.element_size()
        for lqk in (tr.layer_qk(i) for i in range(tr.num_layers))
    )


def _request(text: str):
    from attnscope import proto

    return proto.ExtractRequest(text=text, views=[views.head_stats()])


def test_serve_takes_a_device_map_and_refuses_an_offload_folder_alone(checkpoint, tmp_path):
    from attnscope.cli import _load_models, build_parser

    args = build_parser().parse_args(
        ["serve", "--model", f"lm={checkpoint}", "--device-map", "auto", "--offload-folder", str(tmp_path)]
    )
    assert (args.device_map, args.offload_folder) == ("auto", str(tmp_path))
    models = _load_models(args.model, args.device, args.dtype, args.device_map, args.offload_folder)
    assert {p.device.type for p in models["lm"].model.parameters()} == {"cpu"}
    with pytest.raises(ValueError, match="offload_folder needs a device_map"):
        Extractor.from_pretrained(checkpoint, offload_folder=tmp_path)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (a real split)")
def test_a_model_split_over_two_gpus_keeps_each_layers_views_on_its_gpu(checkpoint):
    split = {**SPLIT, "model.layers.0": "cuda:0", "model.layers.1": "cuda:1", "lm_head": "cuda:1"}
    ex = Extractor.from_pretrained(checkpoint, device_map=split, dtype=torch.float32)
    tr, ref = ex.trace(TEXT), Extractor.from_pretrained(checkpoint, device="cuda:0").trace(TEXT)
    assert {str(tr.layer_qk(i).q.device) for i in range(tr.num_layers)} == {"cuda:0", "cuda:1"}
    assert set(tr.bytes_by_device()) == {"cuda:0", "cuda:1"}
    _same_views(tr, ref)  # token ids, row weights and blocks follow each layer's device
    torch.testing.assert_close(tr.rollout([3, 7]), ref.rollout([3, 7]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        tr.span_pooled([(0, 4), (4, 12)]), ref.span_pooled([(0, 4), (4, 12)]), atol=1e-5, rtol=0
    )
