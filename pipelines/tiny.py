"""Small, offline, random-weight diffusers pipelines for the demo and the tests.

Every builder assembles a real diffusers pipeline (the same pipeline class, transformer class, VAE
class and scheduler class as the released models) from tiny configs, so nothing is downloaded and
the whole denoising loop, including text encoding and VAE decoding, runs on a CPU in seconds. The
weights are random but deterministic: a given ``seed`` always gives the same weights, and building a
pipeline does not change the global torch random state (``torch.random.fork_rng`` around the
seeding). Each component is seeded on its own, so the text encoder and VAE weights do not change
when only the transformer size changes. The returned pipeline carries
``pipe._sparse_diffusion_weights = "random"`` so reports can say which weights were used.

Tokenizers are word-level ``tokenizers`` tokenizers wrapped in ``PreTrainedTokenizerFast``. They
lowercase and split on whitespace and punctuation; the vocabulary (``VOCABULARY``) covers common
colours, shapes, directions, motions and scene words, and any other word becomes ``<unk>``.

Attention sequence lengths per call (q length; B = batch) with each pipeline's default
``max_sequence_length`` and default sizes (2 layers, 2 heads, head_dim 64), measured on a 2-core
CPU in fp32 with ``torch.set_num_threads(2)``. "step" is one denoising step (transformer only, both
CFG branches); "decode" is the VAE decode that ``output_type="np"`` adds once per call:

=========================  ===============================================  ===========================
pipeline, size             self/joint attention tokens                      time
=========================  ===============================================  ===========================
Wan 64x64, 9 frames        3*4*4 = 48 video tokens; cross-attn keys are     ~6 ms/step; 3 steps with
                           the 512 padded text tokens; CFG = two B=1        decode ~0.1 s
                           passes per step
Wan 256x256, 33 frames     9*16*16 = 2304 video tokens                      ~0.13 s/step; decode ~2.4 s
CogVideoX 64x64, 9 frames  226 text + 3*4*4 video = 274, text FIRST,        ~7 ms/step; 3 steps with
                           CFG batched (B=2)                                decode ~0.1 s
CogVideoX 128x128, 17 fr.  226 + 5*8*8 = 546                                2 steps with decode ~1.0 s
CogVideoX 256x256, 33 fr.  226 + 9*16*16 = 2530                             ~0.12 s/step; decode ~7.8 s
Flux 64x64                 512 text + 32*32 image = 1536, text FIRST in     ~30 ms/step; 3 steps with
                           double and single blocks                         decode ~0.13 s
Flux 128x128               512 + 64*64 = 4608                               ~0.18 s/step; decode ~0.1 s
SD3 36x36,                 18*18 = 324 image + 77 CLIP + 32 T5 = 433,       ~13 ms/step; 3 steps with
max_sequence_length=32     text LAST; CFG batched (B=2)                     decode ~0.05 s
SD3 128x128                64*64 + 77 + 256 = 4429                          ~0.36 s/step; decode ~0.26 s
LTX 32x32, 9 frames,       3*8*8 = 192 video tokens; cross-attn keys are    ~8 ms/step; 3 steps with
max_sequence_length=16     the padded text tokens (128 by default); CFG     decode ~0.04 s
                           batched (B=2)
LTX 128x128, 17 frames     5*32*32 = 5120                                   ~0.49 s/step; decode ~0.44 s
Qwen-Image 256x256         prompt words + 5 text, then 16*16 = 256 image,   ~14 ms/step (both passes);
                           text FIRST; true CFG = two B=1 passes (cond,     3 steps with decode ~0.17 s
                           uncond), each with its own text length
Qwen-Image 512x512         text + 32*32 = 1024 image tokens                 ~42 ms/step; decode ~0.6 s
Mochi 128x128, 13 frames   3*8*8 = 192 video + each sample's VALID text     ~80 ms/step; 3 steps with
                           tokens, text LAST; one attention call per batch  decode ~1.8 s (the VAE needs
                           element (CFG batched, B=2: 192 + 1 uncond,       32 channels per level)
                           192 + prompt words + 1 cond)
=========================  ===============================================  ===========================

The first build in a process pays ~2-3 s of diffusers/transformers imports and the first call
up to ~2 s of CPU kernel warm-up; the times above are from warm calls. Besides the
transformer, ``F.scaled_dot_product_attention`` is also called by the text encoders (T5/UMT5/CLIP/
Qwen2.5-VL, transformers ``sdpa``) and by the VAE mid-block attention, so interception must stay limited to
hooked transformer modules. Outputs are finite, in [0, 1]; with random weights Wan frames are
low-contrast (std ~0.07 around 0.5), a few percent of Flux pixels and under 1% of SD3 and LTX pixels
clip at 0 or 1, and Qwen-Image images stay within about [0.3, 0.7].

Token arithmetic: Wan and CogVideoX VAEs compress 4x in time (``(F - 1) // 4 + 1`` latent frames)
and 8x in space, and the transformers patchify 2x2, so a video token covers 16x16 pixels. The Flux
VAE here has scale factor 1 and the pipeline packs 2x2 latents, so an image token covers 2x2 pixels.
Wan puts text only in cross-attention (keys/values are the ``max_sequence_length`` padded text
tokens, 512 by default). CogVideoX needs ``max_sequence_length`` equal to the transformer's
``max_text_seq_length`` (226, the pipeline default). Flux's text length is ``max_sequence_length``
(512 by default; pass a smaller value for shorter joint sequences). The SD3 VAE here has scale factor 1 and the
transformer patchifies 2x2, so an image token covers 2x2 pixels; SD3's text is the 77 CLIP tokens followed by the
``max_sequence_length`` T5 tokens (256 by default), LAST in the joint sequence. The LTX VAE here compresses 4x in
time and space and the transformer patch is 1x1x1, so a video token covers 4x4 pixels of 4 frames. The Qwen-Image
VAE compresses 8x and the pipeline packs 2x2 latents, so an image token covers 16x16 pixels; its text is the
prompt's words plus 5 chat-template tokens (the 34-token system prefix is dropped), FIRST in the joint sequence.
The Mochi pipeline fixes 6x temporal and 8x spatial VAE compression and the transformer patchifies 2x2 per frame,
so a video token covers 16x16 pixels of 6 frames; Mochi needs at least 2 denoising steps (its sigma schedule
divides by ``steps - 1``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from sparse_diffusion.errors import SparseDiffusionError


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
_TEXT_DIM = 32
_T5_KWARGS = dict(d_model=_TEXT_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8)


def _check_sizes(name: str, num_layers: int, num_heads: int, head_dim: int, seed: int) -> None:
    for label, value in (("num_layers", num_layers), ("num_heads", num_heads), ("head_dim", head_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SparseDiffusionError(f"{name}: {label}={value!r} must be a positive int, e.g. {label}=2.")
    if head_dim % 2:
        raise SparseDiffusionError(
            f"{name}: head_dim={head_dim} must be even (rotary embeddings pair channels); use e.g. 64."
        )
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SparseDiffusionError(f"{name}: seed={seed!r} must be an int, e.g. seed=0.")


def _word_tokenizer(specials: list[str], template: str, model_max_length: int, **special_kwargs):
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


def _t5_tokenizer():
    return _word_tokenizer(
        ["<pad>", "</s>", "<unk>"], "$A </s>", 512, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def _clip_tokenizer():
    return _word_tokenizer(
        ["<|startoftext|>", "<|endoftext|>", "<unk>"],
        "<|startoftext|> $A <|endoftext|>",
        77,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )


def _vocab_size() -> int:
    return 3 + len(VOCABULARY)


def _seeded(seed: int, offset: int, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Builds one component with weights fixed by ``(seed, offset)``, in eval mode."""
    torch.manual_seed(seed * 1000 + offset)
    return make().eval()


