"""Model loading without network, and how models are named.

A Hub id that is not in the local Hugging Face cache fails at once, naming the model and how to
get it, when the Hub cannot be reached (HF_HUB_OFFLINE unset, HF_ENDPOINT pointing at a closed
port on this machine, so nothing leaves it) and with HF_HUB_OFFLINE=1; a cached one loads from
the cache. Models are named by their Hub id, a folder's name or all-MiniLM-L6-v2, never by an
absolute site-packages path; an operator's own name wins."""

from __future__ import annotations

import json
import time

import pytest
import torch
from test_bertviz_api import embedded

from attnscope import Extractor
from attnscope.cli import _load_models
from attnscope.cli import main as cli_main
from attnscope.extract import DEFAULT_MODEL_NAME, default_model_path
from attnscope.extract import default_model as dm
from attnscope.extract.default_model import ModelNotAvailable, display_name
from attnscope.service import AttentionCore
from attnscope.service.core import trace_info

from tiny_models import build, word_tokenizer

MISSING = "attnscope-tests/not-cached"
CACHED = "attnscope-tests/tiny-bert"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: refused at once, nothing leaves the machine


def save_tiny(folder):
    folder.mkdir(parents=True, exist_ok=True)
    build("bert", dtype=torch.float32).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty HF_HOME of this test's own with one cached model (CACHED), and an unreachable Hub."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / f"models--{CACHED.replace('/', '--')}"
    save_tiny(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "hf" / "hub"


def assert_advice(message: str, why: str):
    assert f"model '{MISSING}' is not in the local Hugging Face cache" in message
    assert why in message
    assert f"huggingface-cli download {MISSING}" in message and "HF_HOME" in message and "local" in message


def test_unreachable_hub_fails_fast_with_advice(hub_cache):
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable) as caught:
        Extractor.from_pretrained(MISSING, device="cpu")
    assert time.monotonic() - started < 10
    assert_advice(str(caught.value), f"the Hugging Face Hub ({UNREACHABLE}) cannot be reached")
    assert str(hub_cache) in str(caught.value)


def test_hf_hub_offline_fails_fast_without_probing(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(dm, "hub_reachable", lambda *a: pytest.fail("probed the Hub while offline"))
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable) as caught:
        Extractor.from_pretrained(MISSING, device="cpu")
    assert time.monotonic() - started < 10
    assert_advice(str(caught.value), "HF_HUB_OFFLINE=1 forbids downloading it")


@pytest.mark.parametrize("command", [["trace", "w1 w2"], ["serve", "--http-port", "-1", "--grpc-port", "0"]])
def test_cli_fails_fast_with_advice(hub_cache, capsys, command):
    started = time.monotonic()
    assert cli_main([*command, "--model", MISSING]) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert err.startswith("attnscope: error: ") and "cannot be reached" in err
    assert f"huggingface-cli download {MISSING}" in err


@pytest.mark.parametrize("offline", [False, True])
def test_a_cached_model_loads_without_the_hub(hub_cache, monkeypatch, offline):
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    ex = Extractor.from_pretrained(CACHED, device="cpu")
    assert time.monotonic() - started < 10
    assert ex.name == CACHED and ex.trace("w1 w2 w3").num_layers == 2
    (served,) = AttentionCore(_load_models([CACHED], "cpu", None)).list_models().models
    assert served.name == CACHED


def test_a_missing_local_folder_is_not_looked_up_on_the_hub(hub_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(dm, "hub_reachable", lambda *a: pytest.fail("probed the Hub for a path"))
    with pytest.raises(ModelNotAvailable, match="no model folder at /nowhere/ckpt"):
        Extractor.from_pretrained("/nowhere/ckpt", device="cpu")


def test_display_names(tmp_path):
    bundled = default_model_path()
    assert display_name(None) == display_name(bundled) == display_name(f"{bundled}/") == DEFAULT_MODEL_NAME
    assert display_name("gpt2") == "gpt2" and display_name("openai-community/gpt2") == "openai-community/gpt2"
    snapshot = tmp_path / "hub" / "models--openai-community--gpt2" / "snapshots" / "abc"
    assert display_name(snapshot) == "openai-community/gpt2"
    assert display_name("/usr/lib/python3/site-packages/some_models/model") == "some_models"
    assert display_name(tmp_path / "runs" / "my-bert") == "my-bert"


def test_served_and_traced_names_are_never_site_packages_paths(tmp_path):
    bundled = Extractor.from_pretrained(device="cpu")
    assert bundled.name == DEFAULT_MODEL_NAME
    assert Extractor(bundled.model, bundled.tokenizer).name == DEFAULT_MODEL_NAME  # from _name_or_path
    assert "site-packages" in bundled.model.config._name_or_path  # what used to be shown
    local = save_tiny(tmp_path / "checkpoints" / "tiny-bert")
    models = _load_models(["", str(local), f"mine={local}"], "cpu", None)
    assert list(models) == [DEFAULT_MODEL_NAME, "tiny-bert", "mine"]
    with pytest.raises(ValueError, match=r"both named 'tiny-bert'.*NAME=PATH"):
        _load_models([str(local), str(local)], "cpu", None)
    # Keys given as paths are shown by name, and requests naming the path still reach the model.
    core = AttentionCore({str(default_model_path()): bundled, "tiny": models["tiny-bert"]})
    assert [m.name for m in core.list_models().models] == [DEFAULT_MODEL_NAME, "tiny"]
    assert core.model_name(str(default_model_path())) == DEFAULT_MODEL_NAME
    assert trace_info(bundled.trace("a b"), core.model_name("")).model == DEFAULT_MODEL_NAME


def test_cli_export_and_neuron_view_titles(tmp_path):
    local = save_tiny(tmp_path / "checkpoints" / "tiny-bert")
    out = tmp_path / "t.html"
    assert cli_main(["export", "w1 w2", "--model", str(local), "--out", str(out), "--device", "cpu"]) == 0
    page = out.read_text()
    data = json.loads(page.split('id="attnscope-data" type="application/json">')[1].split("</script>")[0])
    assert data["info"]["model"] == "tiny-bert" and data["initialState"]["model"] == "tiny-bert"
    bundled = Extractor.from_pretrained(device="cpu")
    import attnscope

    data = embedded(attnscope.neuron_view(bundled.model, bundled.tokenizer, "a b", html_action="return"))
    assert data["info"]["model"] == DEFAULT_MODEL_NAME
    assert [m["name"] for m in data["serverInfo"]["models"]] == [DEFAULT_MODEL_NAME]
