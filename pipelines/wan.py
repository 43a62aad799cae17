"""Wan 2.1 text-to-video (`WanTransformer3DModel`): self-attention `blocks.N.attn1` over video tokens only; text
enters through cross-attention `attn2`, which stays dense."""

from .base import Adapter


WAN = Adapter(
    family="wan",
    transformer_classes=("WanTransformer3DModel",),
    self_attention=r"blocks\.\d+\.attn1",
    text_position=None,
    token_layout="video tokens F x H x W (patch 1x2x2) in attn1; cross-attention attn2 to text stays dense",
)