def _t5_encoder(seed: int, offset: int, umt5: bool = False) -> torch.nn.Module:
    if umt5:
        from transformers import UMT5Config, UMT5EncoderModel

        return _seeded(seed, offset, lambda: UMT5EncoderModel(UMT5Config(vocab_size=_vocab_size(), **_T5_KWARGS)))
    from transformers import T5Config, T5EncoderModel

    return _seeded(seed, offset, lambda: T5EncoderModel(T5Config(vocab_size=_vocab_size(), **_T5_KWARGS)))


# Locality prior: a q/k bias shared by queries and keys, so that after RoPE the score of two tokens falls with their
# space-time distance (the pattern trained video models show), plus a sharper q/k norm.
_LOCALITY_BIAS = 10.0


def _apply_locality_prior(transformer: torch.nn.Module, sharpness: float, seed: int) -> None:
    """Give every ``attn1`` a shared q/k bias (x10) and q/k norm weights x ``sharpness`` (deterministic in seed)."""
    gen = torch.Generator().manual_seed(seed * 1000 + 7)
    with torch.no_grad():
        for block in transformer.blocks:
            attn = block.attn1
            bias = torch.randn(attn.to_q.out_features, generator=gen) * _LOCALITY_BIAS
            attn.to_q.bias.copy_(bias)
            attn.to_k.bias.copy_(bias)
            attn.norm_q.weight.mul_(sharpness)
            attn.norm_k.weight.mul_(sharpness)


def _mark(pipe, weights: str = "random"):
    pipe._sparse_diffusion_weights = weights
    logger.debug("built tiny %s with %s weights", type(pipe).__name__, weights)
    return pipe


