"""Tiny Wan 2.1 pipelines (text-to-video, image-to-video) and the project-trained tiny Wan model."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import SparseDiffusionError
from .components import TEXT_DIM, check_sizes, label_weights, seeded, t5_encoder, t5_tokenizer


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
    check_sizes("build_tiny_wan_pipeline", num_layers, num_heads, head_dim, seed)
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            seed,
            1,
            lambda: WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=num_heads,
                attention_head_dim=head_dim,
                in_channels=16,
                out_channels=16,
                text_dim=TEXT_DIM,
                freq_dim=256,
                ffn_dim=2 * num_heads * head_dim,
                num_layers=num_layers,
                cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
                rope_max_seq_len=1024,
            ),
        )
        vae = seeded(
            seed,
            2,
            lambda: AutoencoderKLWan(
                base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
            ),
        )
        text_encoder = t5_encoder(seed, 3, umt5=True)
    pipe = WanPipeline(
        tokenizer=t5_tokenizer(),
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
        return label_weights(pipe, "random+locality-prior")
    return label_weights(pipe)


def build_tiny_wan_i2v_pipeline(*, num_layers: int = 2, num_heads: int = 2, head_dim: int = 64, seed: int = 0):
    """Builds a random-weight ``diffusers.WanImageToVideoPipeline`` (Wan 2.1 I2V layout), offline, on CPU, fp32.

    The text-to-video parts are those of ``build_tiny_wan_pipeline``; the transformer takes 36 input channels (16
    noise + 20 image-condition latents) and an image embedding (``image_dim`` 32) from a tiny ``CLIPVisionModel``
    (32x32 input, patch 8) that its cross-attention ``attn2`` reads through ``add_k_proj``/``add_v_proj``.
    Self-attention ``attn1`` is as in text-to-video. The pipeline needs the ``ftfy`` package (prompt cleaning).

    Raises:
        SparseDiffusionError: a size is not a positive int, ``head_dim`` is odd, or ``seed`` is not an int.
    """
    check_sizes("build_tiny_wan_i2v_pipeline", num_layers, num_heads, head_dim, seed)
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    t2v = build_tiny_wan_pipeline(num_layers=num_layers, num_heads=num_heads, head_dim=head_dim, seed=seed)
    with torch.random.fork_rng(devices=[]):
        transformer = seeded(
            seed,
            4,
            lambda: WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=num_heads,
                attention_head_dim=head_dim,
                in_channels=36,
                out_channels=16,
                text_dim=TEXT_DIM,
                freq_dim=256,
                ffn_dim=2 * num_heads * head_dim,
                num_layers=num_layers,
                cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
                rope_max_seq_len=1024,
                image_dim=32,
            ),
        )
        image_encoder = seeded(
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
    return label_weights(pipe)


#: Folder of the project-trained tiny Wan model (diffusers `save_pretrained` layout, fp16 safetensors).
TRAINED_WAN_DIR = Path(__file__).resolve().parent / "weights" / "tiny_wan_shapes"
TRAINED_WAN_WEIGHTS = "trained: tiny-wan-shapes (project-trained on procedural moving shapes, see its MODEL_CARD.md)"


def load_trained_tiny_wan_pipeline(*, dtype: torch.dtype = torch.float32):
    """Loads the project-trained tiny Wan 2.1-style text-to-video pipeline shipped with the package, offline.

    ``diffusers.WanPipeline``: ``WanTransformer3DModel`` (4 layers, 4 heads of 64, patch 1x1x1, 8 latent
    channels), a trained ``AutoencoderKLWan`` (8x space, 4x time), the tiny UMT5 text encoder of this module and
    ``UniPCMultistepScheduler`` (flow, shift 3). Trained by ``scripts/train_tiny_video.py`` on 128x128 clips of 33
    frames (9*16*16 = 2304 video tokens per self-attention call) of one shape moving in a straight line; prompts
    look like ``"a red circle moving left"`` (``testing.shapes.all_prompts()``). Weights are stored in fp16 and
    loaded as ``dtype``. ``pipe._sparse_diffusion_weights`` reads ``TRAINED_WAN_WEIGHTS``.

    Raises:
        SparseDiffusionError: the weight folder is missing (e.g. a source checkout without ``sparse_diffusion/testing/weights``).
    """
    from diffusers import WanPipeline

    if not (TRAINED_WAN_DIR / "model_index.json").is_file():
        raise SparseDiffusionError(
            f"the trained tiny Wan model is missing at {TRAINED_WAN_DIR}; reinstall the package or retrain it with "
            "`python scripts/train_tiny_video.py --out sparse_diffusion/testing/weights/tiny_wan_shapes`."
        )
    pipe = WanPipeline.from_pretrained(str(TRAINED_WAN_DIR), dtype=dtype, local_files_only=True)
    return label_weights(pipe, TRAINED_WAN_WEIGHTS)
