"""Shared parts of the tiny test pipelines: the word vocabulary, word-level tokenizers (T5, CLIP, Qwen2, Llama 3
stand-ins), seeded tiny text encoders, argument checks and the weights label."""

from __future__ import annotations

import logging
from typing import Callable

import torch

from ..errors import SparseDiffusionError


logger = logging.getLogger(__name__)

_COLOURS = (
    "red green blue yellow orange purple violet pink black white gray grey brown cyan magenta gold silver "
    "dark light bright pale colorful colourful"
)
_SHAPES = (
    "circle circles square squares triangle triangles rectangle rectangles star stars ball balls cube cubes "
    "sphere spheres box boxes line lines dot dots ring rings heart hearts disk shape shapes object objects"
)
_DIRECTIONS = (
    "left right up down upward upwards downward downwards forward forwards backward backwards around across "
    "towards toward away clockwise counterclockwise diagonally horizontally vertically north south east west "
    "top bottom center centre middle side corner edge"
)
_MOTION = (
    "moving moves move moved rotating rotates rotate spinning spins spin bouncing bounces bounce falling falls "
    "fall rising rises rise flying flies fly walking walks walk running runs run jumping jumps jump sliding "
    "slides slide rolling rolls roll growing grows grow shrinking shrinks shrink floating floats float drifting "
    "turning turns turn swimming swims flowing flows waving shining glowing"
)
_WORDS = (
    "a an the on in of with and or at to from over under above below into onto through by behind front "
    "near next beside between is are it its this that while as then slowly quickly slow fast small large big "
    "tiny huge little smooth sharp soft simple plain background foreground scene video image picture frame "
    "sky sea ocean water river lake grass field forest tree trees flower flowers mountain mountains hill sun "
    "moon cloud clouds rain snow fire smoke light night day sunset sunrise city street road car cars train "
    "boat cat dog bird birds fish horse person man woman child people robot house building room table wall "
    "floor window camera pan zoom view close shot high quality detailed realistic cinematic style animation "
    "cartoon one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9"
)
_PUNCTUATION = ", . ! ? ; : - ' \""

#: Words every tiny tokenizer knows (after lowercasing). Anything else maps to ``<unk>``.
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(" ".join((_COLOURS, _SHAPES, _DIRECTIONS, _MOTION, _WORDS, _PUNCTUATION)).split())
)

# Tiny text-encoder sizes, following diffusers' own pipeline tests.
TEXT_DIM = 32
T5_KWARGS = dict(d_model=TEXT_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8)


