"""`Extractor`: runs a transformers model once per input with Q/K capture, and returns `Trace`s."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from . import generation
from .capture import IMPLEMENTATION, CapturedCall, capturing, register
from .default_model import display_name, locate
from .dense import DenseTrace
from .inputs import (
    Encoded,
    InputTooLong,
    Padded,
    encode,
    encode_ids,
    encode_target,
    load_image,
    model_inputs,
    pad,
)
from .labels import feature_extractor, input_labels, positions
from .trace import LayerQK, Trace

#: The eager fallback holds every layer's and head's L×L attention at once: at most this many bytes
#: (float32), e.g. 24 layers × 16 heads at 2,048 tokens is 6.4 GB, over it; 1,024 tokens is 1.6 GB.
EAGER_MAX_BYTES = 2 * 2**30

_CROSS_NAME_HINTS = ("encoder_attn", "crossattention", "cross_attn", "encdecattention")


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


def _image_processor(obj):
    """`obj` when it is an image processor, its `image_processor` when it is a processor with one."""
    if obj is None:
        return None
    inner = getattr(obj, "image_processor", None)
    if inner is not None:
        return obj
    names = [c.__name__ for c in type(obj).__mro__]
    if any("ImageProcessor" in n for n in names):
        return obj
    return None


def _feature_extractor_from(path):
    """A checkpoint's audio feature extractor (WhisperFeatureExtractor, ...), or None."""
    from transformers import AutoFeatureExtractor

    try:
        fe = AutoFeatureExtractor.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError):
        return None
    return fe if feature_extractor(fe) is not None else None


