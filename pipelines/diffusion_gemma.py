"""DiffusionGemma (transformers `DiffusionGemmaForBlockDiffusion`, diffusers `DiffusionGemmaPipeline`).

A causal encoder fills a KV cache with the prompt; a bidirectional decoder denoises one canvas, and each decoder
self-attention layer attends from the canvas queries over `[encoder KV cache ; canvas]` keys. That attention is never
square (Sq = canvas, Sk = prefix + canvas), so no call is accelerated: the hooked decoder layers pass every call
through to the original attention, `generate()` runs unchanged and the report lists the reason. Steps are decoder
forwards (`generate()` calls the top model's `forward` directly, so the step hooks sit on `model.decoder`).
"""

from .base import Adapter


DIFFUSION_GEMMA = Adapter(
    family="diffusion_gemma",
    transformer_classes=("DiffusionGemmaForBlockDiffusion",),
    self_attention=r"(?:.+\.)?decoder\.layers\.\d+\.self_attn",
    text_position=None,
    denoiser_components=("model",),
    step_source="forward",
    step_module="model.decoder",  # generate() calls self.forward directly; every decoder forward is one step
    token_layout="decoder canvas queries over [encoder KV cache | canvas] keys: not square, runs dense (reported)",
)
