"""Qwen-Image (`QwenImageTransformer2DModel`): joint attention `transformer_blocks.N.attn` over [text | image]
tokens, text FIRST.

diffusers' `QwenDoubleStreamAttnProcessor2_0` concatenates `[txt_query, img_query]`; the text tokens are the
transformer's `encoder_hidden_states` (after `txt_in`, a `Linear`, length unchanged). The pipeline drops the
`encoder_hidden_states_mask` when every text token is valid (one prompt, or prompts of equal length); a batch of
prompts with different lengths keeps the mask, and those calls run dense (masked calls pass through).
"""

from .base import Adapter


QWENIMAGE = Adapter(
    family="qwenimage",
    transformer_classes=("QwenImageTransformer2DModel",),
    self_attention=r"transformer_blocks\.\d+\.attn",
    text_position="first",
    token_layout="[text | image] joint attention, text first; text rows and columns dense; masked calls run dense",
)