def build_tiny_wan_pipeline(
    *, num_layers: int = 2, num_heads: int = 2, head_dim: int = 64, seed: int = 0, locality: float | None = None
):
    """Builds a random-weight ``diffusers.WanPipeline`` (Wan 2.1 text-to-video layout), offline, on CPU, fp32.

    Transformer: ``WanTransformer3DModel`` with patch (1, 2, 2), ``num_heads`` heads of ``head_dim``
    channels, ``num_layers`` blocks, RMS q/k norm across heads, cross-attention norm, 16 latent
    channels, text dim 32, RoPE table for up to 1024 positions per axis. VAE: tiny
    ``AutoencoderKLWan`` (4x temporal, 8x spatial compression). Text encoder: tiny
    ``UMT5EncoderModel``. Scheduler: ``FlowMatchEulerDiscreteScheduler(shift=7.0)`` (diffusers'
    own Wan tests use it; released Wan checkpoints ship UniPC, which also works with this pipeline
    via ``pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction",
    use_flow_sigmas=True, flow_shift=3.0)``, checked). Each step calls the
    transformer twice (conditional, then unconditional, B = 1 each) when ``guidance_scale > 1``.

    Self-attention sees ``((F - 1) // 4 + 1) * (H // 16) * (W // 16)`` video tokens for ``F``
    frames of ``H x W`` pixels (H, W multiples of 16, ``F - 1`` a multiple of 4); text enters only
    through cross-attention. Example: 256x256, 33 frames -> 9*16*16 = 2304 tokens.

    ``locality`` (e.g. 3.0) adds a locality prior to the random self-attention: q and k share a large random bias,
    so after 3-D RoPE the score of two tokens falls with their space-time distance, and the q/k norm weights are
    multiplied by ``locality`` to sharpen it. Random attention is otherwise close to uniform, which no trained video
    model shows; with the prior, 90% of the softmax mass sits in about a quarter of the 128-token blocks at
    256x256x33. ``pipe._sparse_diffusion_weights`` then reads ``"random+locality-prior"``.

    Raises:
        SparseDiffusionError: a size is not a positive int, ``head_dim`` is odd, or ``seed`` is not an int.
    """
    _check_sizes("build_tiny_wan_pipeline", num_layers, num_heads, head_dim, seed)
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        transformer = _seeded(
            seed,
            1,
            lambda: WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=num_heads,
                attention_head_dim=head_dim,
                in_channels=16,
                out_channels=16,
                text_dim=_TEXT_DIM,
                freq_dim=256,
                ffn_dim=2 * num_heads * head_dim,
                num_layers=num_layers,
                cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
                rope_max_seq_len=1024,
            ),
        )
        vae = _seeded(
            seed,
            2,
            lambda: AutoencoderKLWan(
                base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
            ),
        )
        text_encoder = _t5_encoder(seed, 3, umt5=True)
    pipe = WanPipeline(
        tokenizer=_t5_tokenizer(),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=transformer,
    )
    if locality is not None:
        if isinstance(locality, bool) or not isinstance(locality, (int, float)) or locality <= 0:
            raise SparseDiffusionError(
                f"build_tiny_wan_pipeline: locality={locality!r} must be a positive number, e.g. 3.0."
            )
        _apply_locality_prior(transformer, float(locality), seed)
        return _mark(pipe, "random+locality-prior")
    return _mark(pipe)


