"""`Extractor`: runs a transformers model once per input with Q/K capture, and returns `Trace`s."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from .capture import IMPLEMENTATION, CapturedCall, capturing, register
from .default_model import default_model_path
from .dense import DenseTrace
from .inputs import Encoded, encode, encode_ids, encode_target, pad
from .trace import LayerQK, Trace

#: The eager fallback holds every layer's and head's L×L attention at once: at most this many bytes
#: (float32), e.g. 24 layers × 16 heads at 2,048 tokens is 6.4 GB, over it; 1,024 tokens is 1.6 GB.
EAGER_MAX_BYTES = 2 * 2**30

_CROSS_NAME_HINTS = ("encoder_attn", "crossattention", "cross_attn")


def _max_positions(model: torch.nn.Module) -> int | None:
    """Longest input the model's learned absolute position table can index, if it has one."""
    limit = None
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Embedding):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in ("position_embeddings", "wpe", "embed_positions"):
            continue
        n = module.num_embeddings - int(getattr(module, "offset", 0) or 0)
        if leaf == "position_embeddings" and module.padding_idx is not None:
            n -= module.padding_idx + 1  # RoBERTa numbers positions from padding_idx + 1
        limit = n if limit is None else min(limit, n)
    return limit


def _derives_positions_from_padding(model: torch.nn.Module) -> bool:
    # RoBERTa-style embeddings compute positions from input_ids and padding_idx themselves.
    return any(type(m).__name__.endswith("Embeddings") and hasattr(m, "padding_idx") for m in model.modules())


