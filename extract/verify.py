"""A fidelity check a user can run on their own model: attnscope's attention against transformers'
eager `output_attentions` on the same input.

`verify(extractor, text_or_inputs, max_tokens=128)` traces the input (a prefix of at most
`max_tokens` tokens: eager attention builds layers × heads × L² probabilities) and runs the same
input through eager attention, in the model's own dtype and against higher-precision copies, and
reports the largest absolute difference of the probabilities per kind and layer. The input is a
text, input_ids (or a dict of input_ids, attention_mask, token_type_ids), or, as `trace` takes
them, `inputs=` a dict of any model inputs (`input_features` and `decoder_input_ids` for Whisper,
`pixel_values`, ...) or `image=` through the Extractor's image processor. Those are checked whole
(an image or a spectrogram cannot be cut): every kind's query and key lengths must be at most
`max_tokens`, else InputTooLong says how many to allow. The references are:

- the model's dtype: the model itself, switched to ``"eager"`` for one forward pass and switched
  back to its own implementation afterwards (nothing else about it changes);
- float32, when the model is float16/bfloat16: a float32 copy of the model;
- float64, when the model is float64 (the model itself) or a float64 copy fits (its parameters
  take at most `copy_limit_bytes` and at most half the memory free on the model's device).

A copy that does not fit is skipped and said so in the report's notes; a float64 model is not
compared against a float32 copy (a lower precision than the trace says nothing about it). Every
row is judged at the tolerance of the *model's* dtype (`TOLERANCES`; `tolerance=` overrides it):
the trace's Q/K come from the model in that dtype, so a higher-precision reference cannot agree
more closely than that dtype's own rounding of the hidden states allows. Note that many models'
eager code computes the softmax in float32 even for float64 inputs.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

import torch

from .inputs import Encoded, InputTooLong, encode, encode_ids

#: The keys of a dict `verify` treats as token ids (cut to max_tokens); any other key makes it a
#: dict of model inputs, checked whole.
_ID_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids"})

#: Largest absolute probability difference accepted, by the model's dtype.
TOLERANCES = {
    torch.float64: 1e-5,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}
#: Largest copy of the model (in the reference dtype) that `verify` makes by default.
COPY_LIMIT_BYTES = 4 * 2**30


class VerifyError(ValueError):
    """The model cannot be checked: it cannot run eager attention with output_attentions."""


@dataclass
class VerifyRow:
    kind: str
    layer: int
    reference: str  # the eager run's dtype, e.g. "float32"
    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance  # NaN fails


@dataclass
class VerifyReport:
    """Largest |attnscope - eager| of the attention probabilities per kind, layer and reference."""

    model: str
    dtype: str
    rows: list[VerifyRow]
    lengths: dict[str, tuple[int, int]]  # kind -> (query tokens, key tokens) compared
    input_tokens: int  # tokens of the input before truncation to max_tokens
    max_tokens: int
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    def failures(self) -> list[VerifyRow]:
        return [r for r in self.rows if not r.passed]

    def __str__(self) -> str:
        lines = [f"attnscope verify: {self.model} ({self.dtype})"]
        shown = ", ".join(f"{k} {q}×{k_}" for k, (q, k_) in self.lengths.items())
        lines.append(f"input: {self.input_tokens} tokens; compared: {shown}")
        if self.input_tokens > self.max_tokens:
            lines.append(f"(the first {self.max_tokens} tokens: max_tokens={self.max_tokens})")
        lines.append(f"{'kind':<8} {'layer':>5} {'reference':<9} {'max |diff|':>11} {'tolerance':>9}  result")
        for r in self.rows:
            lines.append(
                f"{r.kind:<8} {r.layer:>5} {r.reference:<9} {r.max_abs_diff:>11.3e} {r.tolerance:>9.0e}  "
                + ("ok" if r.passed else "FAIL")
            )
        lines.extend(f"note: {n}" for n in self.notes)
        bad = self.failures()
        if bad:
            named = ", ".join(sorted({f"{r.kind} layer {r.layer}" for r in bad}, key=str))
            lines.append(f"FAILED: {named}")
        else:
            lines.append("PASSED" if self.rows else "FAILED: nothing was compared")
        return "\n".join(lines)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _param_bytes(model: torch.nn.Module, dtype: torch.dtype) -> int:
    size = torch.empty((), dtype=dtype).element_size()
    return sum(p.numel() for p in model.parameters()) * size + sum(
        b.numel() * (size if b.is_floating_point() else b.element_size()) for b in model.buffers()
    )


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:  # MemAvailable counts the page cache that can be dropped; free pages alone do not
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _fits(model: torch.nn.Module, dtype: torch.dtype, limit: int) -> tuple[bool, int]:
    need = _param_bytes(model, dtype)
    free = _free_bytes(next(model.parameters()).device)
    return need <= limit and (free is None or need <= free // 2), need


def _prepare(ex, text_or_inputs, pair, target, max_tokens):
    """(source item, target item or None, tokens before truncation), each cut to max_tokens."""
    if isinstance(text_or_inputs, str):
        item = encode(ex._need_tokenizer(), text_or_inputs, pair)
    else:
        ids = text_or_inputs
        if isinstance(ids, dict):
            unknown = set(ids) - {"input_ids", "attention_mask", "token_type_ids"}
            if unknown:
                raise ValueError(f"verify takes input_ids (and token_type_ids); got also {sorted(unknown)}")
            if "attention_mask" in ids and not bool(torch.as_tensor(ids["attention_mask"]).bool().all()):
                raise ValueError("verify checks one unpadded input: its attention_mask must be all ones")
            types = ids.get("token_type_ids")
            ids = ids["input_ids"]
        else:
            types = None
        if pair is not None:
            raise ValueError("pair needs text, not input_ids")
        item = encode_ids(ex.tokenizer, ids, ex.model.config.get_text_config().vocab_size)
        if types is not None:
            item.token_types = torch.as_tensor(types).reshape(-1).tolist()
    total = len(item.ids)
    item = _cut(item, max_tokens)
    tgt = None
    if ex._enc_dec:
        if target is None and not isinstance(text_or_inputs, str):
            raise ValueError("an encoder-decoder model needs target= (the decoder's text) with input_ids")
        tgt = _cut(ex._target(target if target is not None else text_or_inputs), max_tokens)
    elif target is not None:
        raise ValueError("target is only for encoder-decoder models")
    return item, tgt, total


def _cut(item: Encoded, n: int) -> Encoded:
    if len(item.ids) <= n:
        return item
    b = item.sentence_b_start
    return Encoded(
        item.ids[:n],
        item.tokens[:n],
        item.token_types[:n] if item.token_types is not None else None,
        b if b is not None and b < n else None,
    )


def _whole(ex, text_or_inputs, inputs, image, pair, target, max_tokens):
    """(trace, the model inputs it ran on, input tokens) of model inputs or an image, whole."""

    if inputs is None and image is None:
        inputs, text_or_inputs = text_or_inputs, None
    given = [
        n
        for n, v in (("text_or_inputs", text_or_inputs), ("inputs", inputs), ("image", image))
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(f"pass exactly one of text_or_inputs, inputs or image; got {', '.join(given)}")
    if pair is not None or target is not None:
        raise ValueError("pair and target need text; put decoder inputs in `inputs`")
    if image is not None:
        inputs = ex._process_image(image)
    kwargs, _labels, keep, full = ex._prepare_inputs(inputs)
    if keep is not None and len(keep) != full:
        raise ValueError("verify checks one unpadded input: its attention_mask must be all ones")

    def too_long(tokens: int) -> InputTooLong:
        e = InputTooLong(tokens, max_tokens)
        e.args = (f"{e}: model inputs are verified whole, pass max_tokens={tokens} or more",)
        return e

    try:
        tr = ex._run_inputs(inputs, None, max_tokens)
    except InputTooLong as e:
        raise too_long(e.tokens) from None
    longest = max(max(tr.shape(k)[2:]) for k in tr.kinds)
    if longest > max_tokens:
        raise too_long(longest)
    return tr, kwargs, tr.seq_len


def _cast(kwargs: dict, dtype: torch.dtype) -> dict:
    """The model inputs with floating tensors in `dtype` (a reference copy's)."""
    return {
        k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in kwargs.items()
    }


def _model_inputs(ex, item: Encoded, tgt: Encoded | None, device) -> dict:
    """The single-item inputs Extractor._run passes (one item: nothing is padded)."""
    ids = torch.tensor([item.ids], device=device)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if item.token_types is not None and "token_type_ids" in ex._forward_params:
        kwargs["token_type_ids"] = torch.tensor([item.token_types], device=device)
    if tgt is not None:
        dec = torch.tensor([tgt.ids], device=device)
        kwargs["decoder_input_ids"] = dec
        kwargs["decoder_attention_mask"] = torch.ones_like(dec)
    return kwargs


def _eager(
    model: torch.nn.Module, kwargs: dict, use_cache: bool, enc_dec: bool, kinds: tuple[str, ...]
) -> dict:
    """kind -> per-layer [H, Lq, Lk] from one eager forward pass with output_attentions; the
    model's attention implementation is restored afterwards."""
    name = type(model).__name__
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation("eager")
    except Exception as exc:  # transformers refuses models without an eager path
        raise VerifyError(f"{name} cannot run eager attention, so it cannot be verified: {exc}") from exc
    try:
        forward = dict(kwargs, output_attentions=True)
        if use_cache:
            forward["use_cache"] = False
        with torch.inference_mode():
            try:
                out = model(**forward)
            except (TimeoutError, MemoryError, KeyboardInterrupt):
                raise
            except Exception as exc:
                raise VerifyError(
                    f"{name} failed under attn_implementation='eager' with output_attentions=True, "
                    f"so it cannot be verified: {type(exc).__name__}: {exc}"
                ) from exc
    finally:
        if previous:
            model.set_attn_implementation(previous)
    if enc_dec:
        got = {
            "encoder": getattr(out, "encoder_attentions", None),
            "decoder": getattr(out, "decoder_attentions", None),
            "cross": getattr(out, "cross_attentions", None),
        }
        got = {k: v for k, v in got.items() if k in kinds}
    else:
        if len(kinds) != 1:
            raise VerifyError(f"{name} traced kinds {kinds}, but its eager output has one attention tuple")
        got = {kinds[0]: getattr(out, "attentions", None)}
    for kind, layers in got.items():
        if not layers or any(a is None for a in layers):
            raise VerifyError(
                f"{name} returned no {kind} attentions with attn_implementation='eager' and "
                "output_attentions=True, so it cannot be verified"
            )
    return {kind: [a[0] for a in layers] for kind, layers in got.items()}


def verify(
    ex,
    text_or_inputs=None,
    max_tokens: int = 128,
    *,
    inputs: dict | None = None,
    image=None,
    pair: str | None = None,
    target: str | None = None,
    tolerance: float | None = None,
    copy_limit_bytes: int = COPY_LIMIT_BYTES,
    model_name: str | None = None,
) -> VerifyReport:
    """Compare `ex`'s trace of one input with transformers' eager attention (see the module doc)."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    model = ex.model
    dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:
        raise VerifyError(f"the model's parameters are {dtype}; verify needs a floating-point model")
    tol = float(tolerance) if tolerance is not None else TOLERANCES.get(dtype, 1e-2)
    if (
        inputs is not None
        or image is not None
        or (isinstance(text_or_inputs, dict) and not set(text_or_inputs) <= _ID_KEYS)
    ):
        tr, kwargs, total = _whole(ex, text_or_inputs, inputs, image, pair, target, max_tokens)
    elif text_or_inputs is None:
        raise ValueError("pass a text, input_ids, inputs={...} or image=...")
    else:
        item, tgt, total = _prepare(ex, text_or_inputs, pair, target, max_tokens)
        tr = ex._run([item], [tgt] if tgt is not None else None)[0]
        kwargs = _model_inputs(ex, item, tgt, ex.device)

    notes: list[str] = []
    references: list[tuple[torch.dtype, torch.nn.Module | None]] = [(dtype, model)]
    wanted = [torch.float32, torch.float64] if dtype not in (torch.float32, torch.float64) else []
    if dtype == torch.float32:
        wanted = [torch.float64]
    for ref in wanted:
        ok, need = _fits(model, ref, copy_limit_bytes)
        if ok:
            references.append((ref, None))  # copied when its turn comes, one copy at a time
        else:
            notes.append(
                f"no {_dtype_name(ref)} reference: a copy would take {need / 2**30:.2f} GiB "
                f"(limit {copy_limit_bytes / 2**30:.2f} GiB, or half the free memory)"
            )
    if dtype == torch.float64:
        notes.append("a float64 model is compared with float64 eager only")

    rows: list[VerifyRow] = []
    for ref, ref_model in references:
        copied = ref_model is None
        if copied:
            ref_model = copy.deepcopy(model).to(ref)
            ref_model.eval()
        try:
            eager = _eager(
                ref_model, _cast(kwargs, ref), "use_cache" in ex._forward_params, ex._enc_dec, tr.kinds
            )
        finally:
            if copied:
                del ref_model
        for kind in tr.kinds:
            layers = eager[kind]
            n_layers, heads, lq, lk = tr.shape(kind)
            if len(layers) != n_layers:
                raise VerifyError(
                    f"the trace has {n_layers} {kind} layers but eager attention returned {len(layers)}"
                )
            for layer, p in enumerate(layers):
                p = p.double().cpu()
                if tuple(p.shape) != (heads, lq, lk):
                    raise VerifyError(
                        f"{kind} layer {layer}: the trace is {heads}×{lq}×{lk}, eager is {tuple(p.shape)}"
                    )
                diff = 0.0
                for head in range(heads):
                    mine = tr.attention(layer, head, kind=kind).double()
                    d = (mine - p[head]).abs().max().item()
                    diff = d if d != d else max(diff, d)  # keep a NaN
                    if diff != diff:
                        break
                rows.append(VerifyRow(kind, layer, _dtype_name(ref), diff, tol))
    return VerifyReport(
        model=model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        dtype=_dtype_name(dtype),
        rows=rows,
        lengths={k: tr.shape(k)[2:] for k in tr.kinds},
        input_tokens=total,
        max_tokens=max_tokens,
        notes=notes,
    )
