"""attnscope's head_view, model_view and neuron_view against bertviz's Python API (bertviz 1.4:
`head_view`, `model_view`, `neuron_view.show`): every bertviz argument is accepted with bertviz's
meaning, and every notebook embed is the view-only viewer. Tiny random models, no network."""

from __future__ import annotations

import base64
import html
import inspect
import json
import re

import numpy as np
import pytest
import torch

import attnscope
from attnscope.service.exports import notebook

from tiny_models import build, word_tokenizer

TEXT = "w1 w2 w3 w4 w5"

#: bertviz 1.4.1's signatures (bertviz/head_view.py, model_view.py, neuron_view.py), as (name, default).
BERTVIZ_HEAD_VIEW = [("attention", None), ("tokens", None), ("sentence_b_start", None), ("prettify_tokens", True),
                     ("layer", None), ("heads", None), ("encoder_attention", None), ("decoder_attention", None),
                     ("cross_attention", None), ("encoder_tokens", None), ("decoder_tokens", None),
                     ("include_layers", None), ("html_action", "view")]  # fmt: skip
BERTVIZ_MODEL_VIEW = [("attention", None), ("tokens", None), ("sentence_b_start", None), ("prettify_tokens", True),
                      ("display_mode", "dark"), ("encoder_attention", None), ("decoder_attention", None),
                      ("cross_attention", None), ("encoder_tokens", None), ("decoder_tokens", None),
                      ("include_layers", None), ("include_heads", None), ("html_action", "view")]  # fmt: skip


def embedded(markup) -> dict:
    """The data a returned embed carries (the iframe's srcdoc's attnscope-data)."""
    text = markup.data if hasattr(markup, "data") else markup
    document = html.unescape(re.search(r'srcdoc="(.*?)"', text, re.S).group(1))
    return json.loads(
        re.search(r'id="attnscope-data" type="application/json">(.*?)</script>', document).group(1)
    )


def f16(tensor: dict) -> np.ndarray:
    values = np.frombuffer(base64.b64decode(tensor["data"]), "<f2")
    return values.reshape([int(n) for n in tensor["shape"]])


@pytest.fixture(scope="module")
def bert():
    model, tok = build("bert", dtype=torch.float32), word_tokenizer()
    enc = tok(TEXT, return_tensors="pt")
    with torch.no_grad():
        attention = model(**enc, output_attentions=True).attentions
    return model, tok, attention, tok.convert_ids_to_tokens(enc["input_ids"][0])


def test_signatures_are_bertvizs():
    for fn, expected in (
        (attnscope.head_view, BERTVIZ_HEAD_VIEW),
        (attnscope.model_view, BERTVIZ_MODEL_VIEW),
    ):
        params = inspect.signature(fn).parameters.values()
        assert [(p.name, p.default) for p in params] == expected, fn.__name__
    assert attnscope.neuron_view.show is attnscope.neuron_view  # bertviz's `neuron_view.show`


def test_head_view_include_layers_keeps_the_model_layer_numbers(bert):
    _, _, attention, tokens = bert
    data = embedded(attnscope.head_view(attention, tokens, layer=1, heads=[0, 3], include_layers=[1],
                                        html_action="return"))  # fmt: skip
    state = data["initialState"]
    assert state["viewOnly"] is True and state["view"] == "head"
    assert state["layerNumbers"] == [1] and state["layer"] == 0  # embedded layer 0 is the model's layer 1
    assert data["layerNumbers"] == {"encoder": [1]}  # what the viewer labels its layers with
    assert state["heads"] == "0,3"
    (layer,) = data["attention"]["encoder"]
    np.testing.assert_allclose(f16(layer[2]), attention[1][0, 2].numpy(), atol=1e-3)
    with pytest.raises(ValueError, match=r"layer 0 is not in include_layers \[1\]"):
        attnscope.head_view(attention, tokens, layer=0, include_layers=[1], html_action="return")
    with pytest.raises(ValueError, match="include_layers holds 5"):
        attnscope.head_view(attention, tokens, include_layers=[5], html_action="return")
    plain = embedded(attnscope.head_view(attention, tokens, layer=1, html_action="return"))["initialState"]
    assert plain["layer"] == 1 and "layerNumbers" not in plain


def test_model_view_include_layers_and_heads(bert):
    _, _, attention, tokens = bert
    data = embedded(attnscope.model_view(attention, tokens, include_layers=[1, 0], include_heads=[3, 1],
                                         html_action="return"))  # fmt: skip
    state = data["initialState"]
    assert state == {**state, "viewOnly": True, "view": "model", "theme": "dark"}  # bertviz's default
    assert state["layerNumbers"] == [1, 0] and state["headNumbers"] == [3, 1]
    grid = data["attention"]["encoder"]
    assert len(grid) == 2 and len(grid[0]) == 2
    np.testing.assert_allclose(f16(grid[0][0]), attention[1][0, 3].numpy(), atol=1e-3)
    np.testing.assert_allclose(f16(grid[1][1]), attention[0][0, 1].numpy(), atol=1e-3)
    light = embedded(attnscope.model_view(attention, tokens, display_mode="light", html_action="return"))
    assert light["initialState"]["theme"] == "light"
    with pytest.raises(ValueError, match="display_mode must be"):
        attnscope.model_view(attention, tokens, display_mode="blue", html_action="return")


