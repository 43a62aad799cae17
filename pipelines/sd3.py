"""Stable Diffusion 3 / 3.5 (`SD3Transformer2DModel`): joint attention `transformer_blocks.N.attn` over
[image | text] tokens, text LAST.

diffusers' `JointAttnProcessor2_0` concatenates the image projections first and the context projections after them
(`torch.cat([query, encoder_hidden_states_query_proj], dim=2)`). The text tokens are the transformer's
`encoder_hidden_states` after `context_embedder` (a `Linear`, length unchanged): CLIP 77 tokens followed by the T5
tokens (`max_sequence_length`, 256 by default), so 77 + 256 = 333 text tokens at the end of every joint sequence.
The image-only second attention `attn2` of SD3.5's dual-attention blocks is not accelerated: the text length of a
forward applies to every hooked layer, and `attn2` holds no text tokens.
"""

from .base import Adapter


SD3 = Adapter(
    family="sd3",
    transformer_classes=("SD3Transformer2DModel",),
    self_attention=r"transformer_blocks\.\d+\.attn",
    text_position="last",
    token_layout=(
        "[image | text] joint attention, text LAST (CLIP 77 + T5 tokens); text rows and columns dense; "
        "SD3.5 image-only attn2 stays dense"
    ),
)
