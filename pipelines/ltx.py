"""LTX-Video (`LTXVideoTransformer3DModel`): self-attention `transformer_blocks.N.attn1` over video tokens only; text
enters through cross-attention `attn2` (with the text padding mask), which stays dense. CFG is batched (B = 2)."""

from .base import Adapter


LTX = Adapter(
    family="ltx",
    transformer_classes=("LTXVideoTransformer3DModel",),
    self_attention=r"transformer_blocks\.\d+\.attn1",
    text_position=None,
    token_layout=(
        "video tokens F x H x W (patch 1x1x1 on the VAE latents) in attn1; cross-attention attn2 to text stays dense"
    ),
)