def check_sizes(name: str, num_layers: int, num_heads: int, head_dim: int, seed: int) -> None:
    for label, value in (("num_layers", num_layers), ("num_heads", num_heads), ("head_dim", head_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SparseDiffusionError(f"{name}: {label}={value!r} must be a positive int, e.g. {label}=2.")
    if head_dim % 2:
        raise SparseDiffusionError(
            f"{name}: head_dim={head_dim} must be even (rotary embeddings pair channels); use e.g. 64."
        )
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SparseDiffusionError(f"{name}: seed={seed!r} must be an int, e.g. seed=0.")


def word_tokenizer(specials: list[str], template: str, model_max_length: int, **special_kwargs):
    """A lowercasing word-level tokenizer; ``specials`` take ids 0, 1, 2 ... in order."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(specials + [w for w in VOCABULARY if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    used = [s for s in specials if s in template]
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(s, vocab[s]) for s in used])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **special_kwargs)


def t5_tokenizer():
    return word_tokenizer(
        ["<pad>", "</s>", "<unk>"], "$A </s>", 512, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def clip_tokenizer():
    return word_tokenizer(
        ["<|startoftext|>", "<|endoftext|>", "<unk>"],
        "<|startoftext|> $A <|endoftext|>",
        77,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )


def vocab_size() -> int:
    return 3 + len(VOCABULARY)


def seeded(seed: int, offset: int, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Builds one component with weights fixed by ``(seed, offset)``, in eval mode."""
    torch.manual_seed(seed * 1000 + offset)
    return make().eval()


def t5_encoder(seed: int, offset: int, umt5: bool = False) -> torch.nn.Module:
    if umt5:
        from transformers import UMT5Config, UMT5EncoderModel

        return seeded(seed, offset, lambda: UMT5EncoderModel(UMT5Config(vocab_size=vocab_size(), **T5_KWARGS)))
    from transformers import T5Config, T5EncoderModel

    return seeded(seed, offset, lambda: T5EncoderModel(T5Config(vocab_size=vocab_size(), **T5_KWARGS)))


def label_weights(pipe, weights: str = "random"):
    pipe._sparse_diffusion_weights = weights
    logger.debug("built tiny %s with %s weights", type(pipe).__name__, weights)
    return pipe


def clip_with_projection(seed: int, offset: int, hidden_size: int) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return seeded(
        seed,
        offset,
        lambda: CLIPTextModelWithProjection(
            CLIPTextConfig(
                hidden_size=hidden_size,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                vocab_size=vocab_size(),
                projection_dim=hidden_size,
                max_position_embeddings=77,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        ),
    )


# Words of QwenImagePipeline's prompt template, so that its system prefix tokenizes to the 34 tokens the pipeline
# drops.
_QWEN_TEMPLATE_WORDS = (
    "system user assistant describe detailing color size texture quantity text spatial relationships objects"
)
_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]


def qwen_tokenizer():
    """Word-level stand-in for the Qwen2 tokenizer: chat markers are special tokens and newlines are tokens, so
    QwenImagePipeline's template prefix is 34 tokens long, as with the real tokenizer."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = _QWEN_SPECIALS + ["\n"] + list(VOCABULARY) + _QWEN_TEMPLATE_WORDS.split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\n"), behavior="removed", invert=True)
    tok.add_special_tokens(_QWEN_SPECIALS[:3])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=32768,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
    )


def qwen_vl_encoder(seed: int, offset: int, vocab_size: int) -> torch.nn.Module:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    # Vision token ids lie outside the vocabulary: text-only prompts never contain them.
    special_ids = dict(
        vision_start_token_id=vocab_size,
        vision_end_token_id=vocab_size + 1,
        vision_token_id=vocab_size + 2,
        image_token_id=vocab_size + 3,
        video_token_id=vocab_size + 4,
    )
    text_config = dict(
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        rope_theta=1000000.0,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
        rope_scaling={"mrope_section": [2, 2, 4], "rope_type": "default", "type": "default"},
    )
    vision_config = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=TEXT_DIM)
    return seeded(
        seed,
        offset,
        lambda: Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(
                text_config=text_config,
                vision_config=vision_config,
                hidden_size=TEXT_DIM,
                vocab_size=vocab_size,
                bos_token_id=None,
                eos_token_id=2,
                pad_token_id=0,
                **special_ids,
            )
        ),
    )


# Words of HunyuanVideoPipeline's default prompt template. Its prefix (system prompt and user header) must tokenize
# to the pipeline's fixed ``crop_start`` of 95 tokens, which the pipeline drops.
_HUNYUAN_TEMPLATE_WORDS = (
    "system user describe detailing following aspects main content theme color shape size texture quantity text "
    "spatial relationships objects actions events behaviors temporal physical movement changes environment "
    "atmosphere angles movements transitions used"
)
_LLAMA_SPECIALS = [
    "<|end_of_text|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<unk>",
]


def llama_tokenizer():
    """Word-level stand-in for the Llama 3 tokenizer: header and end-of-turn markers are special tokens, newlines
    and punctuation runs are tokens, so HunyuanVideoPipeline's template prefix is its ``crop_start`` (95) tokens."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = _LLAMA_SPECIALS + ["\n"] + list(VOCABULARY) + _HUNYUAN_TEMPLATE_WORDS.split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\n"), behavior="removed", invert=True)
    tok.add_special_tokens(_LLAMA_SPECIALS[:5])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=4096,
        pad_token="<|end_of_text|>",
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        unk_token="<unk>",
    )


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Splits ``head_dim`` into three even RoPE axes (text/index, height, width) that sum to it."""
    side = 2 * ((3 * head_dim) // 16)
    return head_dim - 2 * side, side, side
