"""Wan 2.1 / 2.2 (`WanTransformer3DModel`): self-attention `blocks.N.attn1` over video tokens only; text enters
through cross-attention `attn2`, which stays dense. Wan 2.2's low-noise expert `transformer_2` is accelerated too."""

from .base import Adapter


WAN = Adapter(
    family="wan",
    transformer_classes=("WanTransformer3DModel",),
    self_attention=r"blocks\.\d+\.attn1",
    text_position=None,
    denoiser_components=("transformer", "transformer_2"),
    video_grid=True,
    token_layout="video tokens F x H x W (one per transformer patch, 1x2x2 in the released models) in attn1; cross-attention attn2 to text stays dense",
)
