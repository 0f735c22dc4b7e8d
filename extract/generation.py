"""Generation before tracing: the model writes a continuation with its own attention and cache.

`Extractor.trace(prompt, generate=N, ...)` calls `generate_ids` (greedy unless sampling is asked
for, a seed for reproducible sampling), then traces prompt + completion in one captured forward
pass. Generation runs with the model's plain ``sdpa`` implementation (``eager`` where the model
has no SDPA path), never the capture: the cache and the fast kernels are the model's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .inputs import Encoded

#: Options `generate_ids` takes besides the count: the ones the service exposes.
SAMPLING_OPTIONS = ("do_sample", "temperature", "top_k", "top_p", "seed")


@dataclass(frozen=True)
class Generated:
    """What a generation trace generated: token ids and their decoded text."""

    ids: list[int]
    text: str


def can_generate(model: torch.nn.Module) -> bool:
    """Whether `model` has a language-modelling head `generate` can decode from (a *ForCausalLM /
    *LMHeadModel); base models (AutoModel) and encoder-decoders are refused."""
    if getattr(model.config, "is_encoder_decoder", False):
        return False
    has_head = callable(getattr(model, "get_output_embeddings", None)) and model.get_output_embeddings()
    return bool(has_head) and callable(getattr(model, "generate", None))


def check_generation(model: torch.nn.Module, new_tokens) -> int:
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
        raise ValueError(f"generate must be a positive number of new tokens, got {new_tokens!r}")
    if not can_generate(model):
        kind = "an encoder-decoder" if getattr(model.config, "is_encoder_decoder", False) else "a base model"
        raise ValueError(
            f"{type(model).__name__} cannot generate: it is {kind} without a language-modelling "
            "head. Load the checkpoint as a causal LM (Extractor.from_pretrained does when the "
            "checkpoint was saved from one, or wrap AutoModelForCausalLM yourself)"
        )
    return new_tokens


@contextlib.contextmanager
def _plain_attention(model: torch.nn.Module):
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation("sdpa")
    except (ValueError, ImportError):  # no SDPA path in this architecture
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


class _Progress:
    """A StoppingCriteria that reports each new token and stops when `should_stop()` says so."""

    def __init__(self, prompt_len: int, report: Callable[[int], None], should_stop: Callable[[], bool]):
        self.prompt_len, self.report, self.should_stop = prompt_len, report, should_stop

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.report(input_ids.shape[1] - self.prompt_len)
        stop = self.should_stop()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def generate_ids(
    model: torch.nn.Module,
    prompt_ids: list[int],
    new_tokens: int,
    *,
    pad_token_id: int | None = None,
    report: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options,
) -> list[int]:
    """The ids `model.generate` appends to `prompt_ids` (at most `new_tokens`; fewer at an
    end-of-sequence token). Greedy unless ``do_sample=True``; ``seed`` seeds sampling without
    touching the caller's random state; other options go to `generate` as they are.
    `report(n)` is called after each new token; `should_stop()` True ends generation early."""
    from transformers import StoppingCriteriaList

    new_tokens = check_generation(model, new_tokens)
    seed = options.pop("seed", None)
    options.setdefault("do_sample", False)
    if not options["do_sample"]:
        # The checkpoint's generation config may set sampling knobs; greedy ignores them anyway.
        for knob in ("temperature", "top_k", "top_p"):
            options.setdefault(knob, None)
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], dtype=torch.int64, device=device)
    criteria = StoppingCriteriaList()
    if report is not None or should_stop is not None:
        criteria.append(
            _Progress(len(prompt_ids), report or (lambda n: None), should_stop or (lambda: False))
        )
    devices = [device] if device.type == "cuda" else []
    with (
        torch.random.fork_rng(devices=devices),
        _plain_attention(model),
        torch.inference_mode(),
    ):
        torch.manual_seed(0 if seed is None else int(seed))
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            pad_token_id=pad_token_id,
            stopping_criteria=criteria,
            **options,
        )
    return out[0, len(prompt_ids) :].tolist()


def extend(item: Encoded, new_ids: list[int], tokenizer) -> Encoded:
    """The prompt's encoding followed by the generated ids: their tokens from the tokenizer, the
    prompt's sentence starts kept and the completion starting a sentence of its own."""
    ids = item.ids + new_ids
    if tokenizer is None:  # as encode_ids labels ids without a tokenizer
        names = [str(i) for i in new_ids]
    else:
        names = tokenizer.convert_ids_to_tokens(new_ids) if new_ids else []
    # An id the tokenizer has no entry for (a model's vocabulary may be padded past it) still needs a label.
    tokens = item.tokens + [
        t if isinstance(t, str) else f"<id {i}>" for t, i in zip(names, new_ids, strict=True)
    ]
    types = item.token_types + [item.token_types[-1]] * len(new_ids) if item.token_types else None
    starts = None
    if item.sentence_starts is not None:
        starts = item.sentence_starts + ([len(item.ids)] if new_ids else [])
    return Encoded(ids, tokens, types, item.sentence_b_start, starts)


def decoded(tokenizer, new_ids: list[int]) -> Generated:
    text = tokenizer.decode(new_ids, skip_special_tokens=False) if tokenizer is not None else ""
    return Generated(list(new_ids), text)
