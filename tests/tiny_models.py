"""Tiny random models of each family the extraction core must get right, plus a word tokenizer.

Nothing is downloaded: configs are built here and weights are random (seeded per call).
"""

from __future__ import annotations

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers, processors

VOCAB = 128
WORDS = [f"w{i}" for i in range(100)]


def word_tokenizer(padding_side: str = "right") -> tf.PreTrainedTokenizerFast:
    """Whitespace word tokenizer: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3, words w0..w99 = 4..103."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    vocab.update({w: i + 4 for i, w in enumerate(WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        padding_side=padding_side,
    )


def random_text(n_words: int, gen: torch.Generator) -> str:
    return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n_words,), generator=gen))


COMMON = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=2, eos_token_id=3)
#: The encoder-decoder families (BART, Marian) share their shape; they differ in token ids.
SEQ2SEQ = dict(
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    max_position_embeddings=128,
)


def _configs() -> dict:
    return {
        "gpt2": lambda: tf.GPT2Config(
            n_layer=2, n_head=4, n_embd=32, n_positions=128, scale_attn_by_inverse_layer_idx=True, **COMMON
        ),
        "bert": lambda: tf.BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=128,
            type_vocab_size=2,
            **COMMON,
        ),
        "roberta": lambda: tf.RobertaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=130,
            type_vocab_size=1,
            **COMMON,
        ),
        "llama": lambda: tf.LlamaConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
            **COMMON,
        ),
        "mistral": lambda: tf.MistralConfig(
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
            sliding_window=8,
            head_dim=12,
            **COMMON,
        ),
        "qwen2": lambda: tf.Qwen2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            intermediate_size=64,
            max_position_embeddings=256,
            use_sliding_window=True,
            sliding_window=7,
            max_window_layers=1,
            **COMMON,
        ),
        "gemma2": lambda: tf.Gemma2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=64,
            max_position_embeddings=256,
            sliding_window=6,
            attn_logit_softcapping=3.0,
            final_logit_softcapping=None,
            query_pre_attn_scalar=8,
            **COMMON,
        ),
        "gpt_neox": lambda: tf.GPTNeoXConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=256,
            rotary_pct=0.25,
            **COMMON,
        ),
        "bart": lambda: tf.BartConfig(
            **SEQ2SEQ,
            decoder_start_token_id=2,
            **COMMON,
        ),
        "marian": lambda: tf.MarianConfig(
            **SEQ2SEQ,
            decoder_start_token_id=0,
            decoder_vocab_size=VOCAB,
            **COMMON,
        ),
        # Attention sinks (s_aux), alternating sliding/full layers, mixture-of-experts MLP.
        "gpt_oss": lambda: tf.GptOssConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=32,
            num_local_experts=2,
            num_experts_per_tok=1,
            sliding_window=6,
            max_position_embeddings=256,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            **COMMON,
        ),
    }


def _extra_configs() -> dict:
    """Models attnscope must refuse (or, once supported, trace) that are not in FAMILIES."""
    return {
        # Llama 4 text model: layer 0 chunked attention (chunks of 8, RoPE), layer 1 full (NoPE).
        "llama4_chunked": lambda: tf.Llama4TextConfig(
            hidden_size=32,
            intermediate_size=64,
            intermediate_size_mlp=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            num_local_experts=1,
            num_experts_per_tok=1,
            attention_chunk_size=8,
            no_rope_layers=[1, 0],
            max_position_embeddings=256,
            **COMMON,
        ),
        # ViT: [CLS] + a 4×4 grid of 8×8 patches from a 32×32 image; bidirectional attention.
        "vit": lambda: tf.ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            image_size=32,
            patch_size=8,
            num_channels=3,
        ),
        # DeiT: [CLS] [DIST] then the patches.
        "deit": lambda: tf.DeiTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            image_size=32,
            patch_size=8,
        ),
        # DINOv2 with registers: [CLS] [REG 0] [REG 1] then the patches.
        "dinov2_registers": lambda: tf.Dinov2WithRegistersConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            mlp_ratio=2,
            image_size=32,
            patch_size=8,
            num_register_tokens=2,
        ),
        # CLIP's vision tower: its class_embedding is the [CLS] token, then the patches.
        "clip_vision": lambda: tf.CLIPVisionConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            image_size=32,
            patch_size=8,
        ),
        # SigLIP's vision tower: patches only, no special token.
        "siglip_vision": lambda: tf.SiglipVisionConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            image_size=32,
            patch_size=8,
        ),
    }


FAMILIES = list(_configs())
CAUSAL = {"gpt2", "llama", "mistral", "qwen2", "gemma2", "gpt_neox", "gpt_oss"}


def build(family: str, dtype=torch.float64, attn: str = "eager", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = {**_configs(), **_extra_configs()}[family]()
    extra = {}
    if family == "gpt_oss":
        extra["experts_implementation"] = "eager"  # the grouped-mm experts refuse float64
    model = tf.AutoModel.from_config(config, attn_implementation=attn, dtype=dtype, **extra)
    return _peaked(model)


def build_lm(family: str, dtype=torch.float64, attn: str = "eager", seed: int = 0) -> torch.nn.Module:
    """`build`'s model with its language-modelling head (AutoModelForCausalLM), for generation."""
    torch.manual_seed(seed)
    config = {**_configs(), **_extra_configs()}[family]()
    model = _peaked(tf.AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype))
    # A random model writes the end-of-sequence id by chance; the tests ask for completions of the
    # length they name.
    model.generation_config.eos_token_id = None
    return model


def _peaked(model: torch.nn.Module) -> torch.nn.Module:
    # Random init leaves attention nearly uniform; widen the weights so heads are peaked and
    # masking mistakes show up as large differences.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and any(s in name for s in ("q_proj", "k_proj", "query", "key", "c_attn", "qkv")):
                p.mul_(4.0)
            if name.endswith("sinks"):  # zero at init: make them matter
                p.copy_(torch.randn_like(p) * 2)
    return model.eval()
