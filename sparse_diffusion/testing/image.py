"""Tiny Flux, SD3 and Qwen-Image pipelines."""

from __future__ import annotations

import torch

from ..errors import SparseDiffusionError
from .components import (
    TEXT_DIM,
    check_sizes,
    clip_tokenizer,
    clip_with_projection,
    label_weights,
    qwen_tokenizer,
    qwen_vl_encoder,
    rope_axes,
    seeded,
    t5_encoder,
    t5_tokenizer,
    vocab_size,
)


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
    check_sizes("build_tiny_flux_pipeline", num_layers, num_heads, head_dim, seed)
    check_sizes("build_tiny_flux_pipeline", num_single_layers, num_heads, head_dim, seed)
    if head_dim < 8:
        raise SparseDiffusionError(f"build_tiny_flux_pipeline: head_dim={head_dim} is below 8; use e.g. 64.")
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            seed,
            1,
            lambda: FluxTransformer2DModel(
                patch_size=1,
                in_channels=4,
                num_layers=num_layers,
                num_single_layers=num_single_layers,
                attention_head_dim=head_dim,
                num_attention_heads=num_heads,
                joint_attention_dim=TEXT_DIM,
                pooled_projection_dim=TEXT_DIM,
                guidance_embeds=False,
                axes_dims_rope=rope_axes(head_dim),
            ),
        )
        vae = seeded(
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
        clip = seeded(
            seed,
            4,
            lambda: CLIPTextModel(
                CLIPTextConfig(
                    hidden_size=TEXT_DIM,
                    intermediate_size=37,
                    num_attention_heads=4,
                    num_hidden_layers=2,
                    vocab_size=vocab_size(),
                    projection_dim=TEXT_DIM,
                    max_position_embeddings=77,
                    bos_token_id=0,
                    eos_token_id=1,
                    pad_token_id=1,
                )
            ),
        )
        t5 = t5_encoder(seed, 3)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )
    return label_weights(pipe)


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
    check_sizes("build_tiny_sd3_pipeline", num_layers, num_heads, head_dim, seed)
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
        transformer = seeded(
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
                joint_attention_dim=TEXT_DIM,
                pooled_projection_dim=TEXT_DIM,
                dual_attention_layers=dual,
                qk_norm="rms_norm" if dual else None,
            ),
        )
        vae = seeded(
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
        t5 = t5_encoder(seed, 3)
        clip_l = clip_with_projection(seed, 4, TEXT_DIM // 2)
        clip_g = clip_with_projection(seed, 5, TEXT_DIM // 2)
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        transformer=transformer,
        text_encoder=clip_l,
        tokenizer=clip_tokenizer(),
        text_encoder_2=clip_g,
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer(),
    )
    return label_weights(pipe)


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
    check_sizes("build_tiny_qwenimage_pipeline", num_layers, num_heads, head_dim, seed)
    if head_dim < 8:
        raise SparseDiffusionError(f"build_tiny_qwenimage_pipeline: head_dim={head_dim} is below 8; use e.g. 64.")
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    tokenizer = qwen_tokenizer()
    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            seed,
            1,
            lambda: QwenImageTransformer2DModel(
                patch_size=2,
                in_channels=64,
                out_channels=16,
                num_layers=num_layers,
                attention_head_dim=head_dim,
                num_attention_heads=num_heads,
                joint_attention_dim=TEXT_DIM,
                guidance_embeds=False,
                axes_dims_rope=rope_axes(head_dim),
            ),
        )
        vae = seeded(
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
        text_encoder = qwen_vl_encoder(seed, 3, len(tokenizer))
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    return label_weights(pipe)
