"""HunyuanVideo (`HunyuanVideoTransformer3DModel`): joint attention over [video | text] tokens, text LAST, in both the
double-stream blocks `transformer_blocks.N.attn` and the single-stream blocks `single_transformer_blocks.N.attn`.

diffusers' `HunyuanVideoAttnProcessor2_0` builds the joint sequence with the video tokens first: the double-stream
blocks project the context separately and append it (`torch.cat([query, encoder_query], dim=1)`); the single-stream
blocks receive the video and text halves split back apart (`norm_hidden_states[:, :-text_seq_length]`,
`[:, -text_seq_length:]`) and the processor concatenates `[hidden_states, encoder_hidden_states]` again. Either way
the text length is the transformer's `encoder_hidden_states` length (the `context_embedder` token refiner keeps it):
the Llama prompt tokens after the pipeline crops its template prefix (`crop_start`), padded to
`max_sequence_length` (256 by default). The transformer turns `encoder_attention_mask` into a joint key mask
`[B, 1, 1, N]` that masks the text padding at the END of the joint sequence; every joint attention call carries it.
The interception cuts the keys to the longest valid length; with prompts of different lengths the shorter ones run
with their own valid key counts (`seq_lens_k`).
"""

from .base import Adapter


HUNYUAN_VIDEO = Adapter(
    family="hunyuan_video",
    transformer_classes=("HunyuanVideoTransformer3DModel",),
    self_attention=r"(single_)?transformer_blocks\.\d+\.attn",
    text_position="last",
    token_layout=(
        "[video | text] joint attention in double- and single-stream blocks, text LAST (Llama tokens padded to "
        "max_sequence_length; the padding is masked at the end of the sequence, per sample); text rows and columns "
        "dense"
    ),
)
