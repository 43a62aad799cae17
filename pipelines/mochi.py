"""Mochi (`MochiTransformer3DModel`): joint attention `transformer_blocks.N.attn1` over [video | text] tokens, text
LAST, one attention call PER BATCH ELEMENT.

diffusers' `MochiAttnProcessor2_0` loops over the batch: for sample b it keeps only the valid text tokens
(`encoder_attention_mask[b]`), concatenates `[video, valid text]` and calls `F.scaled_dot_product_attention` on that
B = 1 sequence, so with batched CFG (uncond, cond) a layer makes two calls per forward with different lengths. Each
call gets its own plan (the call index is part of the plan key). The video grid is `hidden_states` [B, C, F, H, W]
with 2-D patches (`patch_size` 2 over H and W, none over time), so a call's text length is its length minus the
video tokens. The scheduler's timesteps go up during a call (`invert_sigmas`).
"""

from .base import Adapter


MOCHI = Adapter(
    family="mochi",
    transformer_classes=("MochiTransformer3DModel",),
    self_attention=r"transformer_blocks\.\d+\.attn1",
    text_position="last",
    video_grid=True,
    temporal_patch=False,
    increasing_timesteps=True,
    token_layout=(
        "[video | valid text] joint attention, text LAST, one call per batch element (each with its own plan); "
        "text rows and columns dense"
    ),
)