def test_prettify_tokens_and_sentence_b_start(bert):
    _, _, attention, _ = bert
    tokens = ["[CLS]", "Ġw1", "▁w2", "w3</w>", "w4", "w5", "[SEP]"]
    kinds = embedded(attnscope.head_view(attention, tokens, sentence_b_start=4, html_action="return"))["info"]
    assert kinds["kinds"][0]["queryTokens"][:4] == ["[CLS]", " w1", " w2", "w3"]
    assert kinds["kinds"][0]["sentenceBStart"] == 4
    raw = embedded(attnscope.head_view(attention, tokens, prettify_tokens=False, html_action="return"))
    assert raw["info"]["kinds"][0]["queryTokens"] == tokens


def test_html_action_view_displays_and_return_returns(bert, monkeypatch):
    _, _, attention, tokens = bert
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    assert attnscope.head_view(attention, tokens) is None  # html_action="view", bertviz's default
    assert attnscope.model_view(attention, tokens, html_action="view") is None
    from IPython.display import HTML

    assert len(shown) == 2 and all(isinstance(s, HTML) for s in shown)
    assert isinstance(attnscope.head_view(attention, tokens, html_action="return"), HTML)
    for fn in (attnscope.head_view, attnscope.model_view):
        with pytest.raises(ValueError, match="html_action must be 'view' or 'return'"):
            fn(attention, tokens, html_action="print")


def test_encoder_decoder_arguments():
    model, tok = build("bart", dtype=torch.float32), word_tokenizer()
    src, tgt = (
        tok("w1 w2 w3 w4", return_tensors="pt")["input_ids"],
        tok("w5 w6", return_tensors="pt")["input_ids"],
    )
    with torch.no_grad():
        out = model(input_ids=src, decoder_input_ids=tgt, output_attentions=True)
    names = {
        "encoder_tokens": tok.convert_ids_to_tokens(src[0]),
        "decoder_tokens": tok.convert_ids_to_tokens(tgt[0]),
    }
    data = embedded(attnscope.model_view(
        encoder_attention=out.encoder_attentions, decoder_attention=out.decoder_attentions,
        cross_attention=out.cross_attentions, include_layers=[1], html_action="return", **names))  # fmt: skip
    assert set(data["attention"]) == {"encoder", "decoder", "cross"}
    assert all(len(layers) == 1 for layers in data["attention"].values())
    assert data["initialState"]["layerNumbers"] == [1]
    with pytest.raises(ValueError, match="pass none of the encoder-decoder arguments"):
        attnscope.head_view(out.encoder_attentions, names["encoder_tokens"],
                            encoder_attention=out.encoder_attentions, html_action="return")  # fmt: skip


def test_neuron_view_takes_bertviz_argument_order(bert):
    model, tok, _, _ = bert
    data = embedded(attnscope.neuron_view(model, "bert", tok, "w1 w2 w3", "w4 w5", layer=1, head=2,
                                          html_action="return"))  # fmt: skip
    state = data["initialState"]
    assert (
        state["viewOnly"] is True and state["view"] == "neuron" and (state["layer"], state["head"]) == (1, 2)
    )
    assert state["theme"] == "dark" and state["pair"] == "w4 w5"  # bertviz's default display_mode
    assert data["info"]["kinds"][0]["sentenceBStart"] == 5
    by_name = embedded(attnscope.neuron_view.show(model=model, model_type="bert", tokenizer=tok, sentence_a="w1 w2",
                                                  display_mode="light", html_action="return"))  # fmt: skip
    assert by_name["initialState"]["theme"] == "light" and (
        by_name["initialState"]["layer"],
        by_name["initialState"]["head"],
    ) == (0, 0)
    # bertviz's forked models know gpt2 by model_type; attnscope reads causality from the model
    gpt2 = build("gpt2", dtype=torch.float32)
    assert embedded(attnscope.neuron_view(gpt2, "gpt2", tok, "w1 w2 w3", html_action="return"))["info"][
        "kinds"
    ]


def test_neuron_view_takes_attnscope_argument_order(bert):
    model, tok, _, _ = bert
    state = embedded(attnscope.neuron_view(model, tok, "w1 w2 w3", layer=1, head=3, html_action="return"))[
        "initialState"
    ]
    assert (state["layer"], state["head"], state["theme"], state["viewOnly"]) == (1, 3, "light", True)
    state = embedded(attnscope.neuron_view(model, tokenizer=tok, sentence_a="w1", html_action="return"))[
        "initialState"
    ]
    assert state["text"] == "w1"


def test_neuron_view_refuses_other_arguments_clearly(bert):
    model, tok, _, _ = bert
    bad = [
        ((model, "w1 w2"), {}),  # no tokenizer
        ((model, tok), {}),  # no sentence
        ((model, "bert", "w1 w2", tok), {}),  # sentence and tokenizer swapped
        ((model, tok, "w1"), {"colour": "red"}),  # not an argument of either
        ((model, "bert", tok, "w1", None, "dark", 0, 0, "view", "extra"), {}),
    ]
    for args, kwargs in bad:
        with pytest.raises(
            TypeError, match=r"neuron_view takes bertviz's arguments.*model_type.*or attnscope's"
        ):
            attnscope.neuron_view(*args, **kwargs)
    with pytest.raises(ValueError, match=r"layer must be 0..1, got 7"):
        attnscope.neuron_view(model, "bert", tok, "w1", layer=7, html_action="return")
    with pytest.raises(ValueError, match="html_action must be"):
        attnscope.neuron_view(model, tok, "w1", html_action="print")


def test_show_embeds_the_view_only_viewer(bert):
    model, tok, _, _ = bert
    trace = attnscope.Extractor(model, tok).trace("w1 w2")
    state = embedded(attnscope.show(trace, view="model", html_action="return"))["initialState"]
    assert state["viewOnly"] is True and state["view"] == "model"
    assert notebook.VIEW_ONLY == {"viewOnly": True}
