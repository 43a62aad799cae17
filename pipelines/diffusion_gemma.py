"""DiffusionGemma (transformers `DiffusionGemmaForBlockDiffusion`, diffusers `DiffusionGemmaPipeline`).

A causal encoder fills a KV cache with the prompt (and every finished canvas); a bidirectional decoder then denoises
one canvas of `canvas_length` tokens, and each decoder self-attention layer attends from the canvas queries
q [B, H, Sq = canvas, D] over k, v [B, HK, Sk = prefix + canvas, D], the keys being `[encoder KV cache ; canvas]`
(sliding-window layers see only the last `sliding_window` cached tokens, full layers all of them). That is prefix
attention: the queries are the last Sq keys (`query_is_key_suffix`), so it is served block-sparse with query blocks
over the canvas, key blocks over all Sk keys and the forced diagonal offset by the prefix `Sk - Sq` (not a block
multiple in general). Without padding the decoder's masks are None; a batch of prompts of different lengths brings a
padding mask that is honoured only as a tile pattern, otherwise those calls run dense (reported).

Steps and calls: `generate()` calls the top model's `forward` directly, so every `model.decoder` forward is one step;
every `model.encoder` forward (once before each canvas) opens a new call, so each canvas gets its own dense warm-up,
build step and plans (the prefix has grown by a canvas). The number of denoising steps per canvas is not known in
advance (the sampler stops early), so the default `dense_steps` is a count; pass `num_inference_steps` (the
generation config's `max_denoising_steps`) to `accelerate_model` to give it as a fraction. Defaults otherwise as the
`dlm` adapter (top-k 0.1 + complement caching, no re-planning); `keep_generated_tokens` keeps the canvas key columns
(they change every step, while the cached prefix, whose dropped blocks the complement stands in for, does not).
"""

from .base import Adapter
from .masked_lm import DLM_CONFIG_DEFAULTS


DIFFUSION_GEMMA = Adapter(
    family="diffusion_gemma",
    transformer_classes=("DiffusionGemmaForBlockDiffusion",),
    self_attention=r"(?:.+\.)?decoder\.layers\.\d+\.self_attn",
    text_position=None,
    denoiser_components=("model",),
    step_source="forward",
    step_module="model.decoder",  # generate() calls self.forward directly; every decoder forward is one step
    call_module="model.encoder",  # runs once before each canvas's denoising loop
    query_is_key_suffix=True,
    token_layout="canvas queries over [encoder KV cache | canvas] keys (prefix attention); one call per canvas",
    config_defaults=DLM_CONFIG_DEFAULTS + (("dense_steps", 4),),
)