class InputTooLong(ValueError):
    """An input has more tokens (special tokens included) than the caller's `max_tokens`."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(f"the input is {tokens:,} tokens; at most {limit:,} are accepted")
        self.tokens, self.limit = tokens, limit


class EagerTooLong(InputTooLong):
    """An input too long for the eager fallback, whose dense attentions would not fit."""

    def __init__(self, model: str, tokens: int, limit: int, need: int) -> None:
        ValueError.__init__(
            self,
            f"{model} does not dispatch attention through transformers' AttentionInterface, so "
            f"attnscope falls back to eager output_attentions, which holds every layer's and head's "
            f"L×L attention at once: {tokens:,} tokens need {need / 2**30:.1f} GiB, over the "
            f"{EAGER_MAX_BYTES / 2**30:g} GiB the fallback allows; send at most {limit:,} tokens",
        )
        self.tokens, self.limit = tokens, limit


class Extractor:
    """Wraps a transformers model (and its tokenizer) and traces its attention.

    The model is put in eval mode. During `trace` its attention implementation is switched to
    ``"attnscope"`` and restored afterwards; outputs equal the plain ``sdpa`` implementation's.
    One Extractor runs one trace at a time (the switch is per model): serve concurrent callers
    from one worker per model, as the service does.
    """

    def __init__(self, model: torch.nn.Module, tokenizer=None) -> None:
        register()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._forward_params = set(inspect.signature(model.forward).parameters)
        self._names = {id(m): n for n, m in model.named_modules()}
        self._enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
        self._encoder_prefix = None
        if self._enc_dec:
            self._encoder_prefix = self._names[id(model.get_encoder())] + "."
        self.max_positions = _max_positions(model)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path | None = None, device: str | torch.device | None = None, dtype=None
    ) -> Extractor:
        """Load a model and tokenizer; None loads the bundled all-MiniLM-L6-v2.

        device None -> "cuda" if available else "cpu". dtype None -> float32 on CPU, the
        checkpoint's own dtype on a GPU. Remote code is never trusted.
        """
        from transformers import AutoModel, AutoTokenizer

        register()
        path = default_model_path() if name_or_path is None else name_or_path
        device = torch.device(
            device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        if dtype is None:
            dtype = torch.float32 if device.type == "cpu" else "auto"
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModel.from_pretrained(
            path, dtype=dtype, attn_implementation=IMPLEMENTATION, trust_remote_code=False
        ).to(device)
        return cls(model, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- public entry points -----------------------------------------------------------------
    def trace(
        self,
        text: str | None = None,
        pair: str | None = None,
        *,
        input_ids: torch.Tensor | None = None,
        target: str | None = None,
        deadline: float | None = None,
        max_tokens: int | None = None,
    ) -> Trace:
        """Trace one input: a text (with an optional second sentence `pair`) or `input_ids` [1, L].

        Encoder-decoder models also take `target`, the decoder's text (its tokens shifted right
        behind the decoder start token); without it the decoder reads `text`. `deadline`, a
        time.monotonic() value, stops the forward pass between layers with TimeoutError.
        `max_tokens` refuses a longer input (InputTooLong) before the model runs.
        """
        if (text is None) == (input_ids is None):
            raise ValueError("pass exactly one of text or input_ids")
        if input_ids is not None:
            if pair is not None:
                raise ValueError("pair needs text, not input_ids")
            item = encode_ids(self.tokenizer, input_ids, self.model.config.get_text_config().vocab_size)
        else:
            item = encode(self._need_tokenizer(), text, pair)
        if max_tokens is not None and len(item.ids) > max_tokens:
            raise InputTooLong(len(item.ids), max_tokens)
        targets = None
        if self._enc_dec:
            targets = [self._target(target if target is not None else text)]
        elif target is not None:
            raise ValueError("target is only for encoder-decoder models")
        return self._run([item], targets, deadline)[0]

    def trace_batch(
        self, texts: list[str], pairs: list[str | None] | None = None, targets: list[str] | None = None
    ) -> list[Trace]:
        """Trace several texts in one padded forward pass; each Trace holds only its own tokens."""
        if isinstance(texts, str) or not texts:
            raise ValueError("texts must be a non-empty list of strings")
        tok = self._need_tokenizer()
        pairs = pairs if pairs is not None else [None] * len(texts)
        if len(pairs) != len(texts):
            raise ValueError(f"pairs must have {len(texts)} entries, got {len(pairs)}")
        items = [encode(tok, t, p) for t, p in zip(texts, pairs, strict=True)]
        dec = None
        if self._enc_dec:
            targets = targets if targets is not None else texts
            if len(targets) != len(texts):
                raise ValueError(f"targets must have {len(texts)} entries, got {len(targets)}")
            dec = [self._target(t) for t in targets]
        elif targets is not None:
            raise ValueError("targets are only for encoder-decoder models")
        return self._run(items, dec)

    def verify(self, text_or_inputs, max_tokens: int = 128, **kwargs):
        """Check this model's trace against transformers' eager attention on the same input (at
        most `max_tokens` tokens): a `VerifyReport`, see extract/verify.py for what is compared
        and at which tolerance. The model is restored afterwards."""
        from .verify import verify

        return verify(self, text_or_inputs, max_tokens, **kwargs)

    # ---- internals ---------------------------------------------------------------------------
    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this Extractor has no tokenizer: pass input_ids, or wrap the model with one")
        return self.tokenizer

    def _target(self, target: str) -> Encoded:
        start = getattr(self.model.config, "decoder_start_token_id", None)
        if start is None:
            raise ValueError("the model config has no decoder_start_token_id")
        return encode_target(self._need_tokenizer(), target, start)

    def _pad_id(self) -> int:
        tok = self.tokenizer
        for candidate in (
            getattr(tok, "pad_token_id", None),
            getattr(self.model.config, "pad_token_id", None),
            getattr(tok, "eos_token_id", None),
        ):
            if candidate is not None:
                return int(candidate)
        return 0

    def _check_length(self, items: list[Encoded], what: str) -> None:
        longest = max(len(i.ids) for i in items)
        if self.max_positions is not None and longest > self.max_positions:
            raise ValueError(
                f"{what} has {longest} tokens but this model's position table holds {self.max_positions}"
            )

    def _kind(self, call: CapturedCall) -> str:
        name = self._names.get(id(call.module), "")
        if getattr(call.module, "is_cross_attention", False) or any(
            h in name.lower() for h in _CROSS_NAME_HINTS
        ):
            return "cross"
        if self._enc_dec:
            return "encoder" if name.startswith(self._encoder_prefix) else "decoder"
        return "decoder" if call.spec.causal else "encoder"

    def _run(
        self, items: list[Encoded], targets: list[Encoded] | None, deadline: float | None = None
    ) -> list[Trace]:
        self._check_length(items, "the input")
        side = getattr(self.tokenizer, "padding_side", "right") or "right"
        src = pad(items, self._pad_id(), side)
        device = self.device
        kwargs: dict = {"input_ids": src.ids.to(device), "attention_mask": src.mask.to(device)}
        if src.token_types is not None and "token_type_ids" in self._forward_params:
            kwargs["token_type_ids"] = src.token_types.to(device)
        if (
            side == "left"
            and len(items) > 1
            and not self._enc_dec
            and "position_ids" in self._forward_params
            and not _derives_positions_from_padding(self.model)
        ):
            # As generation does for left padding: each item's positions start at 0 at its first token.
            kwargs["position_ids"] = (src.mask.cumsum(-1) - 1).clamp(min=0).to(device)
        tgt = None
        if targets is not None:
            self._check_length(targets, "the target")
            tgt = pad(targets, self._pad_id(), "right")  # the causal decoder reads right-padded input
            kwargs["decoder_input_ids"] = tgt.ids.to(device)
            kwargs["decoder_attention_mask"] = tgt.mask.to(device)
        if "use_cache" in self._forward_params:
            kwargs["use_cache"] = False
        with capturing(self.model, deadline) as recording, torch.inference_mode():
            self.model(**kwargs)
        if not recording.calls:  # attention code of its own (BLOOM's ALiBi, ...): the eager fallback
            return self._eager(kwargs, src, items, targets)
        return [self._split(recording.calls, b, src, tgt, items, targets) for b in range(len(items))]

    def _eager(self, kwargs: dict, src, items: list[Encoded], targets) -> list:
        """Dense traces from eager `output_attentions`, for models whose attention does not pass
        through transformers' AttentionInterface. Bounded: the attentions of every layer and head
        are L×L each, held at once (EAGER_MAX_BYTES)."""
        name = type(self.model).__name__
        if targets is not None or self._enc_dec:
            raise NotImplementedError(
                f"{name} does not dispatch attention through transformers' AttentionInterface, and "
                "the eager fallback supports single-stack models only"
            )
        config = self.model.config
        layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 1)
        heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 1)
        length = src.ids.shape[1]
        need = len(items) * layers * heads * length * length * 4
        if need > EAGER_MAX_BYTES:
            limit = int((EAGER_MAX_BYTES / (4 * layers * heads * len(items))) ** 0.5)
            raise EagerTooLong(name, length, limit, need)
        with torch.inference_mode():
            out = self.model(**kwargs, output_attentions=True)
        attentions = getattr(out, "attentions", None)
        if not attentions:
            raise NotImplementedError(
                f"{name} neither dispatches attention through transformers' AttentionInterface nor "
                "returns output_attentions: attnscope cannot trace it"
            )
        traces = []
        for b, item in enumerate(items):
            span = src.spans[b]
            p = torch.stack([a[b, :, span.start : span.stop, span.start : span.stop] for a in attentions])
            p = p.detach().to("cpu", torch.float64)
            causal = bool((p.triu(1) == 0).all())
            kind = "decoder" if causal else "encoder"
            tokens = {kind: (item.tokens, item.tokens)}
            traces.append(DenseTrace({kind: p}, tokens, item.sentence_b_start))
        return traces

    def _split(self, calls, b, src, tgt, items, targets) -> Trace:
        """The Trace of batch item `b`: its own rows and keys of every captured call."""
        layers: dict[str, list[LayerQK]] = {}
        src_span = src.spans[b]
        tgt_span = tgt.spans[b] if tgt is not None else src_span
        spans = {
            "encoder": (src_span, src_span),
            "decoder": (tgt_span, tgt_span),
            "cross": (tgt_span, src_span),
        }
        for call in calls:
            kind = self._kind(call)
            q_span, k_span = spans[kind]
            keys = slice(k_span.start, k_span.stop)
            layers.setdefault(kind, []).append(
                LayerQK(
                    q=call.query[b, :, q_span.start : q_span.stop],
                    k=call.key[b, :, keys],
                    spec=call.spec.for_batch_item(b, keys),
                )
            )
        src_tokens = items[b].tokens
        tgt_tokens = targets[b].tokens if targets is not None else src_tokens
        tokens = {
            "encoder": (src_tokens, src_tokens),
            "decoder": (tgt_tokens, tgt_tokens),
            "cross": (tgt_tokens, src_tokens),
        }
        return Trace(layers, {k: tokens[k] for k in layers}, items[b].sentence_b_start)
