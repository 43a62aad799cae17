"""Tiny CogVideoX, LTX, HunyuanVideo and Mochi pipelines."""

from __future__ import annotations

import torch

from ..errors import SparseDiffusionError
from .components import (
    TEXT_DIM,
    check_sizes,
    clip_tokenizer,
    label_weights,
    llama_tokenizer,
    rope_axes,
    seeded,
    t5_encoder,
    t5_tokenizer,
    vocab_size,
)


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
    check_sizes("build_tiny_cogvideox_pipeline", num_layers, num_heads, head_dim, seed)
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            seed,
            1,
            lambda: CogVideoXTransformer3DModel(
                num_attention_heads=num_heads,
                attention_head_dim=head_dim,
                in_channels=4,
                out_channels=4,
                time_embed_dim=4,
                text_embed_dim=TEXT_DIM,
                num_layers=num_layers,
                sample_width=8,
                sample_height=8,
                sample_frames=9,
                patch_size=2,
                temporal_compression_ratio=4,
                max_text_seq_length=226,
            ),
        )
        vae = seeded(
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
        text_encoder = t5_encoder(seed, 3)
    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    pipe = CogVideoXPipeline(
        tokenizer=t5_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    return label_weights(pipe)


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
    check_sizes("build_tiny_ltx_pipeline", num_layers, num_heads, head_dim, seed)
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
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
                caption_channels=TEXT_DIM,
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

        vae = seeded(seed, 2, make_vae)
        text_encoder = t5_encoder(seed, 3)
    pipe = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=t5_tokenizer(),
        transformer=transformer,
    )
    return label_weights(pipe)


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
    check_sizes("build_tiny_hunyuan_video_pipeline", num_layers, num_heads, head_dim, seed)
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

    tokenizer = llama_tokenizer()
    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
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
                text_embed_dim=TEXT_DIM,
                pooled_projection_dim=TEXT_DIM,
                rope_axes_dim=rope_axes(head_dim),
                guidance_embeds=True,
            ),
        )
        vae = seeded(
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
        llama = seeded(
            seed,
            3,
            lambda: LlamaModel(
                LlamaConfig(
                    vocab_size=len(tokenizer),
                    hidden_size=TEXT_DIM,
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
    pipe = HunyuanVideoPipeline(
        text_encoder=llama,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder_2=clip,
        tokenizer_2=clip_tokenizer(),
    )
    return label_weights(pipe)


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
    check_sizes("build_tiny_mochi_pipeline", num_layers, num_heads, head_dim, seed)
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            seed,
            1,
            lambda: MochiTransformer3DModel(
                patch_size=2,
                num_attention_heads=num_heads,
                attention_head_dim=head_dim,
                num_layers=num_layers,
                pooled_projection_dim=TEXT_DIM,
                in_channels=12,
                text_embed_dim=TEXT_DIM,
                time_embed_dim=TEXT_DIM,
            ),
        )
        vae = seeded(
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
        text_encoder = t5_encoder(seed, 3)
    pipe = MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(invert_sigmas=True),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=t5_tokenizer(),
        transformer=transformer,
    )
    return label_weights(pipe)
