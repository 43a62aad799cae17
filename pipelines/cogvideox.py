"""CogVideoX (`CogVideoXTransformer3DModel`): joint self-attention `transformer_blocks.N.attn1` over
[text | video] tokens, text first; CFG batched (B=2)."""

from .base import Adapter


COGVIDEOX = Adapter(
    family="cogvideox",
    transformer_classes=("CogVideoXTransformer3DModel",),
    self_attention=r"transformer_blocks\.\d+\.attn1",
    text_position="first",
    token_layout="[text | video] joint attention; text rows and columns kept dense",
)