def _auto_class(path):
    """AutoModelForCausalLM for a checkpoint saved from a causal language model (its head is in the
    weights, and `trace(generate=N)` needs it), else AutoModel."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    architectures = getattr(config, "architectures", None) or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    encoder_decoder = getattr(config, "is_encoder_decoder", False)
    if causal and not encoder_decoder and type(config) in AutoModelForCausalLM._model_mapping:
        return AutoModelForCausalLM
    return AutoModel


def _layer(call: CapturedCall, b: int, rows: range, keys: range) -> LayerQK:
    """One captured call's query rows and key columns of batch item `b`, its mask description
    cut to those keys."""
    cols = slice(keys.start, keys.stop)
    return LayerQK(
        q=call.query[b, :, rows.start : rows.stop],
        k=call.key[b, :, cols],
        spec=call.spec.for_batch_item(b, cols),
    )


def _placement(device_map, offload_folder) -> dict:
    """from_pretrained's keyword arguments for a device map (accelerate's dispatch), or none."""
    if device_map is None:
        if offload_folder is not None:
            raise ValueError("offload_folder needs a device_map")
        return {}
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ImportError(
            "device_map needs accelerate: pip install 'attnscope[offload]' (or pip install accelerate)"
        ) from None
    out: dict = {"device_map": device_map}
    if offload_folder is not None:
        out["offload_folder"] = str(offload_folder)
    return out


def _derives_positions_from_padding(model: torch.nn.Module) -> bool:
    # RoBERTa-style embeddings compute positions from input_ids and padding_idx themselves.
    return any(type(m).__name__.endswith("Embeddings") and hasattr(m, "padding_idx") for m in model.modules())


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

    def __init__(
        self, model: torch.nn.Module, tokenizer=None, processor=None, *, name: str | None = None
    ) -> None:
        register()
        self.model = model.eval()
        #: How the model is named to people (ModelInfo, TraceInfo, titles): `name` when given, else
        #: from the config's ``_name_or_path`` (a Hub id, or a folder's name; never a site-packages
        #: path), else the model's class.
        source = getattr(model.config, "_name_or_path", "") or ""
        self.name = name or (display_name(source) if source else type(model).__name__)
        self.tokenizer = tokenizer
        #: What `trace(image=...)` runs: `processor`, else the tokenizer slot when it holds an
        #: image processor (or a multimodal processor with one).
        self.processor = processor if processor is not None else _image_processor(tokenizer)
        self._forward_params = set(inspect.signature(model.forward).parameters)
        self._names = {id(m): n for n, m in model.named_modules()}
        self._enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
        self._encoder_prefix = None
        if self._enc_dec:
            self._encoder_prefix = self._names[id(model.get_encoder())] + "."
        self.max_positions = _max_positions(model)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype=None,
        *,
        device_map: str | dict | None = None,
        offload_folder: str | Path | None = None,
    ) -> Extractor:
        """Load a model and tokenizer (and its image processor, when the checkpoint has one, for
        `trace(image=...)`; a vision checkpoint without a tokenizer loads too; or its audio feature
        extractor, whose hop and sampling rate time-label audio positions); None loads the
        bundled all-MiniLM-L6-v2.

        A Hub id is looked up in the local Hugging Face cache first when HF_HUB_OFFLINE=1 or when
        the Hub does not answer within a couple of seconds; a model in neither place raises
        ModelNotAvailable (a FileNotFoundError) at once, saying how to get it. The Extractor's
        `name` is the Hub id, a local folder's name, or all-MiniLM-L6-v2.

        device None -> "cuda" if available else "cpu". dtype None -> float32 on CPU, the
        checkpoint's own dtype on a GPU. Remote code is never trusted.

        `device_map` ("auto", "balanced", or a dict module name -> device, "cpu" or "disk"; needs
        accelerate) spreads a model larger than one device over several, as transformers loads it
        (`offload_folder` holds what goes to "disk"); `device` is then not used. Each layer's Q
        and K stay on the device that layer ran on and every view of that layer is computed there
        (`Trace.bytes_by_device`).
        """
        from transformers import AutoTokenizer

        register()
        path = locate(name_or_path)
        device = torch.device(
            device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        if dtype is None:
            dtype = torch.float32 if device.type == "cpu" and device_map is None else "auto"
        tokenizer = processor = None
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as e:  # a vision model has no tokenizer
            refused = e
        if tokenizer is None or (Path(path) / "preprocessor_config.json").is_file():
            from transformers import AutoImageProcessor

            try:
                processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=False)
            except (OSError, ValueError, KeyError):
                processor = _feature_extractor_from(path)
                if tokenizer is None and processor is None:
                    raise refused from None
        placement = _placement(device_map, offload_folder)
        model = _auto_class(path).from_pretrained(
            path, dtype=dtype, attn_implementation=IMPLEMENTATION, trust_remote_code=False, **placement
        )
        if device_map is None:
            model = model.to(device)
        return cls(model, tokenizer, processor=processor, name=display_name(name_or_path))

    @property
    def device(self) -> torch.device:
        """Where inputs go: the first parameter's device; with a device map whose first modules are
        offloaded (their weights on "meta" until accelerate's hooks bring them in), the first real
        device among the model's parameters, else the CPU."""
        for p in self.model.parameters():
            if p.device.type != "meta":
                return p.device
        return torch.device("cpu")

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
        inputs: dict | None = None,
        image=None,
        generate: int | None = None,
        **generate_options,
    ) -> Trace:
        """Trace one input: a text (with an optional second sentence `pair`) or `input_ids` [1, L],
        or `inputs`, a dict of model inputs passed as they are (`pixel_values`, `input_features`,
        `attention_mask`, `position_ids`, ...; batch size 1; floating tensors are cast to the
        model's dtype), or `image`, a PIL image or a path, run through the Extractor's image
        processor. Tokens of an image are labelled `[CLS]` (and other special tokens) then
        `patch r,c`; of audio (`input_features`, Whisper), the start time of the audio each
        encoder position covers, `0.00s`, `0.02s`, ... (see labels.audio_labels: the hop and
        sampling rate of the Extractor's feature extractor, else Whisper's 10 ms at 16 kHz);
        decoder inputs (`decoder_input_ids`) by the tokenizer; an input of unknown layout, `pos i`.

        Encoder-decoder models also take `target`, the decoder's text (its tokens shifted right
        behind the decoder start token); without it the decoder reads `text`. `deadline`, a
        time.monotonic() value, stops the forward pass between layers with TimeoutError.
        `max_tokens` refuses a longer input (InputTooLong) before the model runs.

        `generate=N` (a text or input_ids prompt, decoder-only models with a language-modelling
        head): the model first generates at most N tokens with its own attention and cache
        (greedy; `do_sample=True`, `temperature`, `top_k`, `top_p`, `seed` and any other
        `generate` option as given), then one captured forward over prompt + completion gives the
        trace; `tr.prompt_len` and `tr.generated` describe the split (`trace_generation`).
        """
        if generate is not None or generate_options:
            if generate is None:
                raise ValueError(f"{', '.join(generate_options)}: generation options need generate=N")
            if inputs is not None or image is not None or pair is not None or target is not None:
                raise ValueError(
                    "generate takes a text or input_ids prompt only (no pair, target, inputs or image)"
                )
            return self.trace_generation(
                text,
                generate,
                input_ids=input_ids,
                deadline=deadline,
                max_tokens=max_tokens,
                **generate_options,
            )
        if inputs is not None or image is not None:
            given = [
                n
                for n, v in (("text", text), ("input_ids", input_ids), ("inputs", inputs), ("image", image))
                if v is not None
            ]
            if len(given) != 1:
                raise ValueError(
                    f"pass exactly one of text, input_ids, inputs or image; got {', '.join(given)}"
                )
            if pair is not None or target is not None:
                raise ValueError("pair and target need text; put decoder inputs in `inputs`")
            if image is not None:
                inputs = self._process_image(image)
            return self._run_inputs(inputs, deadline, max_tokens)
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

    def trace_generation(
        self,
        text: str | None,
        new_tokens: int,
        *,
        input_ids: torch.Tensor | None = None,
        deadline: float | None = None,
        max_tokens: int | None = None,
        report=None,
        should_stop=None,
        **options,
    ) -> Trace:
        """Generate at most `new_tokens` after the prompt (`text` or `input_ids`), then trace prompt
        + completion. `max_tokens` bounds prompt + new tokens before anything runs (InputTooLong);
        `report(n)` is called after each generated token and `should_stop()` True ends generation
        early (the service's progress and cancellation); `options` as `trace(generate=...)`."""
        generation.check_generation(self.model, new_tokens)
        if (text is None) == (input_ids is None):
            raise ValueError("pass exactly one of text or input_ids as the prompt")
        if input_ids is not None:
            item = encode_ids(self.tokenizer, input_ids, self.model.config.get_text_config().vocab_size)
        else:
            item = encode(self._need_tokenizer(), text)
        need = len(item.ids) + new_tokens
        if max_tokens is not None and need > max_tokens:
            raise InputTooLong(need, max_tokens)
        if self.max_positions is not None and need > self.max_positions:
            raise ValueError(
                f"the prompt's {len(item.ids)} tokens + {new_tokens} new ones exceed this model's "
                f"position table of {self.max_positions}"
            )
        new_ids = generation.generate_ids(
            self.model,
            item.ids,
            new_tokens,
            pad_token_id=self._pad_id(),
            report=report,
            should_stop=should_stop,
            **options,
        )
        trace = self._run([generation.extend(item, new_ids, self.tokenizer)], None, deadline)[0]
        trace.prompt_len = len(item.ids)
        trace.generated = generation.decoded(self.tokenizer, new_ids)
        return trace

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

    def verify(self, text_or_inputs=None, max_tokens: int = 128, **kwargs):
        """Check this model's trace against transformers' eager attention on the same input (at
        most `max_tokens` tokens): a text, input_ids, or as `trace` takes them `inputs={...}` (any
        model inputs, checked whole) or `image=...`. A `VerifyReport`, see extract/verify.py for
        what is compared and at which tolerance. The model is restored afterwards."""
        from .verify import verify

        return verify(self, text_or_inputs, max_tokens, **kwargs)

    # ---- internals ---------------------------------------------------------------------------
    def _process_image(self, image) -> dict:
        if self.processor is None:
            raise ValueError(
                "this Extractor has no image processor: pass Extractor(model, processor=...) "
                "(e.g. transformers.AutoImageProcessor), or pass inputs={'pixel_values': ...}"
            )
        if _image_processor(self.processor) is None and feature_extractor(self.processor) is not None:
            raise ValueError(
                f"this Extractor's processor ({type(self.processor).__name__}) is an audio feature "
                "extractor, not an image processor: pass inputs={'input_features': ...}"
            )
        out = self.processor(images=load_image(image), return_tensors="pt")
        return {k: v for k, v in dict(out).items() if isinstance(v, torch.Tensor)}

    def _prepare_inputs(self, inputs: dict):
        """(checked model inputs on the model's device and dtype, labels of the first stack's
        sequence or None, the range of its real tokens or None, its length or None)."""
        kwargs = model_inputs(inputs, self._forward_params, type(self.model).__name__)
        labels = input_labels(self.model, kwargs, self.tokenizer, self.processor)
        full = len(labels) if labels is not None else None  # the sequence the model will see
        keep = range(0, full) if full is not None else None
        mask = kwargs.get("attention_mask")
        if (
            labels is not None
            and isinstance(mask, torch.Tensor)
            and mask.dim() == 2
            and mask.shape[1] == len(labels)
        ):
            real = mask[0].nonzero().flatten().tolist()
            if not real or real != list(range(real[0], real[-1] + 1)):
                raise ValueError("attention_mask must mark one contiguous run of real tokens")
            keep = range(real[0], real[-1] + 1)
            labels = labels[real[0] : real[-1] + 1]
        dtype = next(self.model.parameters()).dtype
        device = self.device
        kwargs = {
            k: (v.to(device, dtype) if v.dtype.is_floating_point else v.to(device))
            if isinstance(v, torch.Tensor)
            else v
            for k, v in kwargs.items()
        }
        if "use_cache" in self._forward_params:
            kwargs.setdefault("use_cache", False)
        return kwargs, labels, keep, full

    def _run_inputs(self, inputs: dict, deadline: float | None, max_tokens: int | None) -> Trace:
        """One forward pass on a dict of model inputs, as they are (batch size 1)."""
        kwargs, labels, keep, full = self._prepare_inputs(inputs)
        if max_tokens is not None and full is not None and full > max_tokens:
            raise InputTooLong(full, max_tokens)
        with capturing(self.model, deadline) as recording, torch.inference_mode():
            self.model(**kwargs)
        if not recording.calls:
            if labels is None:
                raise NotImplementedError(
                    f"{type(self.model).__name__} does not dispatch attention through transformers' "
                    "AttentionInterface; the eager fallback needs text, input_ids or pixel_values"
                )
            mask = torch.zeros(1, full, dtype=torch.int64)
            mask[0, keep.start : keep.stop] = 1
            src = Padded(torch.zeros(1, full, dtype=torch.int64), mask, None, [keep])
            return self._eager(kwargs, src, [Encoded([0] * len(labels), labels)], None)[0]
        layers: dict[str, list[LayerQK]] = {}
        tokens: dict[str, tuple[list[str], list[str]]] = {}
        lengths: dict[str, int] = {}
        for call in recording.calls:
            kind = self._kind(call)
            lengths.setdefault(kind, call.query.shape[2])
        if not self._enc_dec:
            return self._single_stack_trace(recording.calls, lengths, labels, keep, full, max_tokens)
        source_len = lengths.get("encoder", next(iter(lengths.values())))
        if full != source_len:  # a layout attnscope does not know: label positions
            labels, keep = positions(source_len), range(source_len)
            if max_tokens is not None and source_len > max_tokens:
                raise InputTooLong(source_len, max_tokens)
        dec_len = lengths.get("decoder")
        dec_ids = kwargs.get("decoder_input_ids")
        dec_labels = None
        if dec_len is not None:
            if isinstance(dec_ids, torch.Tensor) and dec_ids.shape[-1] == dec_len:
                dec_labels = input_labels(self.model, {"input_ids": dec_ids}, self.tokenizer)
            dec_labels = (
                dec_labels if dec_labels is not None and len(dec_labels) == dec_len else positions(dec_len)
            )
        for call in recording.calls:
            kind = self._kind(call)
            q_keep = keep if kind == "encoder" else range(call.query.shape[2])
            k_keep = keep if kind in ("encoder", "cross") else range(call.key.shape[2])
            layers.setdefault(kind, []).append(_layer(call, 0, q_keep, k_keep))
            q_labels = labels if kind == "encoder" else dec_labels
            k_labels = labels if kind in ("encoder", "cross") else dec_labels
            tokens[kind] = (q_labels, k_labels)
        return Trace(layers, tokens)

    def _single_stack_trace(self, calls, lengths, labels, keep, full, max_tokens) -> Trace:
        """The trace of a model without an encoder-decoder split: each kind its own stack (a
        multimodal model's vision tower beside its language model). A stack as long as the input
        gets its labels and real-token range; another (the vision tower's patches) its positions."""
        layers: dict[str, list[LayerQK]] = {}
        tokens: dict[str, tuple[list[str], list[str]]] = {}
        for kind, n in lengths.items():
            if labels is None or n != full:
                if max_tokens is not None and n > max_tokens:
                    raise InputTooLong(n, max_tokens)
                tokens[kind] = (positions(n), positions(n))
            else:
                tokens[kind] = (labels, labels)
        for call in calls:
            kind = self._kind(call)
            n = lengths[kind]
            span = keep if labels is not None and n == full else range(n)
            layers.setdefault(kind, []).append(_layer(call, 0, span, span))
        return Trace(layers, tokens)

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
            ids = torch.tensor(item.ids)
            dense = DenseTrace({kind: p}, tokens, item.sentence_b_start, token_ids={kind: (ids, ids)})
            dense.sentence_starts = {kind: item.sentence_starts} if item.sentence_starts is not None else None
            traces.append(dense)
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
            layers.setdefault(kind, []).append(_layer(call, b, q_span, k_span))
        src_tokens = items[b].tokens
        tgt_tokens = targets[b].tokens if targets is not None else src_tokens
        tokens = {
            "encoder": (src_tokens, src_tokens),
            "decoder": (tgt_tokens, tgt_tokens),
            "cross": (tgt_tokens, src_tokens),
        }
        src_ids = torch.tensor(items[b].ids)
        tgt_ids = torch.tensor(targets[b].ids) if targets is not None else src_ids
        ids = {"encoder": (src_ids, src_ids), "decoder": (tgt_ids, tgt_ids), "cross": (tgt_ids, src_ids)}
        trace = Trace(
            layers,
            {k: tokens[k] for k in layers},
            items[b].sentence_b_start,
            token_ids={k: ids[k] for k in layers},
        )
        if items[b].sentence_starts is not None:  # the kinds whose queries are the input text
            text_kinds = ("encoder",) if self._enc_dec else tuple(layers)
            trace.sentence_starts = {k: items[b].sentence_starts for k in text_kinds if k in layers}
        return trace
