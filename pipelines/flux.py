"""Flux (`FluxTransformer2DModel`): double-stream `transformer_blocks.N.attn` and single-stream
`single_transformer_blocks.N.attn`, both attending over [text | image] tokens, text first."""

from .base import Adapter


FLUX = Adapter(
    family="flux",
    transformer_classes=("FluxTransformer2DModel",),
    self_attention=r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn",
    text_position="first",
    token_layout="[text | image] joint attention in double- and single-stream blocks; text rows and columns dense",
)
