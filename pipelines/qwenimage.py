"""Qwen-Image (`QwenImageTransformer2DModel`): joint attention `transformer_blocks.N.attn` over [text | image]
tokens, text FIRST.

diffusers' `QwenDoubleStreamAttnProcessor2_0` concatenates `[txt_query, img_query]`; the text tokens are the
transformer's `encoder_hidden_states` (after `txt_in`, a `Linear`, length unchanged). The pipeline drops the
`encoder_hidden_states_mask` when every text token is valid (one prompt, or prompts of equal length); a batch of
prompts with different lengths keeps it, and the joint key mask pads each prompt's text before the image tokens. The
interception rotates such a call so the text sits behind the image tokens with its padding at the end, and the
shorter prompts run with their own valid key counts (`seq_lens_k`).
"""

from .base import Adapter


QWENIMAGE = Adapter(
    family="qwenimage",
    transformer_classes=("QwenImageTransformer2DModel",),
    self_attention=r"transformer_blocks\.\d+\.attn",
    text_position="first",
    token_layout=(
        "[text | image] joint attention, text first; text rows and columns dense; prompts of different lengths run "
        "with per-sample key lengths (padded text rotated behind the image tokens)"
    ),
)