def build_tiny_cogvideox_pipeline(*, num_layers: int = 2, num_heads: int = 2, head_dim: int = 64, seed: int = 0):
    """Builds a random-weight ``diffusers.CogVideoXPipeline`` (CogVideoX 1.0 layout), offline, on CPU, fp32.

    Transformer: ``CogVideoXTransformer3DModel`` with 2x2 patches, ``num_heads`` x ``head_dim``,
    ``num_layers`` blocks, sin-cos position embeddings, 4 latent channels and
    ``max_text_seq_length=226`` (the pipeline's default ``max_sequence_length``; other values fail in
    the patch embedding). VAE: tiny ``AutoencoderKLCogVideoX`` (4x temporal, 8x spatial). Text
    encoder: tiny ``T5EncoderModel``. Scheduler: ``CogVideoXDDIMScheduler`` (v-prediction, trailing
    spacing, zero-SNR betas, as the released models).

    Joint attention runs over ``226 + ((F - 1) // 4 + 1) * (H // 16) * (W // 16)`` tokens with the
    226 text tokens FIRST; classifier-free guidance is batched (B = 2). Default call size is
    64x64 pixels, 9 frames (274 tokens). Use ``num_frames = 8k + 1`` (9, 17, 33, 49): the VAE
    decodes an even number of latent frames to more frames than asked (5 frames -> 8).

    Raises:
        SparseDiffusionError: a size is not a positive int, ``head_dim`` is odd, or ``seed`` is not an int.
    """
    _check_sizes("build_tiny_cogvideox_pipeline", num_layers, num_heads, head_dim, seed)
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    with torch.random.fork_rng(devices=[]):
        transformer = _seeded(
            seed,
            1,
            lambda: CogVideoXTransformer3DModel(
                num_attention_heads=num_heads,
                attention_head_dim=head_dim,
                in_channels=4,
                out_channels=4,
                time_embed_dim=4,
                text_embed_dim=_TEXT_DIM,
                num_layers=num_layers,
                sample_width=8,
                sample_height=8,
                sample_frames=9,
                patch_size=2,
                temporal_compression_ratio=4,
                max_text_seq_length=226,
            ),
        )
        vae = _seeded(
            seed,
            2,
            lambda: AutoencoderKLCogVideoX(
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                block_out_channels=(8, 8, 8, 8),
                down_block_types=("CogVideoXDownBlock3D",) * 4,
                up_block_types=("CogVideoXUpBlock3D",) * 4,
                layers_per_block=1,
                norm_num_groups=2,
                temporal_compression_ratio=4,
            ),
        )
        text_encoder = _t5_encoder(seed, 3)
    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    pipe = CogVideoXPipeline(
        tokenizer=_t5_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    return _mark(pipe)


def _flux_rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Splits ``head_dim`` into three even RoPE axes (text/index, height, width) that sum to it."""
    side = 2 * ((3 * head_dim) // 16)
    return head_dim - 2 * side, side, side


def build_tiny_flux_pipeline(
    *, num_layers: int = 1, num_single_layers: int = 1, num_heads: int = 2, head_dim: int = 64, seed: int = 0
):
    """Builds a random-weight ``diffusers.FluxPipeline`` (FLUX.1 layout), offline, on CPU, fp32.

    Transformer: ``FluxTransformer2DModel`` with ``num_layers`` double-stream and
    ``num_single_layers`` single-stream blocks, ``num_heads`` x ``head_dim``, 4 packed latent
    channels, RoPE axes that sum to ``head_dim`` (64 -> (16, 24, 24)), no guidance embedding.
    VAE: one-level ``AutoencoderKL`` (scale factor 1, 1 latent channel). Text encoders: tiny
    ``CLIPTextModel`` (77 tokens, pooled) and tiny ``T5EncoderModel``. Scheduler:
    ``FlowMatchEulerDiscreteScheduler``.

    Joint attention runs over ``max_sequence_length + (H // 2) * (W // 2)`` tokens with the text
    tokens FIRST (512 by default; 64x64 -> 512 + 1024 = 1536). H and W must be even.

    Raises:
        SparseDiffusionError: a size is not a positive int, ``head_dim`` is odd or below 8, or
            ``seed`` is not an int.
    """
    _check_sizes("build_tiny_flux_pipeline", num_layers, num_heads, head_dim, seed)
    _check_sizes("build_tiny_flux_pipeline", num_single_layers, num_heads, head_dim, seed)
    if head_dim < 8:
        raise SparseDiffusionError(f"build_tiny_flux_pipeline: head_dim={head_dim} is below 8; use e.g. 64.")
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        transformer = _seeded(
            seed,
            1,
            lambda: FluxTransformer2DModel(
                patch_size=1,
                in_channels=4,
                num_layers=num_layers,
                num_single_layers=num_single_layers,
                attention_head_dim=head_dim,
                num_attention_heads=num_heads,
                joint_attention_dim=_TEXT_DIM,
                pooled_projection_dim=_TEXT_DIM,
                guidance_embeds=False,
                axes_dims_rope=_flux_rope_axes(head_dim),
            ),
        )
        vae = _seeded(
            seed,
            2,
            lambda: AutoencoderKL(
                sample_size=32,
                in_channels=3,
                out_channels=3,
                block_out_channels=(4,),
                layers_per_block=1,
                latent_channels=1,
                norm_num_groups=1,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.0609,
                scaling_factor=1.5035,
            ),
        )
        clip = _seeded(
            seed,
            4,
            lambda: CLIPTextModel(
                CLIPTextConfig(
                    hidden_size=_TEXT_DIM,
                    intermediate_size=37,
                    num_attention_heads=4,
                    num_hidden_layers=2,
                    vocab_size=_vocab_size(),
                    projection_dim=_TEXT_DIM,
                    max_position_embeddings=77,
                    bos_token_id=0,
                    eos_token_id=1,
                    pad_token_id=1,
                )
            ),
        )
        t5 = _t5_encoder(seed, 3)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=clip,
        tokenizer=_clip_tokenizer(),
        text_encoder_2=t5,
        tokenizer_2=_t5_tokenizer(),
        transformer=transformer,
    )
    return _mark(pipe)


def _clip_with_projection(seed: int, offset: int, hidden_size: int) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return _seeded(
        seed,
        offset,
        lambda: CLIPTextModelWithProjection(
            CLIPTextConfig(
                hidden_size=hidden_size,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                vocab_size=_vocab_size(),
                projection_dim=hidden_size,
                max_position_embeddings=77,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        ),
    )


def build_tiny_sd3_pipeline(
    *, num_layers: int = 2, num_heads: int = 2, head_dim: int = 64, seed: int = 0, dual_attention_layers: tuple = ()
):
    """Builds a random-weight ``diffusers.StableDiffusion3Pipeline`` (SD3 / SD3.5 layout), offline, on CPU, fp32.

    Transformer: ``SD3Transformer2DModel`` with 2x2 patches, ``num_heads`` x ``head_dim``,
    ``num_layers`` joint blocks (the last one ``context_pre_only``), 4 latent channels, joint
    attention dim 32, pooled projection dim 32. ``dual_attention_layers`` (e.g. ``(0,)``) gives
    those blocks SD3.5's extra image-only self-attention ``attn2`` (with RMS q/k norm, as SD3.5).
    VAE: one-level ``AutoencoderKL`` (scale factor 1, 4 latent channels). Text encoders: two tiny
    ``CLIPTextModelWithProjection`` (hidden 16 each, so the concatenated CLIP embeddings fill the
    joint dim 32 without padding; pooled 16 + 16) and a tiny ``T5EncoderModel``. Scheduler:
    ``FlowMatchEulerDiscreteScheduler(shift=3.0)`` (as the released SD3). CFG is batched (B = 2).

    Joint attention runs over ``(H // 2) * (W // 2) + 77 + max_sequence_length`` tokens with the
    image tokens first and the text tokens LAST (CLIP 77, then T5 ``max_sequence_length``, 256 by
    default). H and W must be even. Example: 36x36, ``max_sequence_length=32`` -> 324 + 109 = 433.

    Raises:
        SparseDiffusionError: a size is not a positive int, ``head_dim`` is odd, ``seed`` is not an
            int, or ``dual_attention_layers`` holds an index outside ``range(num_layers)``.
    """
    _check_sizes("build_tiny_sd3_pipeline", num_layers, num_heads, head_dim, seed)
    dual = tuple(dual_attention_layers)
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers for i in dual):
        raise SparseDiffusionError(
            f"build_tiny_sd3_pipeline: dual_attention_layers={dual_attention_layers!r} must hold block indices in "
            f"0..{num_layers - 1}, e.g. (0,)."
        )
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    with torch.random.fork_rng(devices=[]):
        transformer = _seeded(
            seed,
            1,
            lambda: SD3Transformer2DModel(
                sample_size=32,
                patch_size=2,
                in_channels=4,
                out_channels=4,
                num_layers=num_layers,
                attention_head_dim=head_dim,
                num_attention_heads=num_heads,
                caption_projection_dim=num_heads * head_dim,
                joint_attention_dim=_TEXT_DIM,
                pooled_projection_dim=_TEXT_DIM,
                dual_attention_layers=dual,
                qk_norm="rms_norm" if dual else None,
            ),
        )
        vae = _seeded(
            seed,
            2,
            lambda: AutoencoderKL(
                sample_size=32,
                in_channels=3,
                out_channels=3,
                block_out_channels=(4,),
                layers_per_block=1,
                latent_channels=4,
                norm_num_groups=1,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.0609,
                scaling_factor=1.5035,
            ),
        )
        t5 = _t5_encoder(seed, 3)
        clip_l = _clip_with_projection(seed, 4, _TEXT_DIM // 2)
        clip_g = _clip_with_projection(seed, 5, _TEXT_DIM // 2)
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        transformer=transformer,
        text_encoder=clip_l,
        tokenizer=_clip_tokenizer(),
        text_encoder_2=clip_g,
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=t5,
        tokenizer_3=_t5_tokenizer(),
    )
    return _mark(pipe)


def build_tiny_ltx_pipeline(*, num_layers: int = 2, num_heads: int = 2, head_dim: int = 64, seed: int = 0):
    """Builds a random-weight ``diffusers.LTXPipeline`` (LTX-Video 0.9 layout), offline, on CPU, fp32.

    Transformer: ``LTXVideoTransformer3DModel`` with 1x1x1 patches, ``num_heads`` x ``head_dim``,
    ``num_layers`` blocks, RMS q/k norm across heads, 3-D RoPE, 8 latent channels, caption dim 32.
    VAE: tiny ``AutoencoderKLLTXVideo`` (4x temporal, 4x spatial compression; the released VAE
    compresses 8x / 32x). Text encoder: tiny ``T5EncoderModel``. Scheduler:
    ``FlowMatchEulerDiscreteScheduler``. CFG is batched (B = 2) when ``guidance_scale > 1``.

    Self-attention ``attn1`` sees ``((F - 1) // 4 + 1) * (H // 4) * (W // 4)`` video tokens for
    ``F`` frames of ``H x W`` pixels (H, W multiples of 4); text enters only through cross-attention
    ``attn2`` (keys: the ``max_sequence_length`` padded text tokens, 128 by default, with the
    padding mask). Example: 32x32, 9 frames -> 3*8*8 = 192 tokens.

    Raises:
        SparseDiffusionError: a size is not a positive int, ``head_dim`` is odd, or ``seed`` is not an int.
    """
    _check_sizes("build_tiny_ltx_pipeline", num_layers, num_heads, head_dim, seed)
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    with torch.random.fork_rng(devices=[]):
        transformer = _seeded(
            seed,
            1,
            lambda: LTXVideoTransformer3DModel(
                in_channels=8,
                out_channels=8,
                patch_size=1,
                patch_size_t=1,
                num_attention_heads=num_heads,
                attention_head_dim=head_dim,
                cross_attention_dim=num_heads * head_dim,
                num_layers=num_layers,
                caption_channels=_TEXT_DIM,
            ),
        )

        def make_vae():
            vae = AutoencoderKLLTXVideo(
                latent_channels=8,
                block_out_channels=(8, 8, 8, 8),
                decoder_block_out_channels=(8, 8, 8, 8),
                spatio_temporal_scaling=(True, True, False, False),
                decoder_spatio_temporal_scaling=(True, True, False, False),
                layers_per_block=(1, 1, 1, 1, 1),
                decoder_layers_per_block=(1, 1, 1, 1, 1),
                patch_size=1,
                patch_size_t=1,
                encoder_causal=True,
                decoder_causal=False,
            )
            vae.use_framewise_encoding = False
            vae.use_framewise_decoding = False
            return vae

        vae = _seeded(seed, 2, make_vae)
        text_encoder = _t5_encoder(seed, 3)
    pipe = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_t5_tokenizer(),
        transformer=transformer,
    )
    return _mark(pipe)


# Words of QwenImagePipeline's prompt template, so that its system prefix tokenizes to the 34 tokens the pipeline
# drops.
_QWEN_TEMPLATE_WORDS = (
    "system user assistant describe detailing color size texture quantity text spatial relationships objects"
)
_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]


def _qwen_tokenizer():
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


def _qwen_vl_encoder(seed: int, offset: int, vocab_size: int) -> torch.nn.Module:
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
        hidden_size=_TEXT_DIM,
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
    vision_config = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=_TEXT_DIM)
    return _seeded(
        seed,
        offset,
        lambda: Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(
                text_config=text_config,
                vision_config=vision_config,
                hidden_size=_TEXT_DIM,
                vocab_size=vocab_size,
                bos_token_id=None,
                eos_token_id=2,
                pad_token_id=0,
                **special_ids,
            )
        ),
    )


def build_tiny_qwenimage_pipeline(*, num_layers: int = 2, num_heads: int = 2, head_dim: int = 64, seed: int = 0):
    """Builds a random-weight ``diffusers.QwenImagePipeline`` (Qwen-Image layout), offline, on CPU, fp32.

    Transformer: ``QwenImageTransformer2DModel`` with 2x2 packed patches, ``num_heads`` x
    ``head_dim``, ``num_layers`` double-stream blocks, RoPE axes that sum to ``head_dim``
    (64 -> (16, 24, 24)), 16 latent channels (64 packed), joint attention dim 32, no guidance
    embedding. VAE: tiny ``AutoencoderKLQwenImage`` (8x spatial, as the released one). Text
    encoder: tiny ``Qwen2_5_VLForConditionalGeneration`` (2 text layers, hidden 32, M-RoPE; a
    1-layer vision tower that text prompts never use) with a word-level tokenizer whose chat
    markers are special tokens, so the pipeline's template prefix is the 34 tokens it drops.
    Scheduler: ``FlowMatchEulerDiscreteScheduler``. With ``true_cfg_scale > 1`` and a
    ``negative_prompt`` each step runs two B = 1 passes (``cond``, then ``uncond``), whose text
    lengths differ.

    Joint attention runs over ``text + (H // 16) * (W // 16)`` tokens with the text tokens FIRST;
    text is the prompt's words plus 5 template tokens (``<|im_end|>``, newline, ``<|im_start|>``,
    ``assistant``, newline). H and W must be multiples of 16. Example: 128x128, "a green triangle"
    -> 8 + 64 = 72 tokens.

    Raises:
        SparseDiffusionError: a size is not a positive int, ``head_dim`` is odd or below 8, or
            ``seed`` is not an int.
    """
    _check_sizes("build_tiny_qwenimage_pipeline", num_layers, num_heads, head_dim, seed)
    if head_dim < 8:
        raise SparseDiffusionError(f"build_tiny_qwenimage_pipeline: head_dim={head_dim} is below 8; use e.g. 64.")
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    tokenizer = _qwen_tokenizer()
    with torch.random.fork_rng(devices=[]):
        transformer = _seeded(
            seed,
            1,
            lambda: QwenImageTransformer2DModel(
                patch_size=2,
                in_channels=64,
                out_channels=16,
                num_layers=num_layers,
                attention_head_dim=head_dim,
                num_attention_heads=num_heads,
                joint_attention_dim=_TEXT_DIM,
                guidance_embeds=False,
                axes_dims_rope=_flux_rope_axes(head_dim),
            ),
        )
        vae = _seeded(
            seed,
            2,
            lambda: AutoencoderKLQwenImage(
                base_dim=4,
                z_dim=16,
                dim_mult=[1, 1, 1, 1],
                num_res_blocks=1,
                temperal_downsample=[False, True, True],
                latents_mean=[0.0] * 16,
                latents_std=[1.0] * 16,
            ),
        )
        text_encoder = _qwen_vl_encoder(seed, 3, len(tokenizer))
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    return _mark(pipe)


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


def _llama_tokenizer():
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


def build_tiny_hunyuan_video_pipeline(
    *, num_layers: int = 1, num_single_layers: int = 1, num_heads: int = 2, head_dim: int = 64, seed: int = 0
):
    """Builds a random-weight ``diffusers.HunyuanVideoPipeline`` (HunyuanVideo text-to-video layout), offline, on CPU,
    fp32.

    Transformer: ``HunyuanVideoTransformer3DModel`` with 1x1x1 patches (the released model patchifies 1x2x2),
    ``num_heads`` x ``head_dim``, ``num_layers`` double-stream and ``num_single_layers`` single-stream blocks, one
    token-refiner layer, RMS q/k norm, 3-D RoPE axes that sum to ``head_dim`` (64 -> (16, 24, 24)), 4 latent
    channels, text dim 32, pooled dim 32, guidance embedding (as the released model). VAE: tiny
    ``AutoencoderKLHunyuanVideo`` (4x temporal, 8x spatial, as the released one). Text encoders: a tiny
    ``LlamaModel`` (2 layers, hidden 32; the pipeline reads the third-last hidden state) with a word-level tokenizer
    whose template prefix is the 95 tokens the pipeline crops, and a tiny ``CLIPTextModel`` (pooled output only).
    Scheduler: ``FlowMatchEulerDiscreteScheduler``. Guidance is embedded (no CFG pass), so each step is one B = 1
    forward per prompt.

    Joint attention (double- and single-stream blocks alike) runs over
    ``((F - 1) // 4 + 1) * (H // 8) * (W // 8)`` video tokens followed by ``max_sequence_length`` text tokens (256
    by default): the prompt's words, ``<|eot_id|>``, then padding that the transformer masks out (an attention mask
    ``[B, 1, 1, N]`` on every joint call). H and W must be multiples of 16. Example: 32x32, 9 frames,
    ``max_sequence_length=16`` -> 3*4*4 = 48 video + 16 text = 64 tokens.

    Raises:
        SparseDiffusionError: a size is not a positive int, ``head_dim`` is odd or below 8, or ``seed`` is not an
            int.
    """
    _check_sizes("build_tiny_hunyuan_video_pipeline", num_layers, num_heads, head_dim, seed)
    if not isinstance(num_single_layers, int) or isinstance(num_single_layers, bool) or num_single_layers < 1:
        raise SparseDiffusionError(
            f"build_tiny_hunyuan_video_pipeline: num_single_layers={num_single_layers!r} must be a positive int, "
            "e.g. num_single_layers=1."
        )
    if head_dim < 8:
        raise SparseDiffusionError(f"build_tiny_hunyuan_video_pipeline: head_dim={head_dim} is below 8; use e.g. 64.")
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer = _llama_tokenizer()
    with torch.random.fork_rng(devices=[]):
        transformer = _seeded(
            seed,
            1,
            lambda: HunyuanVideoTransformer3DModel(
                in_channels=4,
                out_channels=4,
                num_attention_heads=num_heads,
                attention_head_dim=head_dim,
                num_layers=num_layers,
                num_single_layers=num_single_layers,
                num_refiner_layers=1,
                patch_size=1,
                patch_size_t=1,
                text_embed_dim=_TEXT_DIM,
                pooled_projection_dim=_TEXT_DIM,
                rope_axes_dim=_flux_rope_axes(head_dim),
                guidance_embeds=True,
            ),
        )
        vae = _seeded(
            seed,
            2,
            lambda: AutoencoderKLHunyuanVideo(
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                block_out_channels=(8, 8, 8, 8),
                layers_per_block=1,
                norm_num_groups=4,
                spatial_compression_ratio=8,
                temporal_compression_ratio=4,
            ),
        )
        llama = _seeded(
            seed,
            3,
            lambda: LlamaModel(
                LlamaConfig(
                    vocab_size=len(tokenizer),
                    hidden_size=_TEXT_DIM,
                    intermediate_size=37,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=4,
                    max_position_embeddings=1024,
                    pad_token_id=0,
                    bos_token_id=1,
                    eos_token_id=4,
                )
            ),
        )
        clip = _seeded(
            seed,
            4,
            lambda: CLIPTextModel(
                CLIPTextConfig(
                    hidden_size=_TEXT_DIM,
                    intermediate_size=37,
                    num_attention_heads=4,
                    num_hidden_layers=2,
                    vocab_size=_vocab_size(),
                    projection_dim=_TEXT_DIM,
                    max_position_embeddings=77,
                    bos_token_id=0,
                    eos_token_id=1,
                    pad_token_id=1,
                )
            ),
        )
    pipe = HunyuanVideoPipeline(
        text_encoder=llama,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder_2=clip,
        tokenizer_2=_clip_tokenizer(),
    )
    return _mark(pipe)


def build_tiny_mochi_pipeline(*, num_layers: int = 2, num_heads: int = 2, head_dim: int = 64, seed: int = 0):
    """Builds a random-weight ``diffusers.MochiPipeline`` (Mochi 1 layout), offline, on CPU, fp32.

    Transformer: ``MochiTransformer3DModel`` with 2x2 spatial patches (none over time), ``num_heads`` x
    ``head_dim``, ``num_layers`` blocks (the last one ``context_pre_only``), RMS q/k norm, 3-D RoPE, 12 latent
    channels, text dim 32, context stream dim 32. VAE: tiny ``AutoencoderKLMochi`` (32 channels per level: its
    group norms use 32 groups; 6x temporal, 8x spatial, as the released one). Text encoder: tiny ``T5EncoderModel``.
    Scheduler: ``FlowMatchEulerDiscreteScheduler(invert_sigmas=True)``, so the timesteps go up during a call, as in
    the released model. CFG is batched (B = 2: uncond, cond).

    Joint attention ``attn1`` runs ONE call per batch element over ``((F - 1) // 6 + 1) * (H // 16) * (W // 16)``
    video tokens followed by that element's valid text tokens only (prompt words + ``</s>``; the empty negative
    prompt has 1). H and W must be multiples of 16. Example: 128x128, 13 frames, prompt "a red circle moving left"
    -> 3*8*8 = 192 video tokens + 6 (cond) or 1 (uncond) text tokens.

    Raises:
        SparseDiffusionError: a size is not a positive int, ``head_dim`` is odd, or ``seed`` is not an int.
    """
    _check_sizes("build_tiny_mochi_pipeline", num_layers, num_heads, head_dim, seed)
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        transformer = _seeded(
            seed,
            1,
            lambda: MochiTransformer3DModel(
                patch_size=2,
                num_attention_heads=num_heads,
                attention_head_dim=head_dim,
                num_layers=num_layers,
                pooled_projection_dim=_TEXT_DIM,
                in_channels=12,
                text_embed_dim=_TEXT_DIM,
                time_embed_dim=_TEXT_DIM,
            ),
        )
        vae = _seeded(
            seed,
            2,
            lambda: AutoencoderKLMochi(
                latent_channels=12,
                out_channels=3,
                encoder_block_out_channels=(32,) * 4,
                decoder_block_out_channels=(32,) * 4,
                layers_per_block=(1,) * 5,
            ),
        )
        text_encoder = _t5_encoder(seed, 3)
    pipe = MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(invert_sigmas=True),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_t5_tokenizer(),
        transformer=transformer,
    )
    return _mark(pipe)


def build_tiny_wan_i2v_pipeline(*, num_layers: int = 2, num_heads: int = 2, head_dim: int = 64, seed: int = 0):
    """Builds a random-weight ``diffusers.WanImageToVideoPipeline`` (Wan 2.1 I2V layout), offline, on CPU, fp32.

    The text-to-video parts are those of ``build_tiny_wan_pipeline``; the transformer takes 36 input channels (16
    noise + 20 image-condition latents) and an image embedding (``image_dim`` 32) from a tiny ``CLIPVisionModel``
    (32x32 input, patch 8) that its cross-attention ``attn2`` reads through ``add_k_proj``/``add_v_proj``.
    Self-attention ``attn1`` is as in text-to-video. The pipeline needs the ``ftfy`` package (prompt cleaning).

    Raises:
        SparseDiffusionError: a size is not a positive int, ``head_dim`` is odd, or ``seed`` is not an int.
    """
    _check_sizes("build_tiny_wan_i2v_pipeline", num_layers, num_heads, head_dim, seed)
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    t2v = build_tiny_wan_pipeline(num_layers=num_layers, num_heads=num_heads, head_dim=head_dim, seed=seed)
    with torch.random.fork_rng(devices=[]):
        transformer = _seeded(
            seed,
            4,
            lambda: WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=num_heads,
                attention_head_dim=head_dim,
                in_channels=36,
                out_channels=16,
                text_dim=_TEXT_DIM,
                freq_dim=256,
                ffn_dim=2 * num_heads * head_dim,
                num_layers=num_layers,
                cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
                rope_max_seq_len=1024,
                image_dim=32,
            ),
        )
        image_encoder = _seeded(
            seed,
            5,
            lambda: CLIPVisionModel(
                CLIPVisionConfig(
                    hidden_size=32,
                    projection_dim=32,
                    intermediate_size=37,
                    num_attention_heads=4,
                    num_hidden_layers=2,
                    image_size=32,
                    patch_size=8,
                )
            ),
        )
    pipe = WanImageToVideoPipeline(
        tokenizer=t2v.tokenizer,
        text_encoder=t2v.text_encoder,
        vae=t2v.vae,
        scheduler=t2v.scheduler,
        image_processor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=image_encoder,
        transformer=transformer,
    )
    return _mark(pipe)


#: Builder per pipeline kind, for the CLI and the tests.
TINY_BUILDERS: dict[str, Callable] = {
    "wan": build_tiny_wan_pipeline,
    "wan_i2v": build_tiny_wan_i2v_pipeline,
    "cogvideox": build_tiny_cogvideox_pipeline,
    "flux": build_tiny_flux_pipeline,
    "sd3": build_tiny_sd3_pipeline,
    "ltx": build_tiny_ltx_pipeline,
    "qwenimage": build_tiny_qwenimage_pipeline,
    "hunyuan_video": build_tiny_hunyuan_video_pipeline,
    "mochi": build_tiny_mochi_pipeline,
}


#: Folder of the project-trained tiny Wan model (diffusers `save_pretrained` layout, fp16 safetensors).
TRAINED_WAN_DIR = Path(__file__).resolve().parent / "weights" / "tiny_wan_shapes"
TRAINED_WAN_WEIGHTS = "trained: tiny-wan-shapes (project-trained on procedural moving shapes, see its MODEL_CARD.md)"


def load_trained_tiny_wan_pipeline(*, dtype: torch.dtype = torch.float32):
    """Loads the project-trained tiny Wan 2.1-style text-to-video pipeline shipped with the package, offline.

    ``diffusers.WanPipeline``: ``WanTransformer3DModel`` (4 layers, 4 heads of 64, patch 1x1x1, 8 latent
    channels), a trained ``AutoencoderKLWan`` (8x space, 4x time), the tiny UMT5 text encoder of this module and
    ``UniPCMultistepScheduler`` (flow, shift 3). Trained by ``scripts/train_tiny_video.py`` on 128x128 clips of 33
    frames (9*16*16 = 2304 video tokens per self-attention call) of one shape moving in a straight line; prompts
    look like ``"a red circle moving left"`` (``pipelines.shapes.all_prompts()``). Weights are stored in fp16 and
    loaded as ``dtype``. ``pipe._sparse_diffusion_weights`` reads ``TRAINED_WAN_WEIGHTS``.

    Raises:
        SparseDiffusionError: the weight folder is missing (e.g. a source checkout without ``pipelines/weights``).
    """
    from diffusers import WanPipeline

    if not (TRAINED_WAN_DIR / "model_index.json").is_file():
        raise SparseDiffusionError(
            f"the trained tiny Wan model is missing at {TRAINED_WAN_DIR}; reinstall the package or retrain it with "
            "`python scripts/train_tiny_video.py --out pipelines/weights/tiny_wan_shapes`."
        )
    pipe = WanPipeline.from_pretrained(str(TRAINED_WAN_DIR), dtype=dtype, local_files_only=True)
    return _mark(pipe, TRAINED_WAN_WEIGHTS)
